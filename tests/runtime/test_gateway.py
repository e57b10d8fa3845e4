"""The HTTP gateway over the real Controller: in-process, and as the real detached Ray actor."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families
from tomli_w import dumps as toml_dumps

from connectors.topics import ensure_topics
from runtime.deployment.controller import Controller, ControllerOptions
from runtime.deployment.gateway import create_app
from runtime.deployment.handle import Deployment
from runtime.deployment.spec_limits import SpecLimits
from streamdag.config import GatewaySettings, KafkaSettings, RuntimeSection, Settings
from streamdag.operator_registry import available, lookup

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPTIONS = {"grace_s": 0.0, "health_interval_s": 0.0}


def settings_for(tmp_path: Path, **gateway: Any) -> Settings:
    return Settings(name=f"gw{uuid.uuid4().hex[:8]}", state_dir=str(tmp_path),
                    kafka=KafkaSettings(partitions=1, idle_timeout_s=1.0),
                    gateway=GatewaySettings(**gateway))


def copy_spec(name: str, ticks: str, out: str) -> dict[str, Any]:
    """ticks (kafka_source) -> out (kafka_sink)."""
    return {"name": name, "nodes": [
        {"name": "ticks", "type": "kafka_source",
         "params": {"topic": ticks, "key": "symbol", "schema": {"price": "float64"}}},
        {"name": "out", "type": "kafka_sink", "inputs": ["ticks"], "params": {"topic": out}},
    ]}


def mean_spec(name: str, ticks: str, out: str) -> dict[str, Any]:
    """The same ticks -> rolling mean (window 2) -> out."""
    spec = copy_spec(name, ticks, out)
    spec["nodes"][1:] = [
        {"name": "sma2", "type": "rolling_mean", "inputs": ["ticks"],
         "params": {"field": "price", "window": 2}},
        {"name": "out", "type": "kafka_sink", "inputs": ["sma2"], "params": {"topic": out}},
    ]
    return spec


Client = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def serve() -> AsyncIterator[Client]:
    """Serves a gateway app over a controller; the client is closed after the test."""
    clients: list[TestClient[Any, Any]] = []

    async def start(controller: Any, registry: CollectorRegistry | None = None,
                    spec_limits: SpecLimits | None = None, call_timeout_s: float = 300.0,
                    **gateway: Any) -> TestClient[Any, Any]:
        app = create_app(controller, GatewaySettings(**gateway), TOKEN, registry=registry,
                         spec_limits=spec_limits, call_timeout_s=call_timeout_s)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def idle_controller(tmp_path: Path) -> AsyncIterator[Controller]:
    """A real in-process controller that nothing reaches while specs are refused.

    It has no warm pool: a request that starts it (a removal does) would otherwise fill one
    with actors whenever this session's Ray is up, and they outlived the test. It is shut
    down after the test if a request started it.
    """
    settings = replace(settings_for(tmp_path), runtime=RuntimeSection(warm_pool=0))
    controller = Controller(settings, bootstrap_servers="127.0.0.1:1",
                            state_dir=str(tmp_path / "controller"),
                            options=ControllerOptions(**OPTIONS))
    yield controller
    if controller._started:
        await controller.shutdown()


async def errors_of(response: Any) -> list[dict[str, Any]]:
    body = await response.json()
    return list(body["errors"])


async def assert_nothing_deployed(client: TestClient[Any, Any]) -> None:
    graphs = await client.get("/graphs", headers=AUTH)
    nodes = await client.get("/nodes", headers=AUTH)
    assert (await graphs.json(), await nodes.json()) == ({"graphs": []}, {"nodes": []})


# -- refusals: nothing reaches the controller --------------------------------------------------
async def test_every_route_but_healthz_needs_the_bearer_token(
    serve: Client, idle_controller: Controller
) -> None:
    client = await serve(idle_controller)
    for method, path in [("GET", "/graphs"), ("POST", "/graphs"), ("GET", "/graphs/x"),
                         ("DELETE", "/graphs/x"), ("GET", "/nodes"), ("GET", "/metrics"),
                         ("GET", "/nowhere")]:
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}]:
            response = await client.request(method, path, headers=headers)
            assert response.status == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="streamdag"'
            [error] = await errors_of(response)
            assert (error["node"], error["type"]) == (None, "UnauthorizedError")
            assert error["message"].startswith(f"{method} {path} needs 'Authorization: Bearer")
    assert (await client.get("/nowhere", headers=AUTH)).status == 404
    await assert_nothing_deployed(client)


async def test_bodies_over_the_limit_get_413(serve: Client, idle_controller: Controller) -> None:
    client = await serve(idle_controller, max_body_bytes=1000)
    spec = copy_spec("big", "t", "o")
    spec["nodes"][0]["tags"] = ["x" * 1200]
    body = json.dumps(spec).encode()
    response = await client.post("/graphs", data=body,
                                 headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == 413
    assert await errors_of(response) == [{
        "node": None, "type": "BodyTooLargeError",
        "message": f"the body has {len(body)} bytes; the gateway accepts at most 1000 bytes "
                   "(gateway.max_body_bytes); split the graph or raise the limit"}]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is met reading
        for start in range(0, len(body), 100):
            yield body[start:start + 100]

    response = await client.post("/graphs", data=chunks(),
                                 headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == 413
    assert [e["type"] for e in await errors_of(response)] == ["BodyTooLargeError"]
    await assert_nothing_deployed(client)


async def test_only_json_and_toml_documents_are_read(
    serve: Client, idle_controller: Controller
) -> None:
    client = await serve(idle_controller)
    pickled = pickle.dumps(copy_spec("p", "t", "o"))
    for content_type in ["application/octet-stream", "application/python-pickle",
                         "text/x-python", "application/msgpack"]:
        response = await client.post("/graphs", data=pickled,
                                     headers={**AUTH, "Content-Type": content_type})
        assert response.status == 415, content_type
        [error] = await errors_of(response)
        assert error["type"] == "UnsupportedMediaTypeError"
        assert error["message"].startswith(f"got a body of Content-Type {content_type!r}")
    response = await client.post("/graphs", data=pickled,
                                 headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == 400
    [error] = await errors_of(response)
    assert (error["node"], error["type"]) == (None, "SpecError")
    assert error["message"].startswith("the spec body is not UTF-8 text")
    for content_type, text, start in [
        ("application/json", '{"name": "g", "nodes": [', "cannot parse the graph spec as JSON"),
        ("application/json", '{"name": NaN}', "the JSON spec holds NaN"),
        ("application/toml", 'name = "g"\nnodes = [', "cannot parse the graph spec as TOML"),
        ("application/json", '["not", "a", "table"]', "a graph spec must be a table"),
        ("application/json", "[" * 100_000 + "]" * 100_000, "the graph spec nests deeper"),
    ]:
        response = await client.post("/graphs", data=text.encode(),
                                     headers={**AUTH, "Content-Type": content_type})
        assert response.status == 400, text
        [error] = await errors_of(response)
        assert (error["node"], error["type"]) == (None, "SpecError"), text
        assert error["message"].startswith(start), error
    await assert_nothing_deployed(client)


TOML = {**AUTH, "Content-Type": "application/toml"}


async def test_a_pathological_toml_spec_is_refused_before_parsing_and_healthz_stays_up(
    serve: Client, idle_controller: Controller
) -> None:
    client = await serve(idle_controller)
    body = (".".join(["a"] * 50_000) + " = 1").encode()  # 100 KB: a minute or more to parse
    submit = asyncio.ensure_future(client.post("/graphs", data=body, headers=TOML))
    health = await asyncio.wait_for(client.get("/healthz"), 2.0)
    assert (health.status, await health.json()) == (200, {"status": "ok", "problems": []})
    response = await asyncio.wait_for(submit, 5.0)
    assert response.status == 400
    assert await errors_of(response) == [{
        "node": None, "type": "SpecTooDeepError",
        "message": "the TOML spec has a dotted key of more than 16 parts at line 1 "
                   "(SpecLimits.max_key_depth); the keys of a graph spec have a few "
                   "(nodes.params.window has 3): shorten the key, or write the table out "
                   "under a [header]"}]
    await assert_nothing_deployed(client)


async def test_a_spec_that_reads_too_long_gets_422_while_healthz_answers(
    serve: Client, idle_controller: Controller
) -> None:
    # Limits raised so the slow body gets past the scan: the time limit is the backstop.
    limits = SpecLimits(max_key_depth=10**6, parse_timeout_s=0.3)
    client = await serve(idle_controller, spec_limits=limits)
    body = (".".join(["a"] * 6_000) + " = 1").encode()  # seconds to parse, off the loop
    started = time.monotonic()
    submit = asyncio.ensure_future(client.post("/graphs", data=body, headers=TOML))
    answered_meanwhile = 0
    while not submit.done():
        health = await asyncio.wait_for(client.get("/healthz"), 1.0)
        assert health.status == 200
        answered_meanwhile += not submit.done()
    response = await submit
    assert response.status == 422
    assert time.monotonic() - started < 3.0
    assert answered_meanwhile >= 1
    assert await errors_of(response) == [{
        "node": None, "type": "SpecTimeoutError",
        "message": "the gateway gave up reading the graph spec after 0.3 s "
                   "(SpecLimits.parse_timeout_s); a graph spec takes milliseconds to read: "
                   "send a smaller or simpler one"}]
    await assert_nothing_deployed(client)


async def test_toml_specs_past_the_key_line_and_nesting_limits_are_refused(
    serve: Client, idle_controller: Controller
) -> None:
    client = await serve(idle_controller,
                         spec_limits=SpecLimits(max_keys=6, max_lines=12, max_nesting=3))
    at_the_limits = "#\n" * 5 + "\n".join(f"k{i} = [[{i}]]" for i in range(6))
    response = await client.post("/graphs", data=at_the_limits.encode(), headers=TOML)
    assert [e["type"] for e in await errors_of(response)] == ["SpecError"]  # read, then refused
    for body, status, kind, message in [
        ("\n".join(f"k{i} = {i}" for i in range(7)), 413, "SpecTooLargeError",
         "the TOML spec has more than 6 keys (SpecLimits.max_keys): split the graph into "
         "smaller ones, or raise the limit"),
        ("#\n" * 12 + 'name = "g"', 413, "SpecTooLargeError",
         "the TOML spec has 13 lines; the gateway reads at most 12 (SpecLimits.max_lines): "
         "split the graph into smaller ones, or raise the limit"),
        ('name = "g"\nx = [[{ y = ["[[[[", [1]] }]]', 400, "SpecTooDeepError",
         "the graph spec nests deeper than 3 levels of arrays and inline tables at line 2 "
         "(SpecLimits.max_nesting); a spec is a table of nodes whose params nest a few levels "
         "at most"),
    ]:
        response = await client.post("/graphs", data=body.encode(), headers=TOML)
        assert response.status == status, body
        assert await errors_of(response) == [{"node": None, "type": kind, "message": message}]
    await assert_nothing_deployed(client)


async def test_invalid_specs_get_one_structured_error_per_bad_node(
    serve: Client, idle_controller: Controller
) -> None:
    client = await serve(idle_controller)
    spec = copy_spec("bad", "t", "o")
    spec["nodes"][1:] = [
        {"name": "a", "type": "teleport", "inputs": ["ticks"]},
        {"name": "b", "type": "rolling_mean", "inputs": ["ticks"],
         "params": {"field": "price", "window": "twenty"}},
        {"name": "c", "type": "os.system", "inputs": ["ticks"]},
        {"name": "out", "type": "kafka_sink", "inputs": ["a", "b", "c"],
         "params": {"topic": "o"}},
    ]
    response = await client.post("/graphs", json=spec, headers=AUTH)
    assert response.status == 400
    installed = ", ".join(sorted(available()))
    window = next(p for p in lookup("rolling_mean").params if p.name == "window")
    assert await errors_of(response) == [
        {"node": "a", "type": "UnknownOperatorError",
         "message": f"node 'a': unknown operator type 'teleport'; installed operators are "
                    f"{installed}"},
        {"node": "b", "type": "ParamError",
         "message": f"node 'b': param 'window' got 'twenty' (str); expected "
                    f"{window.describe()}"},
        {"node": "c", "type": "UnknownOperatorError",
         "message": f"unknown operator type 'os.system'; installed operators are {installed}"},
    ]
    await assert_nothing_deployed(client)


async def test_code_and_shape_errors_are_refused_with_the_node_named(
    serve: Client, idle_controller: Controller
) -> None:
    client = await serve(idle_controller)
    udf = copy_spec("udf", "t", "o")
    udf["nodes"].insert(1, {"name": "f", "type": "user_function", "inputs": ["ticks"],
                            "params": {"fields": ["price"], "function_name": "evil"}})
    udf["nodes"][2]["inputs"] = ["f"]
    cycle = copy_spec("cycle", "t", "o")
    cycle["nodes"][1:] = [
        {"name": "fast", "type": "rolling_mean", "inputs": ["slow"], "params": {"window": 2}},
        {"name": "slow", "type": "rolling_mean", "inputs": ["fast"], "params": {"window": 3}},
        {"name": "out", "type": "kafka_sink", "inputs": ["slow"], "params": {"topic": "o"}},
    ]
    extra = copy_spec("extra", "t", "o")
    extra["nodes"][0]["module"] = "os"
    for spec, node, kind, start in [
        (udf, "f", "SpecError", "node 'f': operator 'user_function' runs Python code"),
        (cycle, None, "CycleError", "cycle found: fast -> slow -> fast"),
        (extra, "ticks", "SpecError", "node 'ticks': unknown key 'module'"),
    ]:
        response = await client.post("/graphs", data=toml_dumps(spec).encode(),
                                     headers={**AUTH, "Content-Type": "application/toml"})
        assert response.status == 400, spec["name"]
        [error] = await errors_of(response)
        assert (error["node"], error["type"]) == (node, kind), error
        assert error["message"].startswith(start), error
    await assert_nothing_deployed(client)


async def test_unknown_submission_ids_get_404(
    serve: Client, idle_controller: Controller, ray_session: None
) -> None:
    # Removing looks up node actors first (the controller reconciles on first use): Ray.
    client = await serve(idle_controller)
    for method in ("GET", "DELETE"):
        response = await client.request(method, "/graphs/nope-123", headers=AUTH)
        assert response.status == 404
        [error] = await errors_of(response)
        assert (error["node"], error["type"]) == (None, "UnknownSubmissionError")
        assert "has no submission 'nope-123'" in error["message"]


class _StuckStatus:
    """The real controller, except that ``status`` never answers (a controller stuck)."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)

    async def status(self, submission_id: str) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("never answers")


async def test_a_controller_that_does_not_answer_gets_504_and_other_routes_still_answer(
    serve: Client, idle_controller: Controller
) -> None:
    client = await serve(_StuckStatus(idle_controller), call_timeout_s=0.5)
    stuck = asyncio.ensure_future(client.get("/graphs/g-1", headers=AUTH))
    listed = await client.get("/graphs", headers=AUTH)  # answers while the other waits
    assert (listed.status, await listed.json()) == (200, {"graphs": []})
    response = await asyncio.wait_for(stuck, 30)
    assert response.status == 504
    [error] = await errors_of(response)
    assert (error["node"], error["type"]) == (None, "ControllerTimeoutError")
    assert error["message"].startswith(
        "the deployment's controller did not answer 'status' within 0.5 s; it may still be "
        "carrying it out: check `streamdag status`")


# -- the real controller, in-process and as the Ray actor --------------------------------------
async def produce(bootstrap: str, topic: str, prices: list[float]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i, price in enumerate(prices):
            value = json.dumps({"symbol": "A", "ts": i + 1, "price": price}).encode()
            await producer.send(topic, value, key=b"A", partition=0)
        await producer.flush()
    finally:
        await producer.stop()


def samples(text: str) -> dict[tuple[str, str], float]:
    """(sample name, node label or '') -> value."""
    return {(s.name, s.labels.get("node", s.labels.get("state", ""))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def wait_for_metric(client: TestClient[Any, Any], key: tuple[str, str], value: float,
                          timeout_s: float = 60.0) -> dict[tuple[str, str], float]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get("/metrics", headers=AUTH)
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        found = samples(await response.text())
        if found.get(key) == value or time.monotonic() > deadline:
            assert found.get(key) == value, (key, found.get(key))
            return found
        await asyncio.sleep(0.05)  # each scrape probes every actor: leave them room to work


@pytest.mark.integration
async def test_submit_share_status_metrics_remove_with_the_in_process_controller(
    serve: Client, ray_session: None, bootstrap: str, tmp_path: Path
) -> None:
    controller = Controller(settings_for(tmp_path), bootstrap_servers=bootstrap,
                            state_dir=str(tmp_path / "controller"),
                            options=ControllerOptions(**OPTIONS))
    registry = CollectorRegistry()  # injected: the app's collector joins what is already there
    Gauge("other_component_up", "A metric someone else registered.", registry=registry).set(1)
    client = await serve(controller, registry)
    ticks, copy_out, mean_out = (f"gw-{stem}-{uuid.uuid4().hex[:8]}"
                                 for stem in ("ticks", "copy", "mean"))
    await ensure_topics(bootstrap, {ticks: 1})  # a source's topic must exist
    try:
        # Step 1: a JSON spec is created: 201, its id, the diff, sinks first.
        response = await client.post("/graphs", json=copy_spec("copy", ticks, copy_out),
                                     headers=AUTH)
        assert response.status == 201
        first = await response.json()
        assert response.headers["Location"] == f"/graphs/{first['id']}"
        assert (first["graph"], first["state"], first["cause"]) == ("copy", "executing", None)
        assert first["diff"] == {"new": ["out", "ticks"], "reused": [], "reuse_ratio": 0.0,
                                 "creation_order": [["out"], ["ticks"]]}
        # Step 2: a TOML spec sharing the source reuses its running actor.
        response = await client.post(
            "/graphs", data=toml_dumps(mean_spec("mean", ticks, mean_out)).encode(),
            headers={**AUTH, "Content-Type": "application/toml"})
        assert response.status == 201
        second = await response.json()
        assert second["diff"] == {"new": ["out", "sma2"], "reused": ["ticks"],
                                  "reuse_ratio": 1 / 3,
                                  "creation_order": [["out"], ["sma2"]]}
        listed = await (await client.get("/graphs", headers=AUTH)).json()
        assert [(g["id"], g["state"]) for g in listed["graphs"]] == [
            (first["id"], "executing"), (second["id"], "executing")]
        nodes = (await (await client.get("/nodes", headers=AUTH)).json())["nodes"]
        assert sorted((n["name"], n["refcount"]) for n in nodes) == [
            ("out", 1), ("out", 1), ("sma2", 1), ("ticks", 2)]
        # Step 3: events flow; /metrics shows every actor's figures.
        await produce(bootstrap, ticks, [1.0, 3.0, 5.0])
        found = await wait_for_metric(client, ("streamdag_node_events_out_total", "sma2"), 2.0)
        assert found[("streamdag_node_events_out_total", "ticks")] == 3.0
        assert found[("streamdag_node_events_in_total", "sma2")] == 3.0
        assert found[("streamdag_actors_running", "")] == 4.0
        assert found[("streamdag_nodes_new_total", "")] == 4.0
        assert found[("streamdag_nodes_reused_total", "")] == 1.0
        assert found[("streamdag_dedup_reuse_ratio", "")] == 1 / 3
        assert found[("streamdag_submissions", "executing")] == 2.0
        assert found[("streamdag_node_graphs", "ticks")] == 2.0
        assert found[("streamdag_diff_duration_seconds_count", "")] == 2.0
        assert found[("other_component_up", "")] == 1.0
        status = await (await client.get(f"/graphs/{second['id']}", headers=AUTH)).json()
        by_name = {n["name"]: n for n in status["nodes"]}
        assert (by_name["sma2"]["stats"]["events_in"], by_name["sma2"]["stats"]["events_out"]
                ) == (3, 2)
        assert by_name["ticks"]["shared_by"] == sorted([first["id"], second["id"]])
        # Step 4: removing the first graph keeps the shared source for the second.
        removed = await (await client.delete(f"/graphs/{first['id']}", headers=AUTH)).json()
        assert (removed["state"], removed["retired"]) == ("stopped", ["out"])
        removed = await (await client.delete(f"/graphs/{second['id']}", headers=AUTH)).json()
        assert (removed["state"], sorted(removed["retired"])) == (
            "stopped", ["out", "sma2", "ticks"])
        assert (await (await client.get("/nodes", headers=AUTH)).json()) == {"nodes": []}
        found = await wait_for_metric(client, ("streamdag_actors_running", ""), 0.0)
        assert found[("streamdag_submissions", "stopped")] == 2.0
    finally:
        await controller.shutdown()


@pytest.mark.integration
async def test_the_gateway_over_the_controller_ray_actor(
    serve: Client, ray_session: None, bootstrap: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    deployment = Deployment.connect(settings, bootstrap, state_dir=tmp_path / "actor",
                                    options=ControllerOptions(**OPTIONS))
    client = await serve(deployment.controller)
    ticks, out = (f"gw-{stem}-{uuid.uuid4().hex[:8]}" for stem in ("ticks", "out"))
    await ensure_topics(bootstrap, {ticks: 1})
    try:
        health = await client.get("/healthz")  # no token needed
        assert (health.status, await health.json()) == (200, {"status": "ok", "problems": []})
        response = await client.post("/graphs", json=copy_spec("copy", ticks, out), headers=AUTH)
        assert response.status == 201
        submitted = await response.json()
        assert (submitted["state"], submitted["diff"]["new"]) == ("executing", ["out", "ticks"])
        status = await (await client.get(f"/graphs/{submitted['id']}", headers=AUTH)).json()
        assert [(n["name"], n["alive"]) for n in status["nodes"]] == [
            ("ticks", True), ("out", True)]
        await produce(bootstrap, ticks, [2.0, 4.0])
        found = await wait_for_metric(client, ("streamdag_node_events_in_total", "out"), 2.0)
        assert found[("streamdag_actors_running", "")] == 2.0
        missing = await client.get("/graphs/nope-1", headers=AUTH)  # unwrapped from RayTaskError
        assert missing.status == 404
        assert [e["type"] for e in await errors_of(missing)] == ["UnknownSubmissionError"]
        removed = await (await client.delete(f"/graphs/{submitted['id']}", headers=AUTH)).json()
        assert (removed["state"], sorted(removed["retired"])) == ("stopped", ["out", "ticks"])
    finally:
        deployment.shutdown()
    health = await client.get("/healthz")
    assert health.status == 503
    assert (await health.json())["status"] == "unavailable"
