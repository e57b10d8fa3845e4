"""The ``infer`` operator: model outputs per event, computed in dynamic batches on CPU or GPU.

The node loads its model once, when its actor starts and before it reports ready, and runs it
behind an ``InferenceEngine``: the stream's rows and interactive requests (the gateway's
``POST /infer/{node}``, a Python call) share one priority queue and are batched together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from operators.inference_errors import ModelLoadError
from operators.inference_models import LoadedModel, file_sha256, load_model
from operators.inference_queue import INTERACTIVE, STREAMING, InferenceEngine, InferenceFigures
from streamdag.batch import Batch
from streamdag.errors import ParamError
from streamdag.inference import CALLABLE_PREFIX
from streamdag.operator import NodeConfig, OperatorDef, require_fields
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = ["InferenceDef", "InferenceLogic"]

_log = logging.getLogger(__name__)
#: Most rows one model call may take (a size param: it scales the node's memory).
MAX_BATCH = 65_536


@register
class InferenceDef(OperatorDef):
    """Model outputs (float64 fields) computed per event from the input's feature fields.

    ``model`` is an ONNX (``.onnx``) or TorchScript (``.pt``) file; through the SDK it may also
    be a Python callable on a (rows x features) array. The node's id covers the model file's
    sha256 (``model_sha256``, filled in when the node is built), so a changed file is a new node.

    >>> import numpy as np, streamdag as sd
    >>> from streamdag.batch import Batch
    >>> ticks = sd.source("ticks", topic="t", schema={"price": "float64", "size": "float64"})
    >>> scored = ticks.infer(lambda rows: rows @ np.array([[1.0], [10.0]]),
    ...                      features=["price", "size"], outputs=["score"], name="score")
    >>> logic = InferenceDef.create(scored.config())
    >>> batch = Batch.from_columns(ts=[1, 2], key=["a", "b"], price=[1.5, 2.0], size=[3.0, 4.0])
    >>> logic.process([batch]).to_records()
    [{'ts': 1, 'key': 'a', 'price': 1.5, 'size': 3.0, 'score': 31.5},
     {'ts': 2, 'key': 'b', 'price': 2.0, 'size': 4.0, 'score': 42.0}]
    >>> logic.close().rows_served
    2
    """

    type_name: ClassVar[str] = "infer"
    needs_time_order: ClassVar[bool] = False  # each event is computed alone
    warms_up: ClassVar[bool] = False  # the model loads once, in its node's own logic
    handles_events: ClassVar[str] = (
        "computes each event from that event alone and does not bucket events by interval"
    )
    summary: ClassVar[str] = "model outputs per event from feature fields, in dynamic batches"
    params: ClassVar[tuple[Param, ...]] = (
        Param("model", "str", doc="path of an ONNX (.onnx) or TorchScript (.pt) model file"),
        Param("features", "str_list", doc="input fields fed to the model, in its column order"),
        Param("outputs", "str_list", default=("prediction",),
              doc="names of the float64 fields the model's output columns become"),
        Param("max_batch", "int", default=256, minimum=1, maximum=MAX_BATCH, size=True,
              doc="most rows per model call"),
        Param("max_wait_ms", "float", default=2.0, minimum=0.0, maximum=10_000.0,
              doc="longest a row waits for a batch to fill"),
        Param("device", "str", default="auto", choices=("auto", "cuda", "cpu"),
              doc="where the model runs; auto: the GPU where there is one, else the CPU"),
        Param("dtype", "str", default="float32", choices=("float32", "float64"),
              doc="the type features are cast to before the model call (preprocessing)"),
        Param("model_sha256", "str", default="",
              doc="sha256 of the model file; filled in when the node is built"),
    )

    @classmethod
    def resolve_params(
        cls, params: dict[str, Any], function: Callable[..., Any] | None
    ) -> dict[str, Any]:
        """Fill in ``model_sha256`` from the model file; refuse code named by a spec."""
        model = str(params["model"])
        if model.startswith(CALLABLE_PREFIX):
            if function is None:
                raise ParamError(
                    f"param 'model' = {model!r} names Python code, and graph specs are data "
                    "only; name an ONNX (.onnx) or TorchScript (.pt) file, or pass the "
                    "callable through the SDK: stream.infer(model=my_function, ...)")
            return params
        try:
            digest = file_sha256(model)
        except ModelLoadError as exc:
            raise ParamError(f"param 'model': {exc}") from None
        given = str(params["model_sha256"])
        if given and given != digest:
            raise ParamError(
                f"param 'model_sha256' = {given[:12]}... does not match model file {model!r} "
                f"(it hashes to {digest[:12]}...): the file changed since the spec was written. "
                "Remove model_sha256 to take the file as it is now")
        return {**params, "model_sha256": digest}

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """The input's fields plus one float64 field per output (replacing one of that name)."""
        features, outputs = params["features"], params["outputs"]
        if not features:
            raise ParamError("param 'features' is empty; list the input fields the model takes")
        if not outputs:
            raise ParamError("param 'outputs' is empty; name the model's output columns")
        require_fields(cls.type_name, inputs[0], features, ("float64", "int64", "bool"))
        fields = dict(inputs[0].fields)
        for output in outputs:
            if not output.isidentifier():
                raise ParamError(
                    f"param 'outputs' has {output!r}, not a valid field name; use letters, "
                    "digits and _ (not starting with a digit)")
            fields[output] = "float64"
        if len(set(outputs)) != len(outputs):
            raise ParamError(f"param 'outputs' = {list(outputs)} names a field twice")
        return Schema.from_mapping(fields)

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> InferenceLogic:
        """Load the model (once) and start the node's batching engine."""
        params = config.params
        features = tuple(params["features"])
        loaded = load_model(
            str(params["model"]), features=len(features), outputs=len(params["outputs"]),
            device=params["device"],
            dtype=str(params["dtype"]), sha256=str(params["model_sha256"]),
            function=config.function)
        _log.info("node %s loaded model %s on %s in %.3f s%s", config.name, params["model"],
                  loaded.device, loaded.load_seconds,
                  f" (CPU fallback: {loaded.fallback})" if loaded.fallback else "")
        engine = InferenceEngine(
            loaded.run, max_batch=int(params["max_batch"]),
            max_wait_s=float(params["max_wait_ms"]) / 1000.0, outputs=len(params["outputs"]),
            name=config.name)
        engine.figures.device = loaded.device
        engine.figures.fallback = loaded.fallback
        engine.figures.load_seconds = loaded.load_seconds
        return InferenceLogic(config, engine, loaded)


class InferenceLogic:
    """Runtime of ``infer``: a stream's batch goes through the engine at streaming priority."""

    def __init__(self, config: NodeConfig, engine: InferenceEngine, model: LoadedModel) -> None:
        self.name = config.name
        self.features = tuple(config.params["features"])
        self.outputs = tuple(config.params["outputs"])
        self.dtype = np.dtype(str(config.params["dtype"]))
        self.field_names = config.output_schema.names
        self.engine = engine
        self.model = model
        self._final: InferenceFigures | None = None

    def rows_of(self, columns: Mapping[str, Any]) -> np.ndarray:
        """The (rows x features) model input from feature columns, cast to the node's dtype."""
        return np.column_stack(
            [np.asarray(columns[name], dtype=self.dtype) for name in self.features])

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """The batch with the model's outputs added; waits for its rows' turn in the engine."""
        batch = inputs[0]
        if len(batch) == 0:
            predicted = np.empty((0, len(self.outputs)))
        else:
            predicted = self.engine.submit(self.rows_of(batch.columns), STREAMING).result()
        columns = {name: batch.columns[name] for name in self.field_names
                   if name not in self.outputs}
        for index, name in enumerate(self.outputs):
            columns[name] = np.ascontiguousarray(predicted[:, index], dtype=np.float64)
        return batch.with_columns({name: columns[name] for name in self.field_names})

    def infer(
        self, features: Mapping[str, Any], timeout_s: float | None = None
    ) -> Any:
        """Queue an interactive request (feature name -> values); a future of output rows."""
        missing = [name for name in self.features if name not in features]
        unknown = sorted(set(features) - set(self.features))
        if missing or unknown:
            raise ParamError(
                f"inference node {self.name!r} takes features {list(self.features)}; the "
                f"request lacks {missing} and has unknown {unknown}")
        rows = self.rows_of({name: np.atleast_1d(features[name]) for name in self.features})
        return self.engine.submit(rows, INTERACTIVE, timeout_s=timeout_s)

    def on_watermark(self, watermark: int) -> Batch | None:
        """Nothing here waits for event time."""
        return None

    def snapshot(self) -> bytes:
        """The empty snapshot: the model is reloaded, never checkpointed."""
        return b""

    def close(self) -> InferenceFigures:
        """Stop the engine (waiting requests fail), unload the model; the final figures.

        The health snapshot (requests served, batches, errors) goes to the log, once.
        """
        if self._final is not None:
            return self._final
        figures = self._final = self.engine.close()
        self.model.unload()
        _log.info("inference node %s stopped: %d requests served in %d batches, %d errors, "
                  "%d abandoned, %d failed by the stop", self.name, figures.requests_served,
                  figures.batches, figures.errors, figures.abandoned, figures.stopped)
        return figures
