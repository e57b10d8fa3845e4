"""Incremental kernels: events/s of each operator on one core, key mapping, compile time.

Sections, each printed as a table:

1. **kernels** — every rolling/count/ema/zscore/vwap/crossover kernel over 10M events and 1,000 keys
   in random order, through the logic's ``update()`` (the numba kernel, its slot-range check
   and its output arrays) on 100k-event batches whose keys were mapped to slots beforehand,
   in steady state: one full warm-up pass first, so rings are full and nothing compiles, then
   the best of ``REPEATS`` timed passes, each continuing event time. The baseline, run the
   same way, is the floor of any keyed kernel: one numba loop that reads each event's slot
   and value and does one read-modify-write of per-key state. Target: rolling_mean (window
   20) >= 50M events/s.
   **windows** — tumbling, hopping, session and count window nodes over the same events, each
   batch folded (``fold()`` on pre-mapped slots) and then closed by a watermark at its last
   event (``on_watermark()``, which emits the closed windows as a batch), so the figure
   includes emitting results. Targets: tumbling >= 50M events/s, session >= 20M.
2. **key mapping** — ``KeySlots.slots`` over a batch's bytes keys (target >= 10M events/s),
   and from Python ``str`` keys through ``encode_keys`` first, as a source decoding JSON would.
3. **process()** — the whole ``rolling_mean`` logic path (key mapping, field conversion,
   kernel, output batch) over 100k-event batches.
4. **compile** — the first ``process()`` call of each operator in a fresh process with an empty
   numba cache (``NUMBA_CACHE_DIR`` set to a new temporary folder), then again in a second fresh
   process over that now-filled cache.

Run with ``python -m benchmarks.kernels`` (``python -m benchmarks.kernels rolling_count`` runs
only the kernels whose names start so, against the baseline).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

import streamdag as sd
from operators.count_window import CountWindowLogic
from operators.counting import CountLogic
from operators.crossover import CrossoverLogic
from operators.key_slots import KeySlots
from operators.rolling import RollingLogic
from operators.session_window import SessionWindowLogic
from operators.smoothing import EmaLogic
from operators.vwap import VwapLogic
from operators.windows import WindowLogic
from streamdag.batch import encode_keys

__all__ = ["main"]

EVENTS = 10_000_000
KEYS = 1_000
WINDOW = 20
REPEATS = 3
BATCH = 100_000
STR_EVENTS = 2_000_000
KERNEL_TARGET = 50e6
SESSION_TARGET = 20e6
MAPPING_TARGET = 10e6

_TICKS = sd.source("ticks", topic="ticks", key="symbol",
                   schema={"price": "float64", "size": "float64"})


@njit(cache=True)
def _keyed_floor(slots: Any, xs: Any, state: Any, out: Any) -> None:
    for r in range(slots.shape[0]):
        s = slots[r]
        state[s] = state[s] + xs[r]
        out[r] = state[s]


def _best_seconds(step: Callable[[], object], repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def _row(name: str, events: int, seconds: float, note: str = "") -> str:
    rate = events / seconds
    return f"{name:<38} {events:>11,} {seconds * 1e3:>9.1f} {rate / 1e6:>8.1f}  {note}"


def _header(title: str) -> None:
    print(f"\n{title}")
    print(f"{'case':<38} {'events':>11} {'ms':>9} {'M ev/s':>8}  note")


def _stream(rng: np.random.Generator) -> dict[str, npt.NDArray[Any]]:
    keys = rng.integers(0, KEYS, EVENTS)
    return {
        "key_ids": keys,
        "keys": np.char.add(b"SYM", keys.astype("S4")),
        "ts": np.arange(EVENTS, dtype=np.int64) * 1_000,
        "price": 100.0 + np.cumsum(rng.normal(0.0, 0.01, EVENTS)),
        "size": rng.integers(1, 100, EVENTS).astype(np.float64),
    }


Fold = Callable[[slice, npt.NDArray[np.int64]], object]


def _kernel_cases(data: dict[str, npt.NDArray[Any]]) -> list[tuple[str, Fold]]:
    """(name, fold of the events in a slice, given that pass's ts) for every kernel."""
    price, size, keys = data["price"], data["size"], data["keys"]
    cases: list[tuple[str, Fold]] = []

    def rolling(statistic: str, **window: Any) -> None:
        node = _TICKS.apply(f"rolling_{statistic}", field="price", name="k", **window)
        logic = RollingLogic(node.config(), statistic)
        slots = logic.slots(keys)
        label = ", ".join(f"{k}={v}" for k, v in window.items())
        cases.append((f"rolling_{statistic} ({label})",
                      lambda rows, ts: logic.update(slots[rows], ts[rows], price[rows])))

    for statistic in ("mean", "sum", "std", "min", "max"):
        rolling(statistic, window=WINDOW)
    # ts advances 1 us per event: a key ticks every ~1 ms, so 20 ms hold ~20 of its events.
    rolling("mean", time_window=WINDOW * KEYS * 1_000)
    rolling("std", time_window=WINDOW * KEYS * 1_000)
    rolling("max", time_window=WINDOW * KEYS * 1_000)
    # min_periods below the window: partial windows emit (time-window extremes count theirs).
    rolling("mean", window=WINDOW, min_periods=1)
    rolling("max", time_window=WINDOW * KEYS * 1_000, min_periods=5)

    def count(operator: str, **window: Any) -> None:
        logic = CountLogic(_TICKS.apply(operator, name="n", **window).config())
        slots = logic.slots(keys)
        label = ", ".join(f"{k}={v}" for k, v in window.items())
        cases.append((f"{operator} ({label})",
                      lambda rows, ts: logic.update(slots[rows], ts[rows])))

    count("running_count")
    count("rolling_count", window=WINDOW)
    count("rolling_count", time_window=WINDOW * KEYS * 1_000)

    zscore = RollingLogic(_TICKS.zscore("price", window=WINDOW, name="z").config(), "zscore")
    z_slots = zscore.slots(keys)
    cases.append((f"zscore (window={WINDOW})",
                  lambda rows, ts: zscore.update(z_slots[rows], ts[rows], price[rows])))
    ema = EmaLogic(_TICKS.ema("price", span=WINDOW, name="e").config())
    e_slots = ema.slots(keys)
    cases.append((f"ema (span={WINDOW})", lambda rows, ts: ema.update(e_slots[rows], price[rows])))
    vwap = VwapLogic(_TICKS.vwap(window=WINDOW, name="v").config())
    v_slots = vwap.slots(keys)
    cases.append((f"vwap (window={WINDOW})", lambda rows, ts: vwap.update(
        v_slots[rows], ts[rows], price[rows], size[rows])))
    fast, slow = _TICKS.ema("price", span=5, name="f"), _TICKS.ema("price", span=20, name="s")
    cross = CrossoverLogic(fast.crossover(slow, name="x").config())
    c_slots = cross.slots(keys)
    cases.append(("crossover (both inputs paired)", lambda rows, ts: cross.update(
        ts[rows], c_slots[rows], price[rows], ts[rows], c_slots[rows], size[rows])))
    return cases


def _passes(data: dict[str, npt.NDArray[Any]]) -> list[npt.NDArray[np.int64]]:
    """The warm-up and timed passes' ts: each continues event time after the previous one."""
    # Replaying the same ts would put each event before the time windows the previous pass
    # left open, as a live stream never does.
    span = int(data["ts"][-1]) + 1
    return [data["ts"] + n * span for n in range(REPEATS + 1)]


def _timed_passes(fold: Fold, passes: list[npt.NDArray[np.int64]]) -> float:
    """Seconds of the best timed pass, after passes[0] as the warm-up; batches of BATCH."""
    def one_pass(ts: npt.NDArray[np.int64]) -> None:
        for start in range(0, EVENTS, BATCH):
            fold(slice(start, start + BATCH), ts)

    one_pass(passes[0])  # compiles (or loads) the kernel and fills every ring
    best = float("inf")
    for ts in passes[1:]:
        start = time.perf_counter()
        one_pass(ts)
        best = min(best, time.perf_counter() - start)
    return best


def _kernels(data: dict[str, npt.NDArray[Any]], only: Sequence[str] = ()) -> None:
    _header(f"kernels: {EVENTS:,} events, {KEYS:,} keys, update() on {BATCH:,}-event batches of "
            "pre-mapped slots")
    passes = _passes(data)
    slots, price = data["key_ids"], data["price"]
    state, out = np.zeros(KEYS), np.empty(EVENTS)
    floor = _timed_passes(lambda rows, ts: _keyed_floor(slots[rows], price[rows], state,
                                                        out[rows]), passes)
    print(_row("baseline: keyed read-modify-write", EVENTS, floor, "floor, 1.00x"))
    for name, fold in _kernel_cases(data):
        if only and not any(name.startswith(prefix) for prefix in only):
            continue
        seconds = _timed_passes(fold, passes)
        note = f"{floor / seconds:.2f}x of floor"
        if name.startswith("rolling_mean (window"):
            verdict = "meets" if EVENTS / seconds >= KERNEL_TARGET else "MISSES"
            note += f"; {verdict} the {KERNEL_TARGET / 1e6:.0f}M/s target"
        print(_row(name, EVENTS, seconds, note))


def _window_cases(data: dict[str, npt.NDArray[Any]]) -> list[tuple[str, Fold, float]]:
    """(name, fold-and-close of a slice, target events/s) for every window kind."""
    price, keys = data["price"], data["keys"]
    span = WINDOW * KEYS * 1_000  # ~20 events of a key per window, as the rolling windows hold
    nodes: list[tuple[str, Any, float]] = [
        ("tumbling_window (mean)", WindowLogic(_TICKS.tumbling_window(
            span, agg="mean", field="price", name="t").config()), KERNEL_TARGET),
        ("tumbling_window (all 8 aggregations)", WindowLogic(_TICKS.tumbling_window(
            span, agg=["sum", "mean", "min", "max", "count", "first", "last", "std"],
            field="price", name="t8").config()), KERNEL_TARGET),
        ("hopping_window (size/step = 4)", WindowLogic(_TICKS.hopping_window(
            span, span // 4, agg="mean", field="price", name="h").config()), 0.0),
        ("tumbling_window (mean, early_interval size/4)", WindowLogic(_TICKS.tumbling_window(
            span, agg="mean", field="price", early_interval=span // 4, name="te").config()),
         0.0),
        # A gap of 3 ms (a key ticks every ~1 ms): sessions of a few events to dozens.
        ("session_window (gap 3 ms)", SessionWindowLogic(_TICKS.session_window(
            3_000_000, agg="mean", field="price", name="s").config()), SESSION_TARGET),
        ("session_window (gap 3 ms, early_interval 5 ms)", SessionWindowLogic(
            _TICKS.session_window(3_000_000, agg="mean", field="price",
                                  early_interval=5_000_000, name="se").config()), 0.0),
        (f"count_window ({WINDOW} events)", CountWindowLogic(_TICKS.count_window(
            WINDOW, agg="mean", field="price", name="c").config()), KERNEL_TARGET),
    ]
    cases: list[tuple[str, Fold, float]] = []
    for name, logic, target in nodes:
        slots = logic.slots(keys)

        def fold(rows: slice, ts: npt.NDArray[np.int64], logic: Any = logic,
                 slots: npt.NDArray[np.int64] = slots) -> object:
            times = ts[rows]
            logic.fold(slots[rows], times, price[rows])
            return logic.on_watermark(int(times[-1]))

        cases.append((name, fold, target))
    return cases


def _windows(data: dict[str, npt.NDArray[Any]]) -> None:
    _header(f"windows: fold() of {BATCH:,}-event batches of pre-mapped slots, then "
            "on_watermark() at each batch's last event")
    passes = _passes(data)
    # The rolling kernels' own figure, measured again here: on a shared machine the ratio
    # says more than the rate.
    rolling = RollingLogic(_TICKS.rolling_mean("price", window=WINDOW, name="r").config(),
                           "mean")
    slots, price = rolling.slots(data["keys"]), data["price"]
    baseline = _timed_passes(
        lambda rows, ts: rolling.update(slots[rows], ts[rows], price[rows]), passes)
    print(_row(f"baseline: rolling_mean (window={WINDOW})", EVENTS, baseline, "1.00x"))
    for name, fold, target in _window_cases(data):
        seconds = _timed_passes(fold, passes)
        note = f"{baseline / seconds:.2f}x of rolling_mean"
        if target:
            verdict = "meets" if EVENTS / seconds >= target else "MISSES"
            note += f"; {verdict} the {target / 1e6:.0f}M/s target"
        print(_row(name, EVENTS, seconds, note))


def _key_mapping(data: dict[str, npt.NDArray[Any]]) -> None:
    _header("key mapping: keys of a batch to dense slots")
    table = KeySlots()
    table.slots(data["keys"][:100_000])
    seconds = _best_seconds(lambda: table.slots(data["keys"]))
    verdict = "meets" if EVENTS / seconds >= MAPPING_TARGET else "MISSES"
    print(_row("KeySlots.slots(bytes keys)", EVENTS, seconds,
               f"{verdict} the {MAPPING_TARGET / 1e6:.0f}M/s target"))
    strings = [key.decode() for key in data["keys"][:STR_EVENTS].tolist()]
    encode = _best_seconds(lambda: encode_keys(strings))
    both = _best_seconds(lambda: table.slots(encode_keys(strings)))
    print(_row("encode_keys(str keys)", STR_EVENTS, encode, "Python list of str -> S array"))
    print(_row("encode_keys + KeySlots.slots", STR_EVENTS, both, "from Python str keys"))


def _process_path(data: dict[str, npt.NDArray[Any]]) -> None:
    _header(f"process(): rolling_mean over {BATCH:,}-event batches (keys as bytes)")
    passes = _passes(data)
    keys, price = data["keys"], data["price"]
    for label, window in (("count window", {"window": WINDOW}),
                          ("time window", {"time_window": WINDOW * KEYS * 1_000})):
        logic = RollingLogic(_TICKS.rolling_mean("price", name="m", **window).config(), "mean")

        def fold(rows: slice, ts: npt.NDArray[np.int64], logic: RollingLogic = logic) -> object:
            return logic.process([sd.Batch(ts[rows], keys[rows], {"price": price[rows]})])

        seconds = _timed_passes(fold, passes)
        print(_row(f"rolling_mean process(), {label}", EVENTS, seconds,
                   f"{EVENTS // BATCH} batches"))


_COMPILE_SCRIPT = """
import time
import streamdag as sd
from streamdag.operator_registry import lookup
import operators.rolling, operators.smoothing
import operators.vwap, operators.crossover
ticks = sd.source("t", topic="t", key="k", schema={"price": "float64", "size": "float64"})
batch = sd.Batch.from_columns(ts=[1, 2, 3], key=["a", "b", "a"], price=[1.0, 2.0, 3.0],
                              size=[1.0, 1.0, 2.0], value=[1.0, 2.0, 3.0])
nodes = [ticks.rolling_mean("price", window=2, name="a"),
         ticks.rolling_std("price", time_window=5, name="b"),
         ticks.rolling_max("price", window=2, name="c"),
         ticks.ema("price", span=3, name="d"), ticks.zscore("price", window=2, name="e"),
         ticks.vwap(window=2, name="f")]
nodes.append(nodes[0].crossover(nodes[3], name="g"))
for node in nodes:
    logic = lookup(node.operator).create(node.config())
    start = time.perf_counter()
    logic.process([batch] * len(node.inputs))
    print(node.operator, time.perf_counter() - start)
"""


def _compile_times() -> None:
    print("\ncompile: first process() call per operator, fresh process each column")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = []
        for _ in range(2):  # an empty cache, then the cache the first run filled
            text = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, check=True,
                                  capture_output=True, text=True).stdout
            runs.append([line.split() for line in text.strip().splitlines()])
    print(f"{'operator (in call order)':<38} {'cold cache ms':>13} {'warm cache ms':>14}")
    for (name, cold), (_, warm) in zip(runs[0], runs[1], strict=True):
        print(f"{name:<38} {float(cold) * 1e3:>13.0f} {float(warm) * 1e3:>14.1f}")
    total_cold = sum(float(t) for _, t in runs[0])
    total_warm = sum(float(t) for _, t in runs[1])
    print(f"{'total':<38} {total_cold * 1e3:>13.0f} {total_warm * 1e3:>14.1f}"
          "  (the first call also compiles KeySlots' kernels)")


def main() -> None:
    """Run every section and print its table; kernel names given as arguments run only those
    kernels (by name prefix, e.g. ``rolling_count``) against the baseline."""
    data = _stream(np.random.default_rng(20240601))
    if len(sys.argv) > 1:
        _kernels(data, sys.argv[1:])
        return
    _kernels(data)
    _windows(data)
    _key_mapping(data)
    _process_path(data)
    _compile_times()


if __name__ == "__main__":
    main()
