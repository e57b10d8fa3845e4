"""Submission lifecycle: the transition table, records, CloudEvents to the log and to Kafka."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from runtime.deployment.lifecycle import (
    LEGAL_TRANSITIONS,
    TERMINAL_STATES,
    DiffSummary,
    IllegalTransitionError,
    KafkaLifecycleEmitter,
    SubmissionNode,
    SubmissionRecord,
    SubmissionState,
    check_transition,
    cloud_event,
    load_submissions,
    log_event,
    save_submissions,
)
from runtime.deployment.node_registry import RegistryFileError

S = SubmissionState
EXPECTED = {
    (S.SUBMITTED, S.PROCESSING), (S.SUBMITTED, S.FAILED), (S.SUBMITTED, S.STOPPED),
    (S.PROCESSING, S.MAPPED), (S.PROCESSING, S.FAILED), (S.PROCESSING, S.STOPPED),
    (S.MAPPED, S.EXECUTING), (S.MAPPED, S.FAILED), (S.MAPPED, S.STOPPED),
    (S.EXECUTING, S.COMPLETED), (S.EXECUTING, S.FAILED), (S.EXECUTING, S.STOPPED),
}


def test_the_transition_table_is_exactly_the_documented_one() -> None:
    table = {(a, b) for a, targets in LEGAL_TRANSITIONS.items() for b in targets}
    assert table == EXPECTED
    assert {S.COMPLETED, S.FAILED, S.STOPPED} == TERMINAL_STATES
    assert [str(s) for s in S] == ["submitted", "processing", "mapped", "executing",
                                   "completed", "failed", "stopped"]


@pytest.mark.parametrize(("current", "target"),
                         [(a, b) for a in S for b in S if (a, b) not in EXPECTED])
def test_every_other_transition_is_refused(current: S, target: S) -> None:
    with pytest.raises(IllegalTransitionError, match=rf"cannot move from {current} to {target}"):
        check_transition("s1", current, target)


def test_a_record_keeps_its_history_and_first_cause() -> None:
    record = SubmissionRecord.new("s1", "momentum", now=10.0)
    for at, state in enumerate((S.PROCESSING, S.MAPPED, S.EXECUTING), start=11):
        record = record.advance(state, now=float(at))
    record = record.advance(S.FAILED, "node 'sma' crashed", now=20.0)
    assert [(t.from_state, t.to_state, t.at) for t in record.history] == [
        (None, S.SUBMITTED, 10.0), (S.SUBMITTED, S.PROCESSING, 11.0),
        (S.PROCESSING, S.MAPPED, 12.0), (S.MAPPED, S.EXECUTING, 13.0),
        (S.EXECUTING, S.FAILED, 20.0),
    ]
    assert (record.state, record.cause, record.terminal) == (S.FAILED, "node 'sma' crashed", True)
    with pytest.raises(IllegalTransitionError, match="may move to: none"):
        record.advance(S.STOPPED)


def test_cloud_events_carry_the_required_attributes() -> None:
    record = SubmissionRecord.new("s1", "momentum", now=1_700_000_000.25)
    record = record.advance(S.PROCESSING, now=1_700_000_001.5)
    event = cloud_event("live", record, record.history[-1], event_id="e-1")
    assert event == {
        "specversion": "1.0",
        "id": "e-1",
        "source": "streamdag/live",
        "type": "io.streamdag.submission.processing",
        "subject": "s1",
        "time": "2023-11-14T22:13:21.500000Z",
        "datacontenttype": "application/json",
        "data": {"submission": "s1", "graph": "momentum", "from": "submitted",
                 "to": "processing", "cause": None},
    }
    assert datetime.fromisoformat(event["time"]).timestamp() == 1_700_000_001.5
    other = cloud_event("live", record, record.history[-1])
    assert other["id"] != cloud_event("live", record, record.history[-1])["id"]


def test_events_go_to_the_log_as_json(caplog: pytest.LogCaptureFixture) -> None:
    record = SubmissionRecord.new("s1", "g", now=0.0)
    event = cloud_event("live", record, record.history[0], event_id="e")
    with caplog.at_level(logging.INFO, logger="streamdag.lifecycle"):
        log_event(event)
    assert [json.loads(r.getMessage()) for r in caplog.records] == [event]


def test_records_persist_and_reload(tmp_path: Path) -> None:
    record = SubmissionRecord.new("s1", "g", now=0.0).advance(S.PROCESSING, now=1.0)
    node = SubmissionNode("sma", "k" * 64, "k" * 64, "rolling_mean", "operator", leaf=False)
    full = SubmissionRecord(
        "s2", "g2", S.MAPPED, 2.0, None, (node,),
        DiffSummary(("out",), ("sma",), 0.5, (("out",),)), record.history, holds_nodes=True,
    )
    path = tmp_path / "submissions.json"
    save_submissions(path, [record, full])
    assert load_submissions(path) == [record, full]
    assert load_submissions(tmp_path / "none.json") == []
    path.write_text(json.dumps({"format": 7, "submissions": []}))
    with pytest.raises(RegistryFileError, match="format 7, expected 1"):
        load_submissions(path)


@pytest.mark.integration
async def test_events_reach_the_topic_keyed_by_submission(bootstrap: str) -> None:
    topic = "lifecycle-test-events"
    emitter = KafkaLifecycleEmitter(bootstrap, topic, partitions=2)
    record = SubmissionRecord.new("sub-a", "g", now=1.0).advance(S.PROCESSING, now=2.0)
    events = [cloud_event("live", record, step, event_id=f"e{i}")
              for i, step in enumerate(record.history)]
    try:
        for event in events:
            await emitter.emit("sub-a", event)
    finally:
        await emitter.close()
    assert (emitter.published, emitter.failures) == (2, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=10)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p)
                      for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            await consumer.topics()
            partitions = [TopicPartition(topic, p)
                          for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        received: list[object] = []
        deadline = asyncio.get_running_loop().time() + 10
        while len(received) < 2 and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=100)).values():
                received.extend(batch)
    finally:
        await consumer.stop()
    assert [(m.key, json.loads(m.value)) for m in received] == [  # type: ignore[attr-defined]
        (b"sub-a", event) for event in events
    ]
    assert received[0].headers == (  # type: ignore[attr-defined]
        ("content-type", b"application/cloudevents+json"),
    )


async def test_an_unreachable_broker_is_counted_not_raised() -> None:
    emitter = KafkaLifecycleEmitter("127.0.0.1:1", "lifecycle", timeout_s=2.0)
    record = SubmissionRecord.new("s1", "g", now=0.0)
    await emitter.emit("s1", cloud_event("live", record, record.history[0]))
    assert (emitter.published, emitter.failures) == (0, 1)
