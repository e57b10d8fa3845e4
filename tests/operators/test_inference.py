"""The infer operator: exact outputs against numpy, batching, priorities, loading and stopping."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamdag as sd
from operators.inference import InferenceDef, InferenceLogic
from operators.inference_errors import (
    DeviceUnavailableError,
    InferenceBusyError,
    InferenceStoppedError,
    ModelLoadError,
    RequestAbandonedError,
)
from operators.inference_queue import INTERACTIVE, STREAMING, InferenceEngine
from runtime.inference.onnx_models import mlp_reference, write_mlp_onnx
from streamdag.batch import Batch
from streamdag.errors import ParamError, SpecError
from streamdag.spec import graph_from_dict, graph_to_dict

RNG = np.random.default_rng(7)


def dyadic(*shape: int) -> np.ndarray:
    """Halves in [-4, 4]: every product and sum of the small MLP is exact in float32, so the
    model and numpy must agree bit for bit whatever order either adds in."""
    return RNG.integers(-8, 9, size=shape) / 2.0


LAYERS = [(dyadic(3, 8), dyadic(8)), (dyadic(8, 2), dyadic(2))]
FEATURES = ["a", "b", "c"]
WAIT_S = 10.0


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_mlp_onnx(tmp_path_factory.mktemp("models") / "mlp.onnx", LAYERS)


def _ticks() -> sd.Node:
    return sd.source("ticks", topic="ticks", key="symbol",
                     schema={"a": "float64", "b": "float64", "c": "float64"})


def _logic(model: str, **params: object) -> InferenceLogic:
    node = _ticks().infer(model, features=FEATURES, outputs=["y0", "y1"], **params)
    return InferenceDef.create(node.config())


class GatedModel:
    """A model that records each call's rows and holds its first call until released."""

    def __init__(self) -> None:
        self.calls: list[list[float]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(rows[:, 0].tolist())
        self.entered.set()
        assert self.release.wait(WAIT_S), "the test never released the model"
        return rows * 2.0


def _held_engine(max_batch: int) -> tuple[InferenceEngine, GatedModel]:
    """An engine whose model is inside its first call (row -1.0), holding everything after."""
    model = GatedModel()
    engine = InferenceEngine(model, max_batch=max_batch, max_wait_s=0.0, outputs=1)
    engine.submit(np.array([[-1.0]]), STREAMING)
    assert model.entered.wait(WAIT_S)
    return engine, model


def _column(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float64).reshape(-1, 1)


def test_onnx_outputs_equal_numpy_exactly(mlp: str) -> None:
    logic = _logic(mlp, max_batch=4)
    rows = dyadic(11, 3)
    batch = Batch.from_columns(ts=list(range(11)), key=["k"] * 11,
                               **{name: rows[:, i] for i, name in enumerate(FEATURES)})
    out = logic.process([batch])
    expected = mlp_reference(rows, LAYERS).astype(np.float64)
    assert out.columns["y0"].tolist() == expected[:, 0].tolist()
    assert out.columns["y1"].tolist() == expected[:, 1].tolist()
    assert out.columns["a"].tolist() == rows[:, 0].tolist()  # inputs kept
    figures = logic.close()
    assert figures.batches == 3  # 11 rows over max_batch=4: 4 + 4 + 3
    assert figures.batch_size.counts[:4] == [0, 0, 3, 0]  # each of 4, 4, 3 rows: <= 4
    assert figures.device == "cpu" and figures.fallback == "no GPU here"


@pytest.fixture(scope="module")
def shared_logic(mlp: str) -> InferenceLogic:
    return _logic(mlp, max_batch=5, max_wait_ms=0.0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(-64, 64).map(lambda q: q / 4), min_size=3, max_size=3),
                max_size=40))
def test_any_rows_match_the_numpy_reference(shared_logic: InferenceLogic,
                                            rows: list[list[float]]) -> None:
    array = np.array(rows, dtype=np.float64).reshape(-1, 3)
    batch = Batch.from_columns(ts=list(range(len(array))), key=["k"] * len(array),
                               **{name: array[:, i] for i, name in enumerate(FEATURES)})
    out = shared_logic.process([batch])
    expected = mlp_reference(array, LAYERS).astype(np.float64).reshape(-1, 2)
    assert out.columns["y0"].tolist() == expected[:, 0].tolist()
    assert out.columns["y1"].tolist() == expected[:, 1].tolist()


def test_outputs_do_not_depend_on_batching(mlp: str) -> None:
    rows = RNG.normal(size=(300, 3))
    batch = Batch.from_columns(ts=list(range(300)), key=["k"] * 300,
                               **{name: rows[:, i] for i, name in enumerate(FEATURES)})
    one, many = _logic(mlp, max_batch=1), _logic(mlp, max_batch=64)
    assert one.process([batch]).to_records() == many.process([batch]).to_records()
    assert (one.close().batches, many.close().batches) == (300, 5)


def test_partial_batches_wait_at_most_max_wait_and_interactive_not_at_all() -> None:
    waiting = InferenceEngine(lambda rows: rows, max_batch=100, max_wait_s=0.01, outputs=1)
    assert waiting.submit(_column([1.0, 2.0]), STREAMING).result(WAIT_S).ravel().tolist() == [
        1.0, 2.0]
    patient = InferenceEngine(lambda rows: rows, max_batch=100, max_wait_s=3600.0, outputs=1)
    assert patient.submit(_column([3.0]), INTERACTIVE).result(WAIT_S).ravel().tolist() == [3.0]
    assert waiting.close().batches == patient.close().batches == 1


def test_requests_waiting_together_share_one_model_call() -> None:
    engine, model = _held_engine(max_batch=4)
    streams = [  # two graphs' streams sharing the node, and an interactive request
engine.submit(_column([1.0, 2.0, 3.0]), STREAMING),
               engine.submit(_column([4.0, 5.0, 6.0]), STREAMING)]
    asked = engine.submit(_column([9.0]), INTERACTIVE)
    model.release.set()
    assert asked.result(WAIT_S).ravel().tolist() == [18.0]
    assert streams[0].result(WAIT_S).ravel().tolist() == [2.0, 4.0, 6.0]
    assert streams[1].result(WAIT_S).ravel().tolist() == [8.0, 10.0, 12.0]
    # Interactive first, in a call of its own (no stream rows to wait behind), then the two
    # streams' rows together, four a call, in order.
    assert model.calls == [[-1.0], [9.0], [1.0, 2.0, 3.0, 4.0], [5.0, 6.0]]
    figures = engine.close()
    assert (figures.batches, figures.requests_served, figures.rows_served) == (4, 4, 8)
    assert figures.queue_wait["interactive"].observations == 1
    assert figures.queue_wait["streaming"].observations == 3


def test_interactive_newest_first_then_streaming_oldest_first() -> None:
    engine, model = _held_engine(max_batch=1)
    futures = [engine.submit(_column([1.0]), STREAMING), engine.submit(_column([2.0]), STREAMING),
               engine.submit(_column([3.0]), INTERACTIVE),
               engine.submit(_column([4.0]), INTERACTIVE)]
    model.release.set()
    concurrent.futures.wait(futures, WAIT_S)
    assert model.calls == [[-1.0], [4.0], [3.0], [1.0], [2.0]]
    engine.close()


def test_interactive_request_overtakes_a_stream_already_in_the_model() -> None:
    engine, model = _held_engine(max_batch=10)
    backlog = engine.submit(_column([float(i) for i in range(1, 101)]), STREAMING)
    asked = engine.submit(_column([1000.0]), INTERACTIVE)
    model.release.set()
    assert asked.result(WAIT_S).ravel().tolist() == [2000.0]
    assert backlog.result(WAIT_S).ravel().tolist() == [2.0 * i for i in range(1, 101)]
    # The very next call after the one in flight is the interactive row's.
    assert model.calls[1] == [1000.0]
    assert model.calls[2] == [float(i) for i in range(1, 11)]
    assert [len(call) for call in model.calls] == [1, 1, *[10] * 10]
    engine.close()


def test_requests_whose_caller_has_gone_never_reach_the_model() -> None:
    engine, model = _held_engine(max_batch=8)
    timed_out = engine.submit(_column([5.0]), INTERACTIVE, timeout_s=0.0)
    cancelled = engine.submit(_column([6.0]), INTERACTIVE)
    assert cancelled.cancel()
    kept = engine.submit(_column([7.0]), INTERACTIVE)
    model.release.set()
    assert kept.result(WAIT_S).ravel().tolist() == [14.0]
    with pytest.raises(RequestAbandonedError, match="stopped waiting"):
        timed_out.result(WAIT_S)
    assert model.calls == [[-1.0], [7.0]]
    assert engine.close().abandoned == 2


def test_stop_finishes_the_batch_in_flight_and_fails_waiting_requests() -> None:
    model = GatedModel()
    engine = InferenceEngine(model, max_batch=2, max_wait_s=0.0, outputs=1)
    in_flight = engine.submit(_column([1.0, 2.0]), STREAMING)
    assert model.entered.wait(WAIT_S)
    waiting = [engine.submit(_column([3.0]), STREAMING), engine.submit(_column([4.0]), INTERACTIVE)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        closing = pool.submit(engine.close)
        for future in waiting:
            with pytest.raises(InferenceStoppedError, match="stopped before computing"):
                future.result(WAIT_S)
        model.release.set()
        figures = closing.result(WAIT_S)
    assert in_flight.result(WAIT_S).ravel().tolist() == [2.0, 4.0]
    assert (figures.requests_served, figures.stopped) == (1, 2)
    with pytest.raises(InferenceStoppedError, match="takes no more requests"):
        engine.submit(_column([5.0]), INTERACTIVE)


def test_too_many_waiting_interactive_requests_are_refused_with_a_retry_hint() -> None:
    model = GatedModel()
    engine = InferenceEngine(model, max_batch=1, max_wait_s=0.0, outputs=1, max_waiting=1)
    engine.submit(_column([1.0]), INTERACTIVE)
    assert model.entered.wait(WAIT_S)
    queued = engine.submit(_column([2.0]), INTERACTIVE)
    with pytest.raises(InferenceBusyError, match="1 interactive requests waiting") as busy:
        engine.submit(_column([3.0]), INTERACTIVE)
    assert busy.value.retry_after_s > 0
    model.release.set()
    assert queued.result(WAIT_S).ravel().tolist() == [4.0]
    assert engine.close().refused == 1


def test_a_failing_model_fails_its_batch_and_the_engine_goes_on() -> None:
    calls = iter([ValueError("bad weights"), None])

    def model(rows: np.ndarray) -> np.ndarray:
        error = next(calls)
        if error is not None:
            raise error
        return rows

    engine = InferenceEngine(model, max_batch=8, max_wait_s=0.0, outputs=1)
    with pytest.raises(ValueError, match="bad weights"):
        engine.submit(_column([1.0]), STREAMING).result(WAIT_S)
    assert engine.submit(_column([2.0]), STREAMING).result(WAIT_S).ravel().tolist() == [2.0]
    assert engine.close().errors == 1


def test_identity_covers_the_model_file(mlp: str, tmp_path: Path) -> None:
    first = _ticks().infer(mlp, features=FEATURES, outputs=["y0", "y1"])
    again = _ticks().infer(mlp, features=FEATURES, outputs=["y0", "y1"])
    assert first.node_id == again.node_id  # two graphs share one inference node
    other_features = _ticks().infer(mlp, features=["c", "b", "a"], outputs=["y0", "y1"])
    assert other_features.node_id != first.node_id
    copy = tmp_path / "model.onnx"
    copy.write_bytes(Path(mlp).read_bytes())
    same_bytes = _ticks().infer(str(copy), features=FEATURES, outputs=["y0", "y1"])
    assert same_bytes.params["model_sha256"] == first.params["model_sha256"]
    write_mlp_onnx(copy, [(LAYERS[0][0], LAYERS[0][1] + 1.0), LAYERS[1]])
    changed = _ticks().infer(str(copy), features=FEATURES, outputs=["y0", "y1"])
    assert changed.node_id != same_bytes.node_id
    # The node built before the change refuses to load the changed file.
    with pytest.raises(ModelLoadError, match="changed since its graph was built"):
        InferenceDef.create(same_bytes.config())


def test_specs_round_trip_model_files_and_refuse_code(mlp: str) -> None:
    node = _ticks().infer(mlp, features=FEATURES, outputs=["y0", "y1"], name="score")
    graph = sd.Graph("scoring", outputs=[node])
    assert graph_from_dict(graph_to_dict(graph)).node_ids == graph.node_ids
    spec = graph_to_dict(graph)
    spec["nodes"][1]["params"] = {"model": "python:evil.run", "features": FEATURES}
    with pytest.raises(ParamError, match="names Python code"):
        graph_from_dict(spec)
    spec["nodes"][1]["params"] = {"model": mlp, "features": FEATURES, "outputs": ["y0", "y1"],
                                  "model_sha256": "0" * 64}
    with pytest.raises(ParamError, match="the file changed since the spec was written"):
        graph_from_dict(spec)
    callable_graph = sd.Graph("c", outputs=[_ticks().infer(lambda rows: rows[:, :1],
                                                           features=FEATURES)])
    with pytest.raises(SpecError, match="cannot carry its code"):
        graph_to_dict(callable_graph)


def test_loading_fails_fast_with_the_cause(mlp: str, tmp_path: Path) -> None:
    with pytest.raises(ParamError, match="cannot be read"):
        _ticks().infer(str(tmp_path / "missing.onnx"), features=FEATURES)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        _logic(str(corrupt))
    narrow = _ticks().infer(mlp, features=["a", "b"], outputs=["y0", "y1"])
    with pytest.raises(ModelLoadError, match="failed on one row of 2 float32 features"):
        InferenceDef.create(narrow.config())
    one_output = _ticks().infer(mlp, features=FEATURES, outputs=["y"])
    with pytest.raises(ModelLoadError, match="names 1 output"):
        InferenceDef.create(one_output.config())
    with pytest.raises(DeviceUnavailableError, match="no CUDA provider"):
        _logic(mlp, device="cuda")


def test_interactive_requests_must_name_exactly_the_features(mlp: str) -> None:
    logic = _logic(mlp)
    with pytest.raises(ParamError, match=r"lacks \['c'\] and has unknown \['d'\]"):
        logic.infer({"a": [1.0], "b": [2.0], "d": [3.0]})
    logic.close()


def test_build_time_errors_name_the_fix() -> None:
    with pytest.raises(sd.StreamdagError, match="needs field 'd'"):
        _ticks().infer(lambda rows: rows, features=["a", "d"])
    with pytest.raises(ParamError, match="not a valid field name"):
        _ticks().infer(lambda rows: rows, features=["a"], outputs=["1x"])
    with pytest.raises(ParamError, match="device"):
        _ticks().infer(lambda rows: rows, features=["a"], device="tpu")


def test_torchscript_files_run_where_torch_is_installed_and_say_how_otherwise(
    tmp_path: Path,
) -> None:
    path = tmp_path / "linear.pt"
    if importlib.util.find_spec("torch") is None:
        path.write_bytes(b"a TorchScript file needs torch to load")
        node = _ticks().infer(str(path), features=FEATURES, outputs=["y0", "y1"])
        with pytest.raises(ModelLoadError, match=r"pip install 'streamdag\[torch\]'"):
            InferenceDef.create(node.config())
        return
    import torch

    weight, bias = dyadic(2, 3), dyadic(2)
    linear = torch.nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        linear.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    torch.jit.script(linear).save(str(path))
    logic = _logic(str(path), device="cpu")
    rows = dyadic(5, 3)
    answer = logic.infer(dict(zip(FEATURES, rows.T, strict=True))).result(WAIT_S)
    assert answer.tolist() == (rows @ weight.T + bias).astype(np.float32).tolist()
    assert logic.close().device == "cpu"
