"""The sink protocol: buffer records (``add``), write them at the checkpoint (``flush``), ``setup`` the
destination, drop buffers when consumption is paused (``on_paused``), and signal a destination that
cannot take writes right now with :class:`SinkBackpressureError` carrying ``retry_after``.

Exceptions::

    SinkError                      root of this package's errors
    ├── SinkBackpressureError      destination unavailable; pause, re-read from the commit, retry later
    ├── UnavailableError           a write failed for reasons outside the rows (connection, server down);
    │                              retried with capped jittered backoff, then raised as backpressure
    ├── ConversionError            one record cannot be stored (goes to ops.dlq.v1, the rest goes on)
    └── RejectedError              the destination refused rows for what they contain (not retryable)

A :class:`BatchingSink` keeps one :class:`Batch` per topic-partition; ``flush`` hands every batch to
``write`` and returns the offsets that are now safe to commit. Records the sink already stored (found
by ``recover`` after a restart or an ambiguous failure) are skipped, but their offsets still advance.
``checkpoint`` detaches the buffers so the consumer loop can read the next batch while this one is
written (chdb and clickhouse-driver release the GIL while they work).
"""

from __future__ import annotations

import abc
import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition


class SinkError(Exception):
    """Root of the sink errors."""


class SinkBackpressureError(SinkError):
    """The destination cannot take writes now; the consumer pauses and retries after ``retry_after`` s."""

    def __init__(self, retry_after: float, reason: str = ""):
        super().__init__(f"backpressure, retry after {retry_after:.1f}s: {reason}")
        self.retry_after = retry_after
        self.reason = reason


class UnavailableError(SinkError):
    """A write or query failed for reasons outside the rows; worth retrying."""


class ConversionError(SinkError):
    """One record cannot be converted for the destination; ``reason`` is a short machine label."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RejectedError(SinkError):
    """The destination refused the rows themselves (a parse or type error), so retrying cannot help."""


@dataclass
class DeadRecord:
    """A record the sink could not store, with where it came from."""

    topic: str
    partition: int
    offset: int
    value: bytes
    reason: str
    error: str


@dataclass
class Batch:
    """Converted rows of one topic-partition, in offset order."""

    topic: str
    partition: int
    offsets: list[int] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)
    size: int = 0  # bytes of the Kafka values behind the rows

    @property
    def first(self) -> int:
        return self.offsets[0]

    @property
    def last(self) -> int:
        return self.offsets[-1]

    def __len__(self) -> int:
        return len(self.rows)

    def without(self, stored: set[int]) -> Batch:
        keep = [i for i, o in enumerate(self.offsets) if o not in stored]
        return Batch(self.topic, self.partition, [self.offsets[i] for i in keep], [self.rows[i] for i in keep])


@dataclass
class Checkpoint:
    """What one flush writes: the batches, the next offset per partition, and the dead letters."""

    batches: list[Batch]
    offsets: dict[TopicPartition, int]
    dead: list[DeadRecord]


class OffsetRanges:
    """A sorted set of offsets held as closed ranges (stored-offset sets are contiguous in practice)."""

    def __init__(self, offsets: list[int]):
        self.starts: list[int] = []
        self.ends: list[int] = []
        for o in sorted(offsets):
            if self.ends and o <= self.ends[-1] + 1:
                self.ends[-1] = max(self.ends[-1], o)
            else:
                self.starts.append(o)
                self.ends.append(o)

    def __contains__(self, offset: int) -> bool:
        i = bisect.bisect_right(self.starts, offset) - 1
        return i >= 0 and offset <= self.ends[i]

    def __bool__(self) -> bool:
        return bool(self.starts)

    @property
    def last(self) -> int:
        return self.ends[-1]


class BatchingSink(abc.ABC):
    """Buffers converted rows per topic-partition; subclasses implement ``convert``, ``write``,
    ``stored_offsets``, ``setup`` and ``close``."""

    def __init__(self) -> None:
        self._batches: dict[TopicPartition, Batch] = {}
        self._next_offsets: dict[TopicPartition, int] = {}
        self._stored: dict[TopicPartition, OffsetRanges] = {}
        self._dead: list[DeadRecord] = []
        self.buffered_rows = 0
        self.buffered_bytes = 0
        self.skipped = 0

    @abc.abstractmethod
    async def setup(self) -> None:
        """Connect and make sure the destination can take writes (tables exist)."""

    @abc.abstractmethod
    def converter(self, topic: str, partition: int) -> Callable[[int, bytes], Any]:
        """A function turning ``(offset, value)`` of this partition into one destination row; it raises
        :class:`ConversionError` for a record that cannot be stored."""

    @abc.abstractmethod
    async def write(self, batches: list[Batch]) -> list[DeadRecord]:
        """Write the batches durably (idempotently); returns rows the destination refused.

        Raises :class:`SinkBackpressureError` when the destination stays unavailable."""

    @abc.abstractmethod
    async def stored_offsets(self, topic: str, partition: int, from_offset: int) -> list[int]:
        """Offsets of ``topic``/``partition`` at or after ``from_offset`` that the destination holds."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    def add(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        self.add_batch(topic, partition, [offset], [value])

    def add_many(self, topic: str, partition: int, records: Iterable[tuple[int, bytes | None]]) -> None:
        """Buffer ``(offset, value)`` records of one partition, in offset order."""
        pairs = list(records)
        self.add_batch(topic, partition, [o for o, _ in pairs], [v for _, v in pairs])

    def add_batch(self, topic: str, partition: int, offsets: Sequence[int], values: Sequence[bytes | None]) -> None:
        """Buffer records of one partition given as parallel sequences in offset order (the hot path: the
        whole list is converted at once by :meth:`convert_batch`; lists are used as they are, not copied)."""
        if not offsets:
            return
        if not isinstance(offsets, list):
            offsets = list(offsets)
        if not isinstance(values, list):
            values = list(values)
        tp = TopicPartition(topic, partition)
        self._next_offsets[tp] = offsets[-1] + 1
        stored = self._stored.get(tp)
        if stored is not None:
            keep = [i for i, o in enumerate(offsets) if o not in stored]
            if offsets[-1] > stored.last:
                del self._stored[tp]
            if len(keep) != len(offsets):
                self.skipped += len(offsets) - len(keep)
                offsets, values = [offsets[i] for i in keep], [values[i] for i in keep]
        if None in values:  # tombstones of a compacted topic: nothing to store
            keep = [i for i, v in enumerate(values) if v is not None]
            self.skipped += len(values) - len(keep)
            offsets, values = [offsets[i] for i in keep], [values[i] for i in keep]
        if not offsets:
            return
        present: list[bytes] = values  # type: ignore[assignment]  # no None left
        kept, rows, dead = self.convert_batch(topic, partition, offsets, present)
        self._dead += dead
        if not rows:
            return
        batch = self._batches.get(tp)
        if batch is None:
            batch = self._batches[tp] = Batch(topic, partition)
        if dead:
            stored_offsets = set(kept)
            size = sum(len(v) for o, v in zip(offsets, present, strict=True) if o in stored_offsets)
        else:
            size = sum(map(len, present))
        batch.offsets += kept
        batch.rows += rows
        batch.size += size
        self.buffered_rows += len(rows)
        self.buffered_bytes += size

    def convert_batch(
        self, topic: str, partition: int, offsets: list[int], values: list[bytes]
    ) -> tuple[list[int], list[Any], list[DeadRecord]]:
        """Convert records of one partition: ``(offsets kept, their rows, dead letters)``. This default
        converts one record at a time with :meth:`converter`; sinks override it to work on the list."""
        convert = self.converter(topic, partition)
        kept: list[int] = []
        rows: list[Any] = []
        dead: list[DeadRecord] = []
        for offset, value in zip(offsets, values, strict=True):
            try:
                rows.append(convert(offset, value))
            except ConversionError as exc:
                dead.append(DeadRecord(topic, partition, offset, value, exc.reason, exc.detail))
                continue
            kept.append(offset)
        return kept, rows, dead

    async def recover(self, tp: TopicPartition, committed: int) -> int:
        """Learn which offsets from ``committed`` on are already stored; returns how many."""
        offsets = await self.stored_offsets(tp.topic, tp.partition, committed)
        if offsets:
            self._stored[tp] = OffsetRanges(offsets)
        else:
            self._stored.pop(tp, None)
        return len(offsets)

    def take_dead(self) -> list[DeadRecord]:
        dead, self._dead = self._dead, []
        return dead

    @property
    def pending(self) -> bool:
        """Whether anything (rows, dead letters, skipped offsets) waits for a flush and commit."""
        return bool(self._next_offsets)

    def checkpoint(self) -> Checkpoint:
        """Detach everything buffered so far (the buffers start empty again) for :meth:`write_checkpoint`."""
        cp = Checkpoint([b for b in self._batches.values() if len(b)], dict(self._next_offsets), self.take_dead())
        self._reset()
        return cp

    async def write_checkpoint(self, cp: Checkpoint) -> Checkpoint:
        """Write a detached checkpoint; refused rows join its dead letters. Its offsets are then safe to
        commit once the dead letters are published."""
        if cp.batches:
            cp.dead += await self.write(cp.batches)
        return cp

    async def flush(self) -> Checkpoint:
        """Write everything buffered; returns the checkpoint (offsets to commit, dead letters to publish)."""
        return await self.write_checkpoint(self.checkpoint())

    def on_paused(self) -> None:
        """Consumption paused (backpressure or revocation): drop the buffers; they are read again."""
        self._reset()
        self._dead.clear()

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Partitions were revoked: drop their buffers and stored-offset knowledge."""
        for tp in partitions:
            batch = self._batches.pop(tp, None)
            if batch is not None:
                self.buffered_rows -= len(batch)
                self.buffered_bytes -= batch.size
            self._next_offsets.pop(tp, None)
            self._stored.pop(tp, None)
        self._dead = [d for d in self._dead if TopicPartition(d.topic, d.partition) not in partitions]

    def _reset(self) -> None:
        self._batches.clear()
        self._next_offsets.clear()
        self.buffered_rows = 0
        self.buffered_bytes = 0
