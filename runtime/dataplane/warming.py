"""Warming a node up before it reports ready: its operator's and its connectors' kernels.

Compiling a kernel, or loading it from the kernel cache, costs from a fraction of a second to
many seconds; done while the node gets ready, it is paid while the other nodes start too, never
between the first record and the first output. Warming is an optimization: a failure is logged
and the kernels then load on the first record.

numba compiles one variant of a kernel per argument type, and a read-only array is another
type than a writable one. Warm-ups pass read-only inputs, as Ray delivers every batch (its
arrays are views of the received bytes); ``read_only_push`` gives a consumer in the same
process its batches read-only too, so both runners run the variants the warm-up loaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from runtime.dataplane.kernel_loading import lean_cached_loads
from runtime.dataplane.messages import Envelope, Payload
from runtime.dataplane.startup_phases import StartupPhases
from runtime.dataplane.worker import NodeWorker
from streamdag.batch import Batch
from streamdag.kernel_cache import compiling

__all__ = ["read_only_push", "warm_up_node", "warm_up_while_opening"]

_log = logging.getLogger(__name__)


def warm_up_node(worker: NodeWorker, connector_factories: Iterable[Any]) -> float:
    """Warm ``worker``'s operator and every factory with a ``warm_up()`` up; seconds taken.

    Each kind is compiled by one process of the machine at a time on a cold cache
    (``streamdag.kernel_cache.compiling``). The seconds go to ``worker.stats.warm_up_seconds``.
    """
    started = time.perf_counter()
    with compiling(f"operator-{worker.config.operator}"):
        worker.warm_up()
    for factory in connector_factories:
        warm_up = getattr(factory, "warm_up", None)
        if not callable(warm_up):
            continue
        try:
            with compiling(type(factory).__name__):
                warm_up()
        except Exception:
            _log.warning("node %r: warming its connector up failed; its kernels load on the "
                         "first record instead", worker.config.name, exc_info=True)
    worker.stats.warm_up_seconds = time.perf_counter() - started
    return worker.stats.warm_up_seconds


async def warm_up_while_opening(worker: NodeWorker, connector_factories: Iterable[Any],
                                open_connectors: Callable[[], Awaitable[None]],
                                phases: StartupPhases) -> None:
    """Warm ``worker`` up in a thread while ``open_connectors()`` runs on the event loop.

    Cached kernels load without numba's compile registries (``lean_cached_loads``).

    Steps:
    1. Kernels load (or compile) in a worker thread (numba's lock serializes compiling), then
       the library pages the loads mapped are released (``release_after_kernel_loads``), while
    2. the connectors open on the event loop (Kafka clients connect, a restored sink
       publishes, a restored source seeks, a Kafka sink loads its encoders' kernels);
    3. once both are done (the first error raised, if any), the LLVM pages that kernels loaded
       while opening mapped after step 1's release are released too, in a thread, when they
       are 8 MiB or more (a Kafka sink's: 20-30 MiB); each step's time goes in ``phases``.
    """
    # The runners' module, imported here: it needs nothing of the data plane.
    from runtime.runners.resident_pages import LibraryPageReleaser

    # Before any load, on the thread or on the loop: loads skip numba's compile registries.
    lean_cached_loads()
    releaser = LibraryPageReleaser()

    def warm() -> None:
        warm_up_node(worker, connector_factories)
        # The pages the loads mapped (LLVM's, and every library's touched only while the
        # process started: release_after_kernel_loads), dropped before the node is ready.
        releaser.release(None)
        phases.warmed = StartupPhases.now()

    phases.warm_up_started = StartupPhases.now()
    # Step 1: kernels in a thread.
    warming = asyncio.get_running_loop().run_in_executor(None, warm)
    try:
        # Step 2: connectors meanwhile.
        await open_connectors()
        phases.connected = StartupPhases.now()
    finally:
        # Step 3: both done, then what opening loaded after step 1's release.
        await warming
    await releaser.release_if_grown_in_thread()


def read_only_push(push: Callable[[Envelope], Awaitable[None]],
                   ) -> Callable[[Envelope], Awaitable[None]]:
    """``push`` taking every batch of an envelope read-only, as a Ray actor receives it.

    An in-process consumer then runs the kernel variants its warm-up loaded (a writable
    array would load, or compile, another variant on its first batch), and an operator that
    wrote into its input would fail in the local runner as it does on Ray.
    """
    def frozen(payload: Payload) -> Payload:
        return payload.read_only() if isinstance(payload, Batch) else payload

    def deliver(envelope: Envelope) -> Awaitable[None]:
        return push(dataclasses.replace(envelope, payload=frozen(envelope.payload),
                                        trailing=tuple(map(frozen, envelope.trailing))))

    return deliver
