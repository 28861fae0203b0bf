"""End to end through the real broker: Alert records on ops.alerts.v1 -> a `marketprism notify`
process -> local webhook receivers; SIGKILL of the notifier mid-stream and a restart; receipts on
ops.notifications.v1 and dead letters on ops.dlq.v1."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import yaml
from aiokafka import TopicPartition

from pipeline.contracts import DeadLetter, Notification, decode
from pipeline.kafka import RecordProducer, make_consumer, make_producer
from pipeline.notify.bench import NotifierProcess
from pipeline.notify.channels.base import IDEMPOTENCY_HEADER
from pipeline.settings import Settings
from tests.notify.conftest import alert
from tests.notify.receivers import HttpReceivers

WAIT_S = 120.0


async def eventually(predicate: Callable[[], bool], what: str | Callable[[], str], limit_s: float = WAIT_S) -> None:
    for _ in range(int(limit_s / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what if isinstance(what, str) else what()}")


async def read_topic(settings: Settings, name: str, record_type: type) -> list:
    topic = settings.topic(name)
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found = []
        for _ in range(200):
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                found += [decode(record_type, m.value) for m in messages]
        return found
    finally:
        await consumer.stop()


def transitions(http: HttpReceivers, name: str) -> dict[tuple[str, str], list[str]]:
    """(fingerprint, status) -> idempotency keys of every delivery announcing it."""
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for received in http.got[name]:
        for a in received.body["alerts"]:
            seen[(a["fingerprint"], a["status"])].append(received.headers[IDEMPOTENCY_HEADER])
    return seen


def write_routes(path: Path, http: HttpReceivers) -> Path:
    config = {
        "route": {
            "receiver": "hook",
            "group_by": ["fp"],
            "group_wait": 0,
            "group_interval": "1s",
            "repeat_interval": "1h",
            "routes": [{"matchers": ["kind=broken"], "receiver": "broken"}],
        },
        "receivers": [
            {"name": "hook", "channels": [{"type": "webhook", "url": http.url("/hook/hook")}]},
            {"name": "broken", "channels": [{"type": "webhook", "url": http.url("/hook/broken")}]},
        ],
        "retry": {"attempts": 2, "initial": "10ms", "max": "50ms"},
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def test_notifier_process_survives_sigkill_without_double_sends(
    topics: Settings, http: HttpReceivers, tmp_path: Path
) -> None:
    routes = write_routes(tmp_path / "notify.yaml", http)
    http.fail_next("broken", *[500] * 10)
    producer = RecordProducer(make_producer(topics.kafka), topics.topic_prefix)
    await producer.start()
    first = NotifierProcess(topics, routes, tmp_path / "notifier-1.log")
    second = NotifierProcess(topics, routes, tmp_path / "notifier-2.log")

    async def send(fp: str, state: str, at: float, **labels: str) -> None:
        record = alert(fp, state, at, fired=0, version=2 if state == "resolved" else 1, **labels)
        await producer.send("ops.alerts.v1", fp.encode(), record)

    try:
        first.start()
        for i in range(20):
            await send(f"a{i:02d}", "firing", 0)
        await send("dead", "firing", 0, kind="broken")
        await producer.send_raw("ops.alerts.v1", b"junk", b'{"not": "an alert"}')
        await producer.flush()
        await eventually(lambda: len(transitions(http, "hook")) >= 20, "the first 20 firing notifications")

        for i in range(10):
            await send(f"a{i:02d}", "resolved", 10)
        for i in range(20, 30):
            await send(f"a{i:02d}", "firing", 10)
        await producer.flush()
        await eventually(lambda: len(transitions(http, "hook")) >= 21, "the first of the second wave")
        first.kill()  # mid-stream: some of the second wave is still to be delivered

        for i in range(10, 25):
            await send(f"a{i:02d}", "resolved", 20)
        await producer.flush()
        second.start()
        expected = {(f"a{i:02d}", "firing") for i in range(30)} | {(f"a{i:02d}", "resolved") for i in range(25)}
        await eventually(
            lambda: expected <= set(transitions(http, "hook")),
            lambda: f"transitions after the restart; missing {sorted(expected - set(transitions(http, 'hook')))}; "
            f"log: {(tmp_path / 'notifier-2.log').read_text()[-3000:]}",
        )
        await asyncio.sleep(3)  # several group_interval ticks: room for any second message to show up
        assert second.stop() == 0, (tmp_path / "notifier-2.log").read_text()[-3000:]
    finally:
        first.kill()
        second.kill()
        await producer.stop()

    seen = transitions(http, "hook")
    assert set(seen) == expected
    for transition, keys in seen.items():
        assert len(set(keys)) == 1, f"{transition} announced by {len(set(keys))} different messages"
        # A repeat of the same key can only come from a crash between delivery and its receipt.
        assert len(keys) <= 2, f"{transition} delivered {len(keys)} times"
    assert http.violations == []

    receipts: list[Notification] = await read_topic(topics, "ops.notifications.v1", Notification)
    sent_keys = {r.idempotency_key for r in receipts if r.status == "sent" and r.receiver == "hook"}
    assert {k for keys in seen.values() for k in keys} <= sent_keys
    broken = sorted((r.attempt, r.status) for r in receipts if r.receiver == "broken")
    assert broken[:2] == [(1, "retrying"), (2, "dead_lettered")], broken
    assert [s for _, s in broken].count("dead_lettered") == 1, "a dead-lettered message is settled for good"

    dead: list[DeadLetter] = await read_topic(topics, "ops.dlq.v1", DeadLetter)
    reasons = {d.reason for d in dead if d.source == "notify"}
    assert {"schema", "delivery_failed"} <= reasons, dead
