"""Memory of a run, from the kernel's own accounting: RSS, PSS and USS, by kind and library.

RSS counts every page a process maps, so summing it over processes counts a shared page (a
library, numba's compiler, Ray's object store) once per process. PSS splits each shared page
between the processes that map it, so **the PSS sum is the memory the processes really take
together**; USS is what a process holds alone (freed if it exits). A page's split counts every
process that maps it, the driver and unrelated ones on the machine included, so a shared
library's PSS per actor is lower on a busy machine. Figures come from
``/proc/<pid>/smaps_rollup`` (sampled) and ``/proc/<pid>/smaps`` (the breakdown by mapping:
anonymous heap, shared memory, and file-backed pages per library).

The issue workload (Kafka -> rolling mean of 20 per key -> Kafka, three nodes) run with
``RayRunner`` (one actor per node; Ray's own processes listed beside the actors) and with
``LocalRunner`` in a process of its own. Run:
``python -m benchmarks.memory [--records N] [--runner ray|local|both] [--breakdown]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Footprint",
    "MemoryProbe",
    "breakdown_lines",
    "heap_lines",
    "high_water_mark",
    "llvm_fault_bytes",
    "local_runner_memory",
    "main",
    "package_lines",
    "parse_rollup",
    "parse_smaps",
    "ray_processes",
    "read_breakdown",
    "read_footprint",
]

_MIB = 2**20
_SIZE = re.compile(r"^(\w+):\s+(\d+) kB$")
_SITE = re.compile(r"/(?:site|dist)-packages/([^/]+)")


@dataclass(frozen=True)
class Footprint:
    """One process's (or one kind of mapping's) resident memory in bytes."""

    rss: int = 0
    pss: int = 0
    uss: int = 0
    #: PSS of anonymous pages (heap, arenas, numpy buffers), of file pages, of shared memory.
    pss_anon: int = 0
    pss_file: int = 0
    pss_shmem: int = 0

    def __add__(self, other: Footprint) -> Footprint:
        """Field by field sum."""
        return Footprint(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))


def _fields(footprint: Footprint) -> tuple[int, ...]:
    return (footprint.rss, footprint.pss, footprint.uss, footprint.pss_anon, footprint.pss_file,
            footprint.pss_shmem)


def _footprint(sizes: Mapping[str, int]) -> Footprint:
    return Footprint(
        rss=sizes.get("Rss", 0), pss=sizes.get("Pss", 0),
        uss=sizes.get("Private_Clean", 0) + sizes.get("Private_Dirty", 0),
        pss_anon=sizes.get("Pss_Anon", 0), pss_file=sizes.get("Pss_File", 0),
        pss_shmem=sizes.get("Pss_Shmem", 0))


def parse_rollup(text: str) -> Footprint:
    """A process's footprint from the text of ``/proc/<pid>/smaps_rollup``.

    >>> parse_rollup("Rss: 10 kB\\nPss: 6 kB\\nPss_Anon: 4 kB\\nPss_File: 2 kB\\n"
    ...              "Private_Clean: 1 kB\\nPrivate_Dirty: 3 kB\\n")
    Footprint(rss=10240, pss=6144, uss=4096, pss_anon=4096, pss_file=2048, pss_shmem=0)
    """
    sizes: dict[str, int] = {}
    for line in text.splitlines():
        match = _SIZE.match(line)
        if match:
            sizes[match[1]] = int(match[2]) * 1024
    return _footprint(sizes)


def _kind(path: str) -> str:
    """What a mapping is, from its path: anon, shmem: NAME, or file: LIBRARY."""
    if not path or (path.startswith("[") and not path.startswith("[anon_shmem")):
        return "anon"  # [heap], [stack], [anon:...], unnamed: the process's own memory
    if path.startswith(("/dev/shm/", "/SYSV", "[anon_shmem")) or "memfd:" in path or (
            "plasma" in path):
        return f"shmem: {os.path.basename(path.split(' (deleted)')[0]) or path}"
    site = _SITE.search(path)
    if site:
        return f"file: {site[1]}"
    return f"file: {os.path.basename(path.split(' (deleted)')[0])}"


def parse_smaps(text: str) -> dict[str, Footprint]:
    """Footprints by kind of mapping from the text of ``/proc/<pid>/smaps``.

    Kinds: ``anon`` (heap and anonymous maps), ``shmem: NAME`` (shared memory: Ray's object
    store), ``file: LIBRARY`` (file-backed pages, by site-packages package or by file name).

    >>> text = ("7f00-7f01 rw-p 0 00:00 0 \\nRss: 8 kB\\nPss: 8 kB\\nPrivate_Dirty: 8 kB\\n"
    ...         "7f02-7f03 r-xp 0 08:01 9 /v/lib/python3.12/site-packages/numba/x.so\\n"
    ...         "Rss: 4 kB\\nPss: 2 kB\\nShared_Clean: 4 kB\\n")
    >>> {kind: (f.rss, f.pss, f.uss) for kind, f in parse_smaps(text).items()}
    {'anon': (8192, 8192, 8192), 'file: numba': (4096, 2048, 0)}
    """
    kinds: dict[str, Footprint] = {}
    kind = ""
    sizes: dict[str, int] = {}

    def close() -> None:
        if kind:
            kinds[kind] = kinds.get(kind, Footprint()) + _footprint(sizes)

    for line in text.splitlines():
        match = _SIZE.match(line)
        if match:
            sizes[match[1]] = int(match[2]) * 1024
        elif "-" in line.split(" ", 1)[0] and not line.startswith("VmFlags"):
            close()
            parts = line.split(None, 5)
            kind, sizes = _kind(parts[5].strip() if len(parts) > 5 else ""), {}
    close()
    return kinds


def read_footprint(pid: int) -> Footprint | None:
    """``pid``'s footprint now, or None when it has gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return parse_rollup(rollup.read())
    except OSError:
        return None


def read_breakdown(pid: int) -> dict[str, Footprint]:
    """``pid``'s footprints by kind of mapping now (empty when it has gone)."""
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            return parse_smaps(smaps.read())
    except OSError:
        return {}


def high_water_mark(pid: int) -> int:
    """``pid``'s RSS high-water mark in bytes (``VmHWM`` of ``/proc/<pid>/status``; 0 when it
    has gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            match = re.search(r"^VmHWM:\s+(\d+) kB$", status.read(), re.MULTILINE)
    except OSError:
        return 0
    return int(match[1]) * 1024 if match else 0


def llvm_fault_bytes(touches: int = 8) -> int | None:
    """Bytes one first touch of LLVM's library (``libllvmlite.so``) makes resident in a process
    on this machine, on average over ``touches`` touches 8 MiB apart; None where it cannot be
    read (no llvmlite, not Linux).

    The kernel maps a file page's whole page-cache folio (or its 64 KiB fault-around), and the
    folio size depends on how the file came into the cache: written by an install or read with
    ``read``, 1-2 MiB; read back by a program's page faults, 4 KiB. It decides how much of
    LLVM the import of numba and every kernel load make resident: about 40 MiB for the import
    at 64 KiB a touch, about 100 MiB at 1-2 MiB (the local runner's VmHWM, measured here: 122
    against 180 MiB). Measured in this process (not a measured one), with its own mapping.
    """
    import importlib.util
    import mmap

    spec = importlib.util.find_spec("llvmlite")  # found, not imported: LLVM stays unloaded
    if spec is None or not spec.submodule_search_locations or not sys.platform.startswith(
            "linux"):
        return None
    path = os.path.join(spec.submodule_search_locations[0], "binding", "libllvmlite.so")
    try:
        with open(path, "rb") as library:
            mapped = mmap.mmap(library.fileno(), 0, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        return None
    try:
        step = 8 << 20
        offsets = range(step, min(len(mapped), step * (touches + 1)), step)
        before = _resident_file_bytes()
        for offset in offsets:
            mapped[offset]  # the touch is the point: it faults the page in
        return (_resident_file_bytes() - before) // max(1, len(offsets))
    finally:
        mapped.close()


def _resident_file_bytes() -> int:
    with open("/proc/self/status") as status:
        match = re.search(r"^RssFile:\s+(\d+) kB$", status.read(), re.MULTILINE)
    return int(match[1]) * 1024 if match else 0


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class MemoryProbe:
    """Samples named processes every ``interval_s``: peaks of the RSS and PSS sums, per process.

    The sums are taken at one instant, so ``peak_pss_sum`` is the most memory the processes
    took together at any sample. With ``breakdown``, each process's mappings are read by kind
    when the PSS sum reaches a new peak (``breakdown_at_peak``).
    """

    pids: dict[str, int]
    interval_s: float = 0.1
    breakdown: bool = False
    peak_rss_sum: int = 0
    peak_pss_sum: int = 0
    peak: dict[str, Footprint] = field(default_factory=dict)
    last: dict[str, Footprint] = field(default_factory=dict)
    #: Each process's footprint in the sample where the PSS sum peaked.
    at_peak: dict[str, Footprint] = field(default_factory=dict)
    breakdown_at_peak: dict[str, dict[str, Footprint]] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    #: Each process's RSS high-water mark (the kernel's ``VmHWM``): its own peak over its whole
    #: life, the moments between two samples, its start and its kernel loads included.
    high_water: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, sample_now: bool = True) -> MemoryProbe:
        """Sample in a background thread until ``stop`` (the first sample now, or in
        ``interval_s``)."""
        if sample_now:
            self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MemoryProbe:
        """Take a last sample and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Read every process's footprint once and update the peaks."""
        now: dict[str, Footprint] = {}
        for name, pid in self.pids.items():
            footprint = read_footprint(pid)
            cpu = _cpu_seconds(pid)
            if footprint is None or cpu is None:
                continue
            now[name], self.cpu_seconds[name] = footprint, cpu
            self.high_water[name] = max(self.high_water.get(name, 0), high_water_mark(pid))
            old = self.peak.get(name, Footprint())
            self.peak[name] = Footprint(*map(max, _fields(old), _fields(footprint)))
        self.last.update(now)
        self.peak_rss_sum = max(self.peak_rss_sum, sum(f.rss for f in now.values()))
        pss = sum(f.pss for f in now.values())
        if pss > self.peak_pss_sum:
            self.peak_pss_sum, self.at_peak = pss, now
            if self.breakdown:
                self.breakdown_at_peak = {name: read_breakdown(self.pids[name]) for name in now}


def breakdown_lines(probe: MemoryProbe, top: int = 8) -> list[str]:
    """A table per process at the PSS-sum peak: RSS, PSS and USS by kind of mapping, MiB."""
    lines = [f"{'process / mapping':<34} {'RSS':>7} {'PSS':>7} {'USS':>7}   (MiB, at the PSS-sum "
             "peak)"]
    for name, kinds in probe.breakdown_at_peak.items():
        total = sum(kinds.values(), Footprint())
        lines.append(f"{name:<34} {total.rss / _MIB:>7.1f} {total.pss / _MIB:>7.1f} "
                     f"{total.uss / _MIB:>7.1f}")
        ranked = sorted(kinds.items(), key=lambda item: -item[1].pss)
        for kind, footprint in ranked[:top]:
            lines.append(f"  {kind[:32]:<32} {footprint.rss / _MIB:>7.1f} "
                         f"{footprint.pss / _MIB:>7.1f} {footprint.uss / _MIB:>7.1f}")
        rest = sum((f for _, f in ranked[top:]), Footprint())
        lines.append(f"  {f'{len(ranked) - top} more':<32} {rest.rss / _MIB:>7.1f} "
                     f"{rest.pss / _MIB:>7.1f} {rest.uss / _MIB:>7.1f}")
    return lines


def summary_lines(probe: MemoryProbe) -> list[str]:
    """Per process: peak RSS, PSS, USS, anon PSS; then the peak sums (the PSS sum is real)."""
    lines = [f"{'process':<20} {'peak RSS':>9} {'PSS':>7} {'USS':>7} {'anon':>7} {'file':>7} "
             f"{'shmem':>7} {'end RSS':>8} {'CPU s':>6} {'RSS HWM':>8}   (MiB)"]
    for name, peak in probe.peak.items():
        end = probe.last.get(name, Footprint())
        lines.append(f"{name:<20} {peak.rss / _MIB:>9.1f} {peak.pss / _MIB:>7.1f} "
                     f"{peak.uss / _MIB:>7.1f} {peak.pss_anon / _MIB:>7.1f} "
                     f"{peak.pss_file / _MIB:>7.1f} {peak.pss_shmem / _MIB:>7.1f} "
                     f"{end.rss / _MIB:>8.1f} {probe.cpu_seconds.get(name, 0.0):>6.1f} "
                     f"{probe.high_water.get(name, 0) / _MIB:>8.1f}")
    lines.append(f"peak RSS sum {probe.peak_rss_sum / _MIB:.0f} MiB (counts shared pages once "
                 f"per process); peak PSS sum {probe.peak_pss_sum / _MIB:.0f} MiB (shared pages "
                 "split between processes: the memory they really take together)")
    lines.append(f"RSS high-water marks summed {sum(probe.high_water.values()) / _MIB:.0f} MiB "
                 "(RSS HWM: the kernel's peak of each process over its life, its imports and "
                 "kernel loads included: numba's import and each load map 15-100 MiB of LLVM "
                 "for a moment, released before the node is ready; python -m "
                 "benchmarks.memory_phases shows the local runner's phase by phase; the columns "
                 f"before it are sampled every {probe.interval_s:g} s while the graph runs)")
    return lines


def _process_name(cmdline: Sequence[str]) -> str:
    """A process's program: the script a Python runs, else the executable (Ray's titles kept).

    >>> _process_name(["/v/bin/python3.11", "-u", "/v/ray/_private/log_monitor.py", "--x"])
    'log_monitor.py'
    >>> _process_name(["ray::IDLE", ""])
    'ray::IDLE'
    """
    words = [word for word in cmdline if word]
    program = os.path.basename(words[0]) if words else "?"
    if program.startswith("python"):
        script = next((word for word in words[1:] if not word.startswith("-")), "")
        return os.path.basename(script) or program
    return program


def ray_processes(exclude: Iterable[int]) -> dict[str, Footprint]:
    """Footprints of this driver's descendants (Ray's GCS, raylet, idle workers), by name.

    The processes a local Ray started for this driver, less ``exclude`` (the node actors);
    processes of one name are summed.
    """
    import psutil

    skip = set(exclude)
    named: dict[str, Footprint] = {}
    for child in psutil.Process().children(recursive=True):
        footprint = None if child.pid in skip else read_footprint(child.pid)
        if footprint is None:
            continue
        with contextlib.suppress(psutil.Error):
            name = _process_name(child.cmdline() or [child.name()])
            named[name] = named.get(name, Footprint()) + footprint
    return named


def _ray_run(bootstrap: str, source: str, records: int, breakdown: bool) -> MemoryProbe:
    import ray

    from benchmarks.startup import replay_graph
    from runtime.runners.ray_runner import RayRunner, ensure_ray

    ensure_ray(num_cpus=2)
    graph = replay_graph(source, f"{source}.ray.{time.time_ns()}")
    running = RayRunner(_settings(), *_binding(bootstrap).defaults()).start(graph)
    try:
        pids = {f"actor {node.name}": ray.get(running.actor(node.name).__ray_call__.remote(
            lambda _: os.getpid())) for node in graph.nodes}
        probe = MemoryProbe(pids, breakdown=breakdown).start()
        result = running.wait(600)
        probe.stop()
        others = ray_processes(pids.values())
        heaps = {name: ray.get(running.actor(name.removeprefix("actor ")).__ray_call__.remote(
            _heap_here)) for name in pids}
        imported = {name: ray.get(running.actor(name.removeprefix("actor ")).__ray_call__.remote(
            _packages_here)) for name in pids}
    finally:
        running.stop()
        ray.shutdown()
    print("\nRay's own processes at the end of the run, not in the actors' sums (MiB):")
    for name, footprint in sorted(others.items(), key=lambda item: -item[1].pss):
        print(f"  {name:<28} RSS {footprint.rss / _MIB:>6.1f}  PSS {footprint.pss / _MIB:>6.1f}  "
              f"USS {footprint.uss / _MIB:>6.1f}")
    assert result.stats["out"].events_in == records - 100 * 19, result.stats
    print("\n".join(heap_lines(heaps)))
    print("\n".join(package_lines(imported)))
    return probe


def _heap_here(_: object = None) -> dict[str, int]:
    """This process's malloc heap and anonymous pages, bytes (run in a node actor), and its
    anonymous pages once its free heap was trimmed (what of the free heap was resident)."""
    from runtime.runners.process_memory import heap_stats, resident_anonymous_bytes, trim_heap

    stats = heap_stats()
    anon = resident_anonymous_bytes()
    trim_heap()
    return {"anon": anon, "in_use": stats.in_use if stats else 0,
            "free": stats.free if stats else 0, "trimmed": resident_anonymous_bytes()}


#: Packages a node actor may or may not need, each with its import's memory: which ones an
#: actor loaded shows whether its imports stayed lazy.
_WATCHED = ("networkx", "aiokafka", "fsspec", "numba", "llvmlite", "runtime.planning",
            "runtime.checkpoints", "runtime.backtest", "connectors", "operators")


def _packages_here(_: object = None) -> dict[str, int]:
    """How many modules of each ``_WATCHED`` package, and in all, this process imported."""
    counts = {"all modules": len(sys.modules)}
    for package in _WATCHED:
        counts[package] = sum(1 for name in sys.modules
                              if name == package or name.startswith(f"{package}."))
    return counts


def package_lines(imported: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Per process, the modules it imported in all and of each watched package it loaded.

    >>> package_lines({"actor a": {"all modules": 900, "networkx": 0, "numba": 150}})
    ['modules imported: actor a 900 (numba 150)']
    """
    lines = []
    for name, counts in imported.items():
        loaded = ", ".join(f"{package} {count}" for package, count in counts.items()
                           if package != "all modules" and count)
        lines.append(f"modules imported: {name} {counts['all modules']} ({loaded})")
    return lines


def heap_lines(heaps: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Per process at the end of the run: anonymous pages, and of them glibc's heap in use and
    free (a trimmed free page counts as free but is not resident), MiB.

    >>> heap_lines({"actor a": {"anon": 100 * _MIB, "in_use": 50 * _MIB, "free": 8 * _MIB,
    ...                         "trimmed": 96 * _MIB}})[1]
    'actor a                 100.0     50.0      8.0      96.0'
    """
    lines = [f"{'at the end (MiB)':<20} {'anon':>8} {'heap use':>8} {'free':>8} {'trimmed':>9}"
             "   (the rest of anon: Python's object arenas, thread stacks, LLVM's code and "
             "data; trimmed: anon once the free heap was given back)"]
    for name, heap in heaps.items():
        lines.append(f"{name:<20} {heap['anon'] / _MIB:>8.1f} {heap['in_use'] / _MIB:>8.1f} "
                     f"{heap['free'] / _MIB:>8.1f} {heap['trimmed'] / _MIB:>9.1f}")
    return lines


def _settings() -> Any:
    from runtime.dataplane.host import RuntimeSettings

    return RuntimeSettings(credits=4, max_batch_records=20_000, linger_s=0.005)


def _binding(bootstrap: str) -> Any:
    from connectors.source_bounds import Timestamp
    from runtime.runners.kafka_binding import KafkaBinding

    return KafkaBinding(bootstrap, fetch_max_wait_ms=10, start="earliest", replay_prefix="",
                        end=Timestamp(time.time_ns()))


def _local_child(bootstrap: str, source: str, records: int, breakdown: bool) -> dict[str, Any]:
    """Run LocalRunner in this (fresh) process, sampling itself; the figures as JSON."""
    from benchmarks.startup import replay_graph
    from runtime.runners.local_runner import LocalRunner

    probe = MemoryProbe({"local runner": os.getpid()}, breakdown=breakdown)
    runner = LocalRunner(_settings(), *_binding(bootstrap).defaults())
    imported = read_footprint(os.getpid()) or Footprint()
    # Sampled from the run's start on, as the Ray actors are; what the imports left mapped
    # (llvmlite's pages, which the runner releases as it starts) is reported apart.
    probe.start(sample_now=False)
    result = runner.run(replay_graph(source, f"{source}.local.{time.time_ns()}"), timeout_s=600)
    probe.stop()
    assert result.stats["out"].events_in == records - 100 * 19, result.stats
    return {**_probe_json(probe), "imported_rss": imported.rss, "imported_pss": imported.pss,
            "heap": _heap_here(), "imported": _packages_here()}


def _probe_json(probe: MemoryProbe) -> dict[str, Any]:
    def footprints(by_name: Mapping[str, Footprint]) -> dict[str, list[int]]:
        return {name: list(_fields(f)) for name, f in by_name.items()}

    return {"pids": probe.pids, "peak_rss_sum": probe.peak_rss_sum,
            "peak_pss_sum": probe.peak_pss_sum, "peak": footprints(probe.peak),
            "last": footprints(probe.last), "at_peak": footprints(probe.at_peak),
            "cpu_seconds": probe.cpu_seconds, "high_water": probe.high_water,
            "breakdown": {name: footprints(kinds)
                          for name, kinds in probe.breakdown_at_peak.items()}}


def _probe_of(data: Mapping[str, Any]) -> MemoryProbe:
    def footprints(by_name: Mapping[str, Iterable[int]]) -> dict[str, Footprint]:
        return {name: Footprint(*values) for name, values in by_name.items()}

    return MemoryProbe(
        dict(data["pids"]), peak_rss_sum=data["peak_rss_sum"], peak_pss_sum=data["peak_pss_sum"],
        peak=footprints(data["peak"]), last=footprints(data["last"]),
        at_peak=footprints(data["at_peak"]), cpu_seconds=dict(data["cpu_seconds"]),
        high_water=dict(data["high_water"]),
        breakdown_at_peak={name: footprints(kinds) for name, kinds in data["breakdown"].items()})


def local_runner_memory(bootstrap: str, source: str, records: int,
                        breakdown: bool = False) -> MemoryProbe:
    """The workload over ``source`` (``records`` records) run by ``LocalRunner`` in a process of
    its own, sampled there from the run's start: its peaks (and breakdown) as a ``MemoryProbe``;
    its RSS after the imports, before the run, is printed."""
    command = [sys.executable, "-m", "benchmarks.memory", "--local-child", "--bootstrap",
               bootstrap, "--topic", source, "--records", str(records)]
    if breakdown:
        command.append("--breakdown")
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    print(f"the local runner's process after its imports, before the run: RSS "
          f"{figures['imported_rss'] / _MIB:.0f} MiB, PSS {figures['imported_pss'] / _MIB:.0f} MiB "
          "(llvmlite's pages mapped by the import of numba; the runner releases them as it "
          "starts)")
    print("\n".join(heap_lines({"local runner": figures["heap"]})))
    print("\n".join(package_lines({"local runner": figures["imported"]})))
    return _probe_of(figures)


def _print(title: str, probe: MemoryProbe, breakdown: bool) -> None:
    print(f"\n{title}")
    print("\n".join(summary_lines(probe)))
    if breakdown:
        print("\n".join(breakdown_lines(probe)))


def _run(bootstrap: str, records: int, runners: Sequence[str], breakdown: bool) -> None:
    from benchmarks.kafka_baselines import produce_input

    source = f"bench.memory.{time.strftime('%H%M%S')}"
    asyncio.run(produce_input(bootstrap, source, records))
    print(f"memory: {records:,} JSON records, 100 keys, 4 partitions, rolling mean of 20 (three "
          f"nodes); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    fault = llvm_fault_bytes()
    if fault is not None:
        print(f"LLVM's library maps {fault >> 10} KiB per first touch here (its page-cache "
              "folios: 64 KiB or less once read back by page faults, 1-2 MiB right after an "
              "install, which `make venv` drops: runtime/runners/library_cache.py; at 1-2 MiB "
              "numba's import and each kernel load map about twice as much of LLVM, and the "
              "local runner's VmHWM is some 60 MiB higher)")
    if "ray" in runners:
        _print("RayRunner, one actor per node (targets: 400 MB for the three)",
               _ray_run(bootstrap, source, records, breakdown), breakdown)
    if "local" in runners:
        _print("LocalRunner, in a process of its own (target: 150 MB)",
               local_runner_memory(bootstrap, source, records, breakdown), breakdown)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the workload on an embedded broker (or --bootstrap) and print where memory goes."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--runner", choices=("ray", "local", "both"), default="both")
    parser.add_argument("--breakdown", action="store_true",
                        help="per process, the mappings by kind at the PSS-sum peak")
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--topic", default="", help=argparse.SUPPRESS)
    parser.add_argument("--local-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.local_child:
        print(json.dumps(_local_child(args.bootstrap, args.topic, args.records, args.breakdown)))
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    runners = ("ray", "local") if args.runner == "both" else (args.runner,)
    if args.bootstrap:
        _run(args.bootstrap, args.records, runners, args.breakdown)
    else:
        from connectors.broker import EmbeddedBroker

        with EmbeddedBroker.start(".state/bench-broker") as broker:
            _run(broker.bootstrap_servers, args.records, runners, args.breakdown)


if __name__ == "__main__":
    main()
