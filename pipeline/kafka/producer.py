"""A keyed producer of contract records with a bounded in-flight window.

``send`` never blocks the caller for longer than it takes to enqueue into aiokafka's accumulator;
when the broker is away, records wait in a bounded buffer and ``send`` reports overflow instead of
growing without limit (the caller counts and logs it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from pipeline.contracts import Record, encode
from pipeline.observability.metrics import PRODUCE_ERRORS, PRODUCED

log = logging.getLogger(__name__)


class KeyHashPartitioner:
    """aiokafka's default partitioner (the Java client's murmur2 of the key; a record without a key goes
    to a random available partition) with each key's hash memoised: keys (``exchange:symbol``, alert
    fingerprints) are few and repeat, and the pure-Python murmur2 was about a third of aiokafka's
    per-record ``send`` cost. Same partition for the same key as the default, so keyed order holds."""

    def __init__(self, capacity: int = 65_536):
        self._hashes: dict[bytes, int] = {}
        self._capacity = capacity

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return DefaultPartitioner()(key, all_partitions, available)  # type: ignore[no-any-return]
        return self.partition_of(key, all_partitions)

    def partition_of(self, key: bytes, all_partitions: list[int]) -> int:
        """What ``self(key, all_partitions, ...)`` returns for a key (keyed records ignore availability)."""
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._capacity:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]


@dataclass(slots=True)
class _Lane:
    """The records of one topic partition in flight, in send order (aiokafka delivers a partition's batches
    one at a time, in order), and the one among them that carries the lane's done-callback."""

    topic: str  # unprefixed, the metrics label
    futures: deque[asyncio.Future[object]] = field(default_factory=deque)
    armed_on: asyncio.Future[object] | None = None  # the record the done-callback is attached to
    callback: Callable[[asyncio.Future[object]], None] | None = None


class RecordProducer:
    """Encodes contract records and sends them keyed; tracks delivery futures without awaiting each.

    Delivery is counted per topic partition without a callback per record: a partition's records in flight
    wait in send order, and one done-callback sits on the oldest of them; when it fires, every record done
    at the front is counted at once (acknowledged or failed) and the callback moves on to the new oldest.
    aiokafka resolves a whole produce batch in one step, so this is one callback per batch instead of one
    per record (each was a ``call_soon`` and a Python call, about 1 µs a record)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic_prefix: str = "",
        max_in_flight: int = 100_000,
        partitioner: KeyHashPartitioner | None = None,
    ):
        self._producer = producer
        self._prefix = topic_prefix
        self._lanes: dict[tuple[str, int | None], _Lane] = {}
        self._in_flight = 0  # records sent and not yet counted as acknowledged or failed
        self._max_in_flight = max_in_flight
        self.overflowed = 0
        self.failed = 0  # records not produced: overflow, enqueue error or failed delivery
        # per topic, made once: the PRODUCED child (labels() costs ~1 us a call) and the prefixed name
        self._produced: dict[str, Any] = {}
        self._full: dict[str, str] = {}  # topic -> prefixed name
        # Given the producer's partitioner (``make_record_producer``), keyed records get their partition here, from
        # each topic's partition list as aiokafka builds it (forgotten at every metadata update): the same
        # partition aiokafka would pick, without its per-record partition sets (~1 µs a record). Without it
        # aiokafka partitions every record itself.
        self._partitioner = partitioner
        self._partitions: dict[str, list[int]] = {}  # prefixed topic -> all its partitions
        self._listening = False

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self.flush()
        await self._producer.stop()

    def topic(self, name: str) -> str:
        return f"{self._prefix}{name}"

    @property
    def in_flight(self) -> int:
        """Records sent and not yet counted as acknowledged or failed."""
        return self._in_flight

    async def send(self, topic: str, key: bytes, record: Record) -> bool:
        """Queue one record; returns False (and counts) when the in-flight window is full."""
        return await self.send_raw(topic, key, encode(record))

    async def send_raw(self, topic: str, key: bytes, value: bytes) -> bool:
        if self._in_flight >= self._max_in_flight:
            self.overflowed += 1
            self.failed += 1
            PRODUCE_ERRORS.labels(topic=topic, reason="overflow").inc()
            return False
        full = self._full.get(topic)
        if full is None:
            full = self._full[topic] = self.topic(topic)
        partition = None
        if self._partitioner is not None and key is not None:
            partitions = self._partitions.get(full) or self._partitions_of(full)
            if partitions:
                partition = self._partitioner.partition_of(key, partitions)
        try:
            if partition is None:
                future = await self._producer.send(full, value=value, key=key)
            else:
                future = await self._producer.send(full, value=value, key=key, partition=partition)
        except KafkaError as exc:
            self.failed += 1
            PRODUCE_ERRORS.labels(topic=topic, reason=type(exc).__name__).inc()
            log.error("produce to %s failed: %s", full, exc)
            return False
        # (partition None: aiokafka partitioned it, so that lane may span partitions and a record done behind
        # one still in flight is counted a little later; only the first records of a topic, before its
        # metadata is known, or with another partitioner)
        lane = self._lanes.get((topic, partition))
        if lane is None:
            lane = self._lanes[(topic, partition)] = _Lane(topic)
            lane.callback = partial(self._on_done, lane)
        lane.futures.append(future)
        self._in_flight += 1
        if lane.armed_on is None:
            lane.armed_on = future
            future.add_done_callback(lane.callback)  # type: ignore[arg-type]
        return True

    def _partitions_of(self, full: str) -> list[int] | None:
        """``full``'s partitions as aiokafka lists them for its partitioner; None while its metadata is unknown
        (aiokafka then waits for it and partitions the record itself)."""
        cluster = self._producer.client.cluster
        if not self._listening:
            cluster.add_listener(self._metadata_updated)
            self._listening = True
        partitions = cluster.partitions_for_topic(full)
        if not partitions:
            return None
        found = self._partitions[full] = list(partitions)
        return found

    def _metadata_updated(self, _cluster: object) -> None:
        self._partitions.clear()

    def _on_done(self, lane: _Lane, future: asyncio.Future[object]) -> None:
        """The lane's callback: count what is done at its front, then move the callback to its oldest record
        still in flight. A record that carries the callback is done before anything behind it in the lane, so
        while records wait in a lane a callback is on its way for them (``flush`` counts without moving it)."""
        if future is not lane.armed_on:
            return
        lane.armed_on = None
        self._take_done(lane)
        if lane.futures:
            lane.armed_on = lane.futures[0]
            lane.armed_on.add_done_callback(lane.callback)  # type: ignore[arg-type]

    def _take_done(self, lane: _Lane) -> None:
        futures = lane.futures
        done = 0
        acked = 0
        while futures and futures[0].done():
            future = futures.popleft()
            done += 1
            if future.cancelled() or future.exception() is not None:
                self.failed += 1
                PRODUCE_ERRORS.labels(topic=lane.topic, reason="delivery").inc()
                log.error("delivery to %s failed: %s", lane.topic, None if future.cancelled() else future.exception())
            else:
                acked += 1
        self._in_flight -= done
        if acked:
            produced = self._produced.get(lane.topic)
            if produced is None:
                produced = self._produced[lane.topic] = PRODUCED.labels(topic=lane.topic)
            produced.inc(acked)

    async def flush(self) -> None:
        """Wait until every queued record is acknowledged (or failed), and count them."""
        await self._producer.flush()
        waiting = [future for lane in self._lanes.values() for future in lane.futures if not future.done()]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
        for lane in self._lanes.values():  # count now what is done, not when the callbacks run
            self._take_done(lane)
