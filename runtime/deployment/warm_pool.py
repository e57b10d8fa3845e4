"""A deployment's warm pool: booted, code-loaded, kernel-warmed idle node actors.

Starting a Ray worker and importing a node host's code costs one to several seconds per
actor, and a deployment's node actors are detached, so Ray's own prestarted workers (which
belong to the driver's job) cannot serve them. The controller therefore keeps a few idle
``PooledNodeHost`` actors: a submission (or a recovery) binds each new node to one of them with
one call (``bind``) instead of booting a process, and the pool refills in the background.

A pooled actor is named ``streamdag-<deployment>-pool-<12 hex>`` from its start; once bound,
the node registry records that name as the node's actor name, so a restarted controller finds
it like any node actor. Unclaimed pool actors found at a restart are adopted while idle and
stopped once bound (an interrupted binding's); ``close`` stops the idle ones.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.dataplane.host import NodeHost
from runtime.runners.ray_nodes import awaited
from streamdag.cancellation import cancel_and_wait

__all__ = ["PoolFigures", "PooledNodeHost", "WarmPool", "pool_actor_pattern", "warm_pool_kernels"]

_log = logging.getLogger("streamdag.controller")


def pool_actor_pattern(deployment: str) -> re.Pattern[str]:
    """The names of ``deployment``'s pool actors.

    >>> bool(pool_actor_pattern("live").fullmatch("streamdag-live-pool-0123456789ab"))
    True
    >>> bool(pool_actor_pattern("live").fullmatch("streamdag-live-node-0123456789ab"))
    False
    """
    return re.compile(re.escape(f"streamdag-{deployment}-pool-") + "[0-9a-f]{12}")


def warm_pool_kernels() -> float:
    """Load the kernels most nodes use (Kafka decoding and partitioning, the rolling family)
    into this process; seconds taken.

    A node bound later warms its own operator again, which then costs only what this did not
    cover.
    """
    import streamdag as sd
    from runtime.dataplane.warming import warm_up_node
    from runtime.dataplane.worker import NodeWorker
    from runtime.runners.kafka_binding import KafkaBinding

    started = time.perf_counter()
    ticks = sd.source("ticks", topic="pool.warm", key="key", time="ts",
                      schema={"price": "float64"})
    mean = ticks.rolling_mean("price", window=2, name="mean")
    sink = mean.to_topic("pool.warm.out", name="out")
    binding = KafkaBinding("127.0.0.1:9")
    warm_up_node(NodeWorker(ticks.config()), [binding.source_for(ticks)])
    warm_up_node(NodeWorker(mean.config()), ())
    warm_up_node(NodeWorker(sink.config()), [binding.sink_for(sink)])
    return time.perf_counter() - started


class PooledNodeHost(NodeHost):
    """A node host started before its node is known: it boots, loads its code and kernels,
    and waits idle until ``bind`` makes it the host of one node."""

    def __init__(self) -> None:  # NodeHost.__init__ runs in ``bind``, with the node's arguments
        self.pool_started = time.time()
        self.bound = False

    def warm(self) -> float:
        """Load the common kernels now (``warm_pool_kernels``); seconds taken."""
        try:
            return warm_pool_kernels()
        except Exception:  # warming is an optimization: a bound node loads its kernels anyway
            _log.warning("a pool actor failed to warm its kernels up", exc_info=True)
            return 0.0

    async def bind(self, arguments: Mapping[str, Any]) -> str:
        """Become the host of one node (``NodeHost``'s keyword ``arguments``) and get ready;
        the node id once ready. A pool actor is bound once."""
        if self.bound:
            raise RuntimeError("this pool actor already hosts a node; bind a fresh one")
        self.bound = True
        NodeHost.__init__(self, **arguments)
        return await self.ready()

    def pool_state(self) -> str:
        """``idle`` (in the pool) or ``bound`` (hosting a node)."""
        return "bound" if self.bound else "idle"


@dataclass(frozen=True)
class PoolFigures:
    """What the warm pool holds and did, for ``streamdag status`` and ``/metrics``."""

    size: int
    idle: int
    starting: int
    bound_total: int

    def to_dict(self) -> dict[str, int]:
        """JSON-ready figures."""
        return {"size": self.size, "idle": self.idle, "starting": self.starting,
                "bound_total": self.bound_total}


class WarmPool:
    """Keeps ``size`` idle, warmed pool actors of one deployment (0: no pool).

    Steps of a refill (``refill``, in the background):
    1. Pool actors are created until idle plus starting reach ``size``;
    2. each one loads its code and kernels (``warm``); one that fails is stopped;
    3. the warmed ones join the idle actors that ``take`` hands out.
    """

    def __init__(self, deployment: str, size: int, actor_options: Mapping[str, Any], *,
                 warm_timeout_s: float = 120.0, call_timeout_s: float = 10.0) -> None:
        self.deployment = deployment
        self.size = max(0, size)
        self.actor_options = dict(actor_options)
        self.warm_timeout_s = warm_timeout_s
        self.call_timeout_s = call_timeout_s
        #: Warmed pool actors nobody has taken, by name.
        self.idle: dict[str, Any] = {}
        #: Pool actors still booting and warming, by name.
        self.starting: dict[str, Any] = {}
        self.bound_total = 0
        self._refilling: asyncio.Task[None] | None = None
        self._closed = False

    def figures(self) -> PoolFigures:
        """What the pool holds now."""
        return PoolFigures(self.size, len(self.idle), len(self.starting), self.bound_total)

    def take(self) -> tuple[str, Any] | None:
        """An idle warmed actor ``(name, handle)`` to bind, or None.

        The pool does not refill here: new processes booting would take the CPU from the
        nodes being bound; the owner calls ``refill`` once they run.
        """
        if not self.idle:
            return None
        name = next(iter(self.idle))
        self.bound_total += 1
        return name, self.idle.pop(name)

    def refill(self, after_s: float = 0.0) -> None:
        """Start filling the pool up to ``size`` in the background (once at a time), after
        ``after_s`` seconds: new processes booting take the CPU of the nodes just bound, which
        a fresh graph needs most while it catches up with its input."""
        import ray

        if self._closed or self.size == 0 or not ray.is_initialized():
            return  # a controller outside Ray (a test's) has no pool
        if self._refilling is None or self._refilling.done():
            self._refilling = asyncio.ensure_future(self._fill(after_s))

    async def wait_filled(self) -> None:
        """Wait for the refill in progress, if any."""
        while self._refilling is not None and not self._refilling.done():
            await asyncio.shield(self._refilling)

    async def _fill(self, after_s: float) -> None:
        if after_s > 0:
            await asyncio.sleep(after_s)
        while not self._closed and len(self.idle) + len(self.starting) < self.size:
            # Step 1: create what is missing.
            while len(self.idle) + len(self.starting) < self.size:
                name, handle = self._create()
                self.starting[name] = handle
            # Step 2: every one warms up; Step 3: the warmed ones become idle.
            names = list(self.starting)
            results = await asyncio.gather(
                *(asyncio.wait_for(awaited(self.starting[n].warm.remote()), self.warm_timeout_s)
                  for n in names), return_exceptions=True)
            for name, result in zip(names, results, strict=True):
                handle = self.starting.pop(name, None)
                if handle is None:
                    continue
                if isinstance(result, BaseException):
                    _log.warning("pool actor %s failed to start (%s); it is stopped", name,
                                 result)
                    await self._kill(handle, name)
                    if isinstance(result, Exception):
                        return  # no retry loop on a broken cluster: the next take retries
                elif self._closed:
                    await self._kill(handle, name)
                else:
                    self.idle[name] = handle

    def _create(self) -> tuple[str, Any]:
        import ray

        from runtime.deployment.node_registry import NODE_NAMESPACE

        name = f"streamdag-{self.deployment}-pool-{uuid.uuid4().hex[:12]}"
        options = {"num_cpus": 0, **self.actor_options, "name": name,
                   "namespace": NODE_NAMESPACE, "lifetime": "detached", "max_restarts": 0}
        return name, ray.remote(PooledNodeHost).options(**options).remote()

    async def adopt(self, found: Mapping[str, Any]) -> list[str]:
        """Take over pool actors a previous controller left (by name): idle ones join the
        pool, any other (bound by an interrupted submission, or unreachable) is stopped;
        returns the names stopped."""
        stopped = []
        for name, handle in found.items():
            try:
                state = await asyncio.wait_for(awaited(handle.pool_state.remote()),
                                               self.call_timeout_s)
            except Exception:  # dead or hung: nothing to keep
                state = "unreachable"
            if state == "idle" and len(self.idle) < self.size and not self._closed:
                self.idle[name] = handle
            else:
                await self._kill(handle, name)
                stopped.append(name)
        return stopped

    async def check(self) -> list[str]:
        """Drop idle actors that died or do not answer (one call each, at once, within
        ``call_timeout_s``), then refill; the names dropped.

        An actor taken meanwhile (a submission binds it) is its node's now, and is left alone.
        """
        checked = list(self.idle.items())
        answers = await asyncio.gather(
            *(asyncio.wait_for(awaited(handle.pool_state.remote()), self.call_timeout_s)
              for _, handle in checked), return_exceptions=True)
        dropped = []
        for (name, handle), answer in zip(checked, answers, strict=True):
            if isinstance(answer, BaseException) and self.idle.pop(name, None) is not None:
                await self._kill(handle, name)
                dropped.append(name)
        self.refill()
        return dropped

    async def close(self) -> None:
        """Stop filling and stop every idle and starting pool actor."""
        self._closed = True
        if self._refilling is not None:  # cancelled again if a wait_for swallowed it
            await cancel_and_wait(self._refilling, timeout_s=self.call_timeout_s,
                                  what="the warm pool's refill")
        actors = {**self.idle, **self.starting}
        self.idle.clear()
        self.starting.clear()
        for name, handle in actors.items():
            await self._kill(handle, name)

    async def _kill(self, handle: Any, name: str) -> None:
        """Kill one pool actor, then wait until Ray released its name."""
        from runtime.deployment.node_actors import kill_named_actor

        await kill_named_actor(handle, name, self.call_timeout_s)
