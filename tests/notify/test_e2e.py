"""End to end through the real broker: Alert records on ops.alerts.v1 -> a `marketprism notify`
process -> local webhook receivers; SIGKILL of the notifier mid-stream and a restart; receipts on
ops.notifications.v1 and dead letters on ops.dlq.v1."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipeline.bench.notify import NotifierProcess
from pipeline.contracts import DeadLetter, Notification
from pipeline.kafka.clients import make_record_producer
from pipeline.notify.channels.base import IDEMPOTENCY_HEADER, REDELIVERY_HEADER
from pipeline.settings import Settings
from tests.conftest import read_records
from tests.notify.conftest import alert
from tests.notify.receivers import HttpReceivers

WAIT_S = 120.0


@pytest.fixture
def fast(topics: Settings) -> Settings:
    """The test's settings with short group timings: a dead replica leaves its group in seconds."""
    kafka = topics.kafka.model_copy(
        update={"session_timeout_ms": 6000, "heartbeat_interval_ms": 500, "rebalance_timeout_ms": 3000}
    )
    return topics.model_copy(update={"kafka": kafka})


async def eventually(predicate: Callable[[], bool], what: str | Callable[[], str], limit_s: float = WAIT_S) -> None:
    for _ in range(int(limit_s / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what if isinstance(what, str) else what()}")


def transitions(http: HttpReceivers, name: str) -> dict[tuple[str, str], list[str]]:
    """(fingerprint, status) -> idempotency keys of every delivery announcing it."""
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for received in http.got[name]:
        for a in received.body["alerts"]:
            seen[(a["fingerprint"], a["status"])].append(received.headers[IDEMPOTENCY_HEADER])
    return seen


def assert_once_per_transition(http: HttpReceivers, name: str) -> None:
    """Each transition reached the receiver under one key; a second request of a key is a redelivery (marked),
    so a receiver honouring ``Idempotency-Key`` acts exactly once per transition."""
    first_of_key: set[str] = set()
    for received in http.got[name]:
        key = received.headers[IDEMPOTENCY_HEADER]
        if key in first_of_key:
            assert received.headers.get(REDELIVERY_HEADER) == "true" and received.body["redelivery"], received.body
        first_of_key.add(key)
    acted: dict[tuple[str, str], int] = defaultdict(int)
    for received in http.processed(name):
        for a in received.body["alerts"]:
            acted[(a["fingerprint"], a["status"])] += 1
    assert all(n == 1 for n in acted.values()), {t: n for t, n in acted.items() if n != 1}


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
    fast: Settings, http: HttpReceivers, tmp_path: Path
) -> None:
    topics = fast
    routes = write_routes(tmp_path / "notify.yaml", http)
    http.fail_next("broken", *[500] * 10)
    producer = make_record_producer(topics.kafka, topics.topic_prefix)
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
            lambda: (
                f"transitions after the restart; missing {sorted(expected - set(transitions(http, 'hook')))}; "
                f"log: {(tmp_path / 'notifier-2.log').read_text()[-3000:]}"
            ),
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
    assert_once_per_transition(http, "hook")
    assert http.violations == []

    receipts: list[Notification] = await read_records(topics, "ops.notifications.v1", Notification)
    sent_keys = {r.idempotency_key for r in receipts if r.status == "sent" and r.receiver == "hook"}
    assert {k for keys in seen.values() for k in keys} <= sent_keys
    broken = [r.status for r in receipts if r.receiver == "broken"]
    assert set(broken) == {"sending", "retrying", "dead_lettered"}, broken
    assert broken.count("dead_lettered") == 1, "a dead-lettered message is settled for good"

    dead: list[DeadLetter] = await read_records(topics, "ops.dlq.v1", DeadLetter)
    reasons = {d.reason for d in dead if d.source == "notify"}
    assert {"schema", "delivery_failed"} <= reasons, dead


async def test_sigkill_after_the_receiver_accepted_and_before_the_receipt(
    fast: Settings, http: HttpReceivers, tmp_path: Path
) -> None:
    """The one window an idempotency key alone cannot close: the receiver has the message, the receipt never
    lands. The notifier is killed by the receiver itself, on accepting the message, before it answers. The next
    notifier finds the intent without a receipt and sends the message again under the same key, marked as a
    redelivery; a receiver honouring Idempotency-Key acts on every transition exactly once."""
    # the dead replica's lease ends with its group session: shorter than `fast` to keep the test short
    kafka = fast.kafka.model_copy(update={"session_timeout_ms": 3000, "heartbeat_interval_ms": 300})
    topics = fast.model_copy(update={"kafka": kafka})
    routes = write_routes(tmp_path / "notify.yaml", http)
    producer = make_record_producer(topics.kafka, topics.topic_prefix)
    await producer.start()
    first = NotifierProcess(topics, routes, tmp_path / "notifier-1.log")
    second = NotifierProcess(topics, routes, tmp_path / "notifier-2.log")

    def kill_on_victim() -> None:
        if any(a["fingerprint"] == "victim" for a in http.got["hook"][-1].body["alerts"]):
            http.on_accept.pop("hook")
            first.kill()

    async def send(fp: str, state: str, at: float) -> None:
        record = alert(fp, state, at, fired=0, version=2 if state == "resolved" else 1)
        await producer.send("ops.alerts.v1", fp.encode(), record)
        await producer.flush()

    try:
        first.start()
        for i in range(3):
            await send(f"c{i}", "firing", 0)
        await eventually(lambda: len(transitions(http, "hook")) >= 3, "the first three notifications")
        http.on_accept["hook"] = kill_on_victim
        await send("victim", "firing", 0)
        await eventually(lambda: first.proc is not None and first.proc.poll() is not None, "the kill on accept")
        second.start()
        await send("victim", "resolved", 10)
        await send("c0", "resolved", 10)
        expected = {(f"c{i}", "firing") for i in range(3)} | {("c0", "resolved")}
        expected |= {("victim", "firing"), ("victim", "resolved")}
        await eventually(
            lambda: expected <= set(transitions(http, "hook")),
            lambda: f"transitions after the restart; log: {(tmp_path / 'notifier-2.log').read_text()[-3000:]}",
        )
        await asyncio.sleep(3)  # several group_interval ticks: room for any further message to show up
        assert second.stop() == 0, (tmp_path / "notifier-2.log").read_text()[-3000:]
    finally:
        http.on_accept.pop("hook", None)
        first.kill()
        second.kill()
        await producer.stop()

    seen = transitions(http, "hook")
    assert set(seen) == expected
    assert len(seen[("victim", "firing")]) == 2, "accepted before the kill, sent again after it"
    assert_once_per_transition(http, "hook")
    assert http.violations == []
    receipts: list[Notification] = await read_records(topics, "ops.notifications.v1", Notification)
    [victim_key] = set(seen[("victim", "firing")])
    statuses = [r.status for r in receipts if r.idempotency_key == victim_key]
    assert statuses.count("sending") == 2 and statuses.count("sent") == 1, statuses


def lease_state(log_file: Path) -> str | None:
    """The replica's last reported lease state (ACTIVE/standby), None before it joined."""
    states = re.findall(r"lease: (ACTIVE|standby)", log_file.read_text() if log_file.exists() else "")
    return states[-1] if states else None


async def test_two_replicas_send_each_transition_once(fast: Settings, http: HttpReceivers, tmp_path: Path) -> None:
    topics = fast
    routes = write_routes(tmp_path / "notify.yaml", http)
    producer = make_record_producer(topics.kafka, topics.topic_prefix)
    await producer.start()
    logs = [tmp_path / "replica-a.log", tmp_path / "replica-b.log"]
    replicas = [NotifierProcess(topics, routes, log) for log in logs]

    async def send(fp: str, state: str, at: float) -> None:
        record = alert(fp, state, at, fired=0, version=2 if state == "resolved" else 1)
        await producer.send("ops.alerts.v1", fp.encode(), record)
        await producer.flush()

    try:
        replicas[0].start()
        await send("warmup", "firing", 0)
        await eventually(lambda: ("warmup", "firing") in transitions(http, "hook"), "the first replica to send")
        replicas[1].start()
        await eventually(lambda: lease_state(logs[1]) is not None, "the second replica to join the group")
        await eventually(lambda: {lease_state(log) for log in logs} == {"ACTIVE", "standby"}, "one active replica")

        for i in range(15):
            await send(f"b{i:02d}", "firing", 0)
        await eventually(lambda: len(transitions(http, "hook")) >= 16, "15 firing notifications")
        for i in range(15):
            await send(f"b{i:02d}", "resolved", 10)
        phase1 = {(f"b{i:02d}", s) for i in range(15) for s in ("firing", "resolved")}
        await eventually(lambda: phase1 <= set(transitions(http, "hook")), "15 resolved notifications")
        await asyncio.sleep(3)  # room for a second replica's message to show up
        seen = transitions(http, "hook")
        assert all(len(seen[t]) == 1 for t in phase1), {t: seen[t] for t in phase1 if len(seen[t]) != 1}

        active = next(i for i, log in enumerate(logs) if lease_state(log) == "ACTIVE")
        replicas[active].kill()
        for i in range(15, 25):
            await send(f"b{i:02d}", "firing", 20)
        phase2 = {(f"b{i:02d}", "firing") for i in range(15, 25)}
        await eventually(lambda: phase2 <= set(transitions(http, "hook")), "the standby to take over")
        await asyncio.sleep(3)
        survivor = replicas[1 - active]
        assert survivor.stop() == 0, logs[1 - active].read_text()[-3000:]
    finally:
        for replica in replicas:
            replica.kill()
        await producer.stop()

    seen = transitions(http, "hook")
    assert set(seen) == phase1 | phase2 | {("warmup", "firing")}
    assert all(len(set(keys)) == 1 and len(keys) == 1 for keys in seen.values()), seen
    assert http.violations == []
