"""Prometheus families of inference nodes: batch sizes, queue waits, model latency, device."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from operators.inference_queue import BucketHistogram, InferenceFigures

__all__ = ["inference_families"]

#: Counters read straight off InferenceFigures: (name, help, field).
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("streamdag_inference_requests", "Requests (stream batches and interactive calls) served.",
     "requests_served"),
    ("streamdag_inference_rows", "Rows the model computed.", "rows_served"),
    ("streamdag_inference_batches", "Model calls.", "batches"),
    ("streamdag_inference_errors", "Model calls that failed (their requests failed).", "errors"),
    ("streamdag_inference_abandoned", "Requests dropped before the model: their caller had gone.",
     "abandoned"),
    ("streamdag_inference_refused", "Interactive requests refused: too many waited already.",
     "refused"),
)


def inference_families(
    labels: Sequence[str], series: Sequence[tuple[list[str], InferenceFigures]]
) -> Iterator[Metric]:
    """Every inference family, one series per node (``series``: its label values, figures)."""
    names = list(labels)
    for name, documentation, figure in _COUNTERS:
        counter = CounterMetricFamily(name, documentation, labels=names)
        for values, figures in series:
            counter.add_metric(values, float(getattr(figures, figure)))
        yield counter
    depth = GaugeMetricFamily("streamdag_inference_queue_depth",
                              "Requests waiting for the model.", labels=names)
    load = GaugeMetricFamily("streamdag_inference_model_load_seconds",
                             "Seconds the model took to load (before the node was ready).",
                             labels=names)
    device = GaugeMetricFamily(
        "streamdag_inference_device",
        "1 on the device the model runs on; fallback says why device='auto' runs on the CPU.",
        labels=[*names, "device", "fallback"])
    for values, figures in series:
        depth.add_metric(values, float(figures.queue_depth))
        load.add_metric(values, figures.load_seconds)
        device.add_metric([*values, figures.device, figures.fallback or ""], 1.0)
    yield from (depth, load, device)
    yield _histogram("streamdag_inference_batch_size", "Rows per model call.", names,
                     [(values, figures.batch_size) for values, figures in series])
    yield _histogram("streamdag_inference_model_latency_seconds", "Seconds per model call.",
                     names, [(values, figures.model_latency) for values, figures in series])
    yield _histogram(
        "streamdag_inference_queue_wait_seconds",
        "Seconds a request waited for the model, by priority (interactive, streaming).",
        [*names, "priority"],
        [([*values, priority], histogram) for values, figures in series
         for priority, histogram in sorted(figures.queue_wait.items())])


def _histogram(name: str, documentation: str, labels: list[str],
               series: Sequence[tuple[list[str], BucketHistogram]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, histogram in series:
        family.add_metric(values, histogram.cumulative(), histogram.total)
    return family
