"""Loading a model for inference: an ONNX file, a TorchScript file, or a Python callable.

Each loads once, on the device asked for, and is checked with one call on a row of zeros, so
a wrong input shape fails the load (and the submission) rather than the first batch.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from operators.inference_errors import DeviceUnavailableError, ModelLoadError
from streamdag.inference import CALLABLE_PREFIX

__all__ = [
    "Device",
    "LoadedModel",
    "file_sha256",
    "load_model",
    "model_kind",
]

Device = Literal["auto", "cuda", "cpu"]
_ONNX_CUDA = "CUDAExecutionProvider"


@dataclass
class LoadedModel:
    """A model ready to be called on a (rows x features) array, and how it was loaded."""

    run: Callable[[np.ndarray], np.ndarray]
    kind: str
    #: Where it runs: "cpu" or "cuda".
    device: str
    #: Why ``device="auto"`` runs on the CPU (None when it runs where asked).
    fallback: str | None
    load_seconds: float
    _release: Callable[[], None] | None = None

    def unload(self) -> None:
        """Drop the model and free the device memory it held."""
        release, self._release = self._release, None
        self.run = _unloaded
        if release is not None:
            release()
        gc.collect()


def _unloaded(rows: np.ndarray) -> np.ndarray:
    raise ModelLoadError("the model was unloaded: its node stopped")


def model_kind(model: str) -> str:
    """``callable``, ``onnx`` or ``torchscript``, from how the node names its model.

    >>> model_kind("python:score"), model_kind("models/mlp.onnx"), model_kind("mlp.pt")
    ('callable', 'onnx', 'torchscript')
    """
    if model.startswith(CALLABLE_PREFIX):
        return "callable"
    return "onnx" if model.lower().endswith(".onnx") else "torchscript"


def file_sha256(path: str) -> str:
    """sha256 of a model file's bytes; ModelLoadError naming the path if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ModelLoadError(
            f"model file {path!r} cannot be read ({exc.strerror or exc}); give the path of an "
            f"ONNX (.onnx) or TorchScript (.pt) file readable where the graph is built and where "
            f"its node runs (working directory: {os.getcwd()})") from None
    return digest.hexdigest()


def load_model(
    model: str,
    *,
    features: int,
    outputs: int,
    device: Device,
    dtype: str,
    sha256: str = "",
    function: Callable[..., Any] | None = None,
) -> LoadedModel:
    """Load ``model`` on ``device``; check it answers one row of ``features`` zeros with
    ``outputs`` columns.

    A file must still hash to ``sha256`` (its node's identity) when given. Raises
    ModelLoadError (DeviceUnavailableError for a GPU that is not there) saying what failed.
    """
    started = time.perf_counter()
    kind = model_kind(model)
    if kind == "callable":
        if function is None:
            raise ModelLoadError(
                f"model {model!r} names Python code, which only the SDK can attach "
                "(stream.infer(model=callable)); a graph spec names a model file instead")
        loaded = _load_callable(function, device)
    else:
        if not Path(model).is_file():
            raise ModelLoadError(
                f"model file {model!r} does not exist (working directory: {os.getcwd()}); "
                "give the path of an ONNX (.onnx) or TorchScript (.pt) file")
        if sha256 and file_sha256(model) != sha256:
            raise ModelLoadError(
                f"model file {model!r} changed since its graph was built (sha256 "
                f"{sha256[:12]} expected, the file now hashes otherwise); rebuild the graph so "
                "that its node names the new model")
        loaded = _load_onnx(model, device) if kind == "onnx" else _load_torchscript(model, device)
    try:
        answer = np.asarray(loaded.run(np.zeros((1, features), dtype=np.dtype(dtype))))
    except Exception as exc:
        loaded.unload()
        raise ModelLoadError(
            f"model {model!r} failed on one row of {features} {dtype} features "
            f"({type(exc).__name__}: {exc}); check that features=[...] lists what the model "
            "takes, in its order") from None
    columns = answer.shape[1] if answer.ndim == 2 else 1 if answer.ndim == 1 else -1
    if answer.shape[:1] != (1,) or columns != outputs:
        loaded.unload()
        raise ModelLoadError(
            f"model {model!r} answers one row of features with an array of shape "
            f"{answer.shape}, but its node names {outputs} output(s); give outputs=[...] one "
            "name per column of the model's output")
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def _load_callable(function: Callable[..., Any], device: Device) -> LoadedModel:
    # The callable places its own work; "cuda" was checked against the cluster on submission.
    where = "cuda" if device == "cuda" else "cpu"
    return LoadedModel(function, "callable", where, None, 0.0)


def _load_onnx(path: str, device: Device) -> LoadedModel:
    if importlib.util.find_spec("onnxruntime") is None:
        raise ModelLoadError(
            f"model {path!r} is an ONNX file, but onnxruntime is not installed where the node "
            "runs; install the extra: pip install 'streamdag[onnx]' (onnxruntime-gpu for CUDA)")
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == "cuda" and _ONNX_CUDA not in available:
        raise DeviceUnavailableError(
            f"model {path!r}: device='cuda' was asked for, but this onnxruntime has no "
            f"CUDA provider (it has {available}); install onnxruntime-gpu on GPU nodes, or use "
            "device='auto' to fall back to the CPU")
    providers = ([_ONNX_CUDA] if device != "cpu" and _ONNX_CUDA in available else [])
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # Threads that spin between calls take the cores other nodes' actors need (and, under
    # contention, give interactive requests their worst latencies): they sleep instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnxruntime.InferenceSession(
            path, sess_options=options, providers=[*providers, "CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(
            f"model file {path!r} is not a loadable ONNX model: {exc}") from None
    used = session.get_providers()
    on_gpu = bool(used) and used[0] == _ONNX_CUDA
    if device == "cuda" and not on_gpu:
        raise DeviceUnavailableError(
            f"model {path!r}: device='cuda' was asked for, but onnxruntime could not start "
            "its CUDA provider here (no GPU visible to this process?)")
    fallback = None
    if device == "auto" and not on_gpu:
        fallback = ("no GPU here" if _ONNX_CUDA not in available
                    else "onnxruntime could not use the GPU")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(
            f"model {path!r} takes {len(inputs)} inputs "
            f"({[i.name for i in inputs]}); an inference node feeds exactly one "
            "(rows x features) input")
    input_name = inputs[0].name
    output_name = session.get_outputs()[0].name

    def run(rows: np.ndarray) -> np.ndarray:
        result = session.run([output_name], {input_name: rows})[0]
        return np.asarray(result)

    def release() -> None:
        nonlocal session
        del session

    return LoadedModel(run, "onnx", "cuda" if on_gpu else "cpu", fallback, 0.0, release)


def _load_torchscript(path: str, device: Device) -> LoadedModel:
    if importlib.util.find_spec("torch") is None:
        raise ModelLoadError(
            f"model {path!r} is a TorchScript file, but torch is not installed where the node "
            "runs; install the extra: pip install 'streamdag[torch]', or export the model to "
            "ONNX (.onnx)")
    import torch

    has_gpu = bool(torch.cuda.is_available())
    if device == "cuda" and not has_gpu:
        raise DeviceUnavailableError(
            f"model {path!r}: device='cuda' was asked for, but torch sees no CUDA device here; "
            "use device='auto' to fall back to the CPU")
    where = "cuda" if device != "cpu" and has_gpu else "cpu"
    try:
        module = torch.jit.load(path, map_location=where)
    except Exception as exc:
        raise ModelLoadError(f"model file {path!r} is not a loadable TorchScript model: "
                             f"{exc}") from None
    module.eval()

    def run(rows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            result = module(torch.from_numpy(np.ascontiguousarray(rows)).to(where))
        return np.asarray(result.detach().cpu().numpy())

    def release() -> None:
        nonlocal module
        del module
        if where == "cuda":
            torch.cuda.empty_cache()

    fallback = "torch sees no CUDA device" if device == "auto" and where == "cpu" else None
    return LoadedModel(run, "torchscript", where, fallback, 0.0, release)
