"""The backtest cache: LRU within a byte budget, TTL, a disk tier whose counters persist,
clear; served by the gateway (/cache/stats, /cache/clear) and on Prometheus."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest

from runtime.backtest import ResultCache, parse_time
from runtime.deployment.gateway import add_cache_routes, create_app
from streamdag.batch import Batch
from streamdag.config import GatewaySettings
from streamdag.testing import ManualClock

TOKEN = "cache-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _batch(n: int, value: float = 1.0) -> Batch:
    return Batch.from_columns(ts=np.arange(n), key=["k"] * n, value=np.full(n, value))


def test_the_memory_tier_evicts_least_recently_used_past_its_budget() -> None:
    size = _batch(100).nbytes
    cache = ResultCache(max_bytes=2 * size)
    cache.put("a", _batch(100, 1.0))
    cache.put("b", _batch(100, 2.0))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", _batch(100, 3.0))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.stats()["memory"] == {"hits": 3, "misses": 1, "entries": 2,
                                       "bytes": 2 * size, "evictions": 1, "hit_rate": 0.75}


def test_entries_expire_after_the_ttl() -> None:
    clock = ManualClock()
    cache = ResultCache(ttl_s=10.0, clock=clock)
    cache.put("a", _batch(3))
    clock.advance(9.0)
    assert cache.get("a") is not None
    clock.advance(2.0)
    assert cache.get("a") is None
    assert cache.stats()["memory"]["evictions"] == 1


@pytest.mark.parametrize("where", ["path", "url"])
def test_the_disk_tier_serves_another_process_and_counts_across_them(
        tmp_path: Path, where: str) -> None:
    location = tmp_path if where == "path" else f"memory://backtest-cache-{uuid.uuid4().hex}"
    first = ResultCache(directory=location)
    assert first.get("a") is None
    first.put("a", _batch(5, 4.0))
    first.persist()
    second = ResultCache(directory=location)  # a later process: empty memory
    batch = second.get("a")
    assert batch is not None and batch.to_records() == _batch(5, 4.0).to_records()
    second.persist()
    disk = ResultCache(directory=location).stats()["disk"]
    assert (disk["hits"], disk["misses"], disk["entries"]) == (1, 1, 1)
    assert second.clear() == {"memory": 1, "disk": 1}
    assert ResultCache(directory=location).get("a") is None


async def test_the_gateway_serves_cache_stats_clear_and_metrics(tmp_path: Path) -> None:
    cache = ResultCache(directory=tmp_path)
    cache.put("a", _batch(4))
    assert cache.get("a") is not None
    registry = CollectorRegistry()
    app = create_app(object(), GatewaySettings(), TOKEN, registry=registry)
    add_cache_routes(app, cache)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert (await client.get("/cache/stats")).status == 401
        stats = await (await client.get("/cache/stats", headers=AUTH)).json()
        assert stats["memory"]["hits"] == 1 and stats["disk"]["entries"] == 1
        scraped = generate_latest(registry).decode()
        assert 'streamdag_backtest_cache_hits_total{tier="memory"} 1.0' in scraped
        assert 'streamdag_backtest_cache_entries{tier="disk"} 1.0' in scraped
        cleared = await (await client.post("/cache/clear", headers=AUTH)).json()
        assert cleared == {"cleared": {"memory": 1, "disk": 1}}
        stats = await (await client.get("/cache/stats", headers=AUTH)).json()
        assert stats["memory"]["entries"] == stats["disk"]["entries"] == 0
    finally:
        await client.close()


def test_times_are_iso_8601_or_epoch_numbers() -> None:
    ns = 1_767_323_045_000_000_000
    assert parse_time("2026-01-02T03:04:05Z") == parse_time("2026-01-02T04:04:05+01:00") == ns
    assert parse_time("2026-01-02T03:04:05") == ns  # no zone: UTC
    assert {parse_time(t) for t in ("1767323045", "1767323045000", "1767323045000000",
                                    "1767323045000000000")} == {ns}
    assert parse_time("1767323045.000000001") == ns + 1
