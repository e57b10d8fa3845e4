"""Errors of model inference: loading, devices, the request queue and the model's answers."""

from __future__ import annotations

from streamdag.errors import StreamdagError

__all__ = [
    "DeviceUnavailableError",
    "InferenceBusyError",
    "InferenceStoppedError",
    "ModelLoadError",
    "ModelOutputError",
    "RequestAbandonedError",
]


class ModelLoadError(StreamdagError):
    """A model could not be loaded (missing or corrupt file, wrong input shape, no runtime)."""


class DeviceUnavailableError(ModelLoadError):
    """``device='cuda'`` was asked for where no GPU (or no CUDA-capable runtime) is."""


class ModelOutputError(StreamdagError):
    """A model answered with something other than one row of outputs per input row."""


class InferenceStoppedError(StreamdagError):
    """The inference node stopped (or is stopping) before it computed the request."""


class RequestAbandonedError(StreamdagError):
    """A request's caller had gone (timed out) before the model got to it: it was dropped."""


class InferenceBusyError(StreamdagError):
    """Too many interactive requests wait already; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
