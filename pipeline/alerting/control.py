"""Operator commands through topics: read the compacted views (alerts, silences, checkpoints) and
publish acks, resolves and silences for the running engine to consume."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TypeVar

from aiokafka import ConsumerRecord, TopicPartition

from pipeline.contracts import decoder_for, encode, load_registry
from pipeline.contracts.records import Alert, Record, Silence
from pipeline.contracts.topics import ALERT_ACTIONS, ALERTING_CHECKPOINTS, ALERTS, SILENCES
from pipeline.kafka import make_consumer, make_producer
from pipeline.kafka.offsets import log_end_offsets
from pipeline.settings import Settings

log = logging.getLogger(__name__)

ALERTS_TOPIC = ALERTS.name
SILENCES_TOPIC = SILENCES.name
ACTIONS_TOPIC = ALERT_ACTIONS.name
CHECKPOINTS_TOPIC = ALERTING_CHECKPOINTS.name

R = TypeVar("R", bound=Record)


def partitions(settings: Settings, name: str) -> list[TopicPartition]:
    """Every partition of a registry topic (the registry is what `topics apply` made the broker hold)."""
    topic = load_registry().get(name)
    return [TopicPartition(settings.topic(name), p) for p in range(topic.partitions)]


async def read_raw(settings: Settings, name: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic (with its headers) from its beginning to its end at call time."""
    tps = partitions(settings, name)
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await log_end_offsets(settings.kafka, tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for messages in batch.values():
                out += messages
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    return out


async def read_all(settings: Settings, name: str, record_type: type[R]) -> list[R]:
    """Every record of a topic from its beginning to its end at call time (undecodable ones are logged)."""
    out: list[R] = []
    decoder = decoder_for(record_type)
    for message in await read_raw(settings, name):
        if message.value is None:
            continue
        try:
            out.append(decoder.decode(message.value))
        except Exception as exc:  # a tombstone or foreign record in a view: skip, say so
            log.warning("%s@%d:%d undecodable: %s", message.topic, message.partition, message.offset, exc)
    return out


def latest(records: list[R], key: Callable[[R], str], order: Callable[[R], int]) -> dict[str, R]:
    view: dict[str, R] = {}
    for record in records:
        k = key(record)
        if k not in view or order(record) >= order(view[k]):
            view[k] = record
    return view


async def current_alerts(settings: Settings) -> dict[str, Alert]:
    """The compacted view of ops.alerts.v1: the latest version per fingerprint."""
    return latest(await read_all(settings, ALERTS_TOPIC, Alert), lambda a: a.fingerprint, lambda a: a.version)


async def current_silences(settings: Settings) -> dict[str, Silence]:
    records = await read_all(settings, SILENCES_TOPIC, Silence)
    view: dict[str, Silence] = {}
    for record in records:  # topic order: the last version of an id wins
        view[record.silence_id] = record
    return view


async def publish(settings: Settings, topic: str, key: str, record: Record) -> None:
    """Send one record and wait for the broker's acknowledgement (raises when it is not stored)."""
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic(topic), encode(record), key=key.encode())
    finally:
        await producer.stop()


def new_id() -> str:
    return uuid.uuid4().hex[:12]
