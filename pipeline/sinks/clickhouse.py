"""What both ClickHouse backends share: one table per registry topic, validation of each record against
its contract (bad ones become dead letters), idempotent batch writes and recovery of stored offsets.

A write of one flush is one ``INSERT`` per table carrying an ``insert_deduplication_token`` built from
each batch's topic-partition-first-last offsets, so an identical retry is discarded by the table
(``non_replicated_deduplication_window``). A write that fails ambiguously (the connection dropped)
is retried with capped, jittered backoff (tenacity); before each retry the sink asks the table which
of the batch's offsets it already holds and sends only the rest, which keeps servers without
deduplication tokens exact too. Rows the table refuses (a parse error) are found by halving the
batch and become dead letters; the rest goes on.
"""

from __future__ import annotations

import abc
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any

import msgspec
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from pipeline.contracts import Record, TopicRegistry, decoder_for
from pipeline.sinks import metrics
from pipeline.sinks.base import (
    Batch,
    BatchingSink,
    ConversionError,
    DeadRecord,
    RejectedError,
    SinkBackpressureError,
    UnavailableError,
)
from pipeline.sinks.migrations import managed_topics, migrate, stored_names
from pipeline.sinks.schema import (
    DECIMAL_INT_DIGITS,
    Table,
    decimal_fields,
    decimal_fits,
    oversized_decimals,
    qualified,
    table_for,
)
from pipeline.sinks.validation import ListValidator

log = logging.getLogger(__name__)

# ClickHouse error codes that mean "these rows cannot be stored as they are" (not worth a retry).
DATA_ERROR_CODES = frozenset({6, 26, 27, 32, 38, 41, 53, 69, 70, 72, 117, 131, 321, 407, 691})


class ClickHouseSink(BatchingSink):
    """Stores every registry topic that has a table; backends implement the I/O primitives."""

    def __init__(
        self,
        registry: TopicRegistry,
        topic_prefix: str = "",
        database: str = "",
        *,
        run_migrations: bool = True,
        retry_window_s: float = 10.0,
        max_backoff_s: float = 5.0,
        skip_topics: Iterable[str] = (),
    ):
        super().__init__()
        self.database = database
        self.run_migrations = run_migrations
        self.retry_window_s = retry_window_s
        self.max_backoff_s = max_backoff_s
        self._registry = registry
        managed = managed_topics() & stored_names(registry)
        self.skipped_topics = sorted({t.name for t in registry if not t.sink} | set(skip_topics))
        self.tables: dict[str, Table] = {
            f"{topic_prefix}{t.name}": table_for(t)
            for t in registry
            if t.name in managed and t.name not in self.skipped_topics
        }
        self._decoders = {name: decoder_for(t.record_type) for name, t in self.tables.items()}
        self._decimals = {name: decimal_fields(t.record_type) for name, t in self.tables.items()}
        self._validators = {name: ListValidator(t.record_type) for name, t in self.tables.items()}
        self.rows_written = 0

    # ---- backend primitives

    @abc.abstractmethod
    async def execute(self, sql: str) -> None:
        """Run one statement; raises :class:`UnavailableError` or :class:`RejectedError`."""

    @abc.abstractmethod
    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one query and return its rows."""

    @abc.abstractmethod
    def row_maker(self, table: Table, topic: str, partition: int) -> Callable[[Record, int, bytes], Any]:
        """The backend's ``(record, offset, value) -> row`` for one partition of one table."""

    @abc.abstractmethod
    async def insert(self, table: Table, rows: list[Any], token: str) -> None:
        """Insert ``rows`` in one statement with the deduplication token."""

    # ---- the sink protocol

    async def setup(self) -> None:
        if self.run_migrations:
            for line in await migrate(self, self._registry):
                log.info("migrated: %s", line)

    def converter(self, topic: str, partition: int) -> Callable[[int, bytes], Any]:
        table = self.tables.get(topic)
        if table is None:
            return _no_table(topic)
        decode = self._decoders[topic].decode
        fields = self._decimals[topic]
        plain = tuple(name for name, shape in fields if shape == "value")
        nested = tuple((name, shape) for name, shape in fields if shape != "value")
        make_row = self.row_maker(table, topic, partition)

        def convert(offset: int, value: bytes) -> Any:
            try:
                record = decode(value)
            except msgspec.DecodeError as exc:
                raise ConversionError("invalid_record", str(exc)) from exc
            for name in plain:  # the common case, inline: only long strings can be out of range
                text = getattr(record, name)
                if len(text) > DECIMAL_INT_DIGITS and not decimal_fits(text):
                    raise ConversionError("decimal_out_of_range", f"Decimal(38, 18) cannot hold {name}={text} exactly")
            if nested and (bad := oversized_decimals(record, nested)):
                raise ConversionError("decimal_out_of_range", f"Decimal(38, 18) cannot hold {bad[:3]} exactly")
            return make_row(record, offset, value)

        return convert

    def convert_batch(
        self, topic: str, partition: int, offsets: list[int], values: list[bytes]
    ) -> tuple[list[int], list[Any], list[DeadRecord]]:
        """The whole list at once: decode every value (the contract's validation, string patterns
        checked per column by :class:`~pipeline.sinks.validation.ListValidator`), check decimal
        ranges column by column (only strings longer than 20 characters can be out of range), then let
        the backend build the rows in one pass. Any record that fails sends the list through the
        one-at-a-time path, which isolates it as a dead letter."""
        table = self.tables.get(topic)
        if table is None:
            return super().convert_batch(topic, partition, offsets, values)
        records = self._validators[topic].decode_all(values)
        if records is None:
            return super().convert_batch(topic, partition, offsets, values)
        fields = self._decimals[topic]
        for name, shape in fields:
            if shape == "value":
                if max(map(len, map(attrgetter(name), records))) > DECIMAL_INT_DIGITS:
                    return super().convert_batch(topic, partition, offsets, values)
            elif any(oversized_decimals(r, ((name, shape),)) for r in records):
                return super().convert_batch(topic, partition, offsets, values)
        try:
            rows = self.rows_for(table, topic, partition, records, offsets, values)
        except ConversionError:
            return super().convert_batch(topic, partition, offsets, values)
        return offsets, rows, []

    def rows_for(
        self, table: Table, topic: str, partition: int, records: list[Record], offsets: list[int], values: list[bytes]
    ) -> list[Any]:
        """Rows of validated records; backends with a faster whole-list path override this."""
        make_row = self.row_maker(table, topic, partition)
        return [make_row(r, o, v) for r, o, v in zip(records, offsets, values, strict=True)]

    def payload_of(self, row: Any) -> bytes:
        """What a dead letter carries for a row the table refused (backends keep the Kafka value if they can)."""
        return row if isinstance(row, bytes) else repr(row).encode()

    async def stored_offsets(self, topic: str, partition: int, from_offset: int) -> list[int]:
        table = self.tables[topic]
        rows = await self._with_retry(
            table,
            lambda: self.fetch(
                f"SELECT _offset FROM {qualified(self.database, table.name)} "  # noqa: S608 - identifiers come from code and the topic registry, numbers are ints; no user text
                f"WHERE _topic = '{topic}' AND _partition = {partition} AND _offset >= {from_offset}"
            ),
        )
        return [int(r[0]) for r in rows]

    async def write(self, batches: list[Batch]) -> list[DeadRecord]:
        by_table: dict[str, list[Batch]] = defaultdict(list)
        for batch in batches:
            by_table[batch.topic].append(batch)
        refused: list[DeadRecord] = []
        for topic, group in by_table.items():
            await self._write_table(self.tables[topic], group, refused)
        return refused

    # ---- internals

    async def _with_retry(self, table: Table, attempt: Any) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(UnavailableError),
            wait=wait_exponential_jitter(initial=0.1, max=self.max_backoff_s),
            stop=stop_after_delay(self.retry_window_s),
            reraise=True,
            before_sleep=lambda state: self._retrying(table, state),
        )
        try:
            async for try_ in retrying:
                with try_:
                    return await attempt()
        except UnavailableError as exc:
            raise SinkBackpressureError(random.uniform(0.5, 1.0) * self.max_backoff_s, str(exc)) from exc  # noqa: S311 - simulation/jitter randomness, not security

    def _retrying(self, table: Table, state: Any) -> None:
        metrics.RETRIES.labels(table=table.name).inc()
        log.warning("ClickHouse write to %s failed (%s); retrying", table.name, state.outcome.exception())

    async def _write_table(self, table: Table, batches: list[Batch], refused: list[DeadRecord]) -> None:
        first_try = True

        async def attempt() -> None:
            nonlocal first_try
            pending = batches if first_try else await self._unstored(batches)
            first_try = False
            await self._insert_or_split(table, pending, refused)

        await self._with_retry(table, attempt)

    async def _unstored(self, batches: list[Batch]) -> list[Batch]:
        """The part of each batch the table does not hold yet (after an ambiguous failure)."""
        result = []
        for batch in batches:
            table = self.tables[batch.topic]
            rows = await self.fetch(
                f"SELECT _offset FROM {qualified(self.database, table.name)} WHERE _topic = '{batch.topic}' "  # noqa: S608 - identifiers come from code and the topic registry, numbers are ints; no user text
                f"AND _partition = {batch.partition} AND _offset BETWEEN {batch.first} AND {batch.last}"
            )
            stored = {int(r[0]) for r in rows}
            if stored:
                metrics.SKIPPED.labels(topic=batch.topic).inc(len(stored))
                log.info(
                    "%s[%d]: %d of %d rows were already stored", batch.topic, batch.partition, len(stored), len(batch)
                )
            rest = batch.without(stored)
            if len(rest):
                result.append(rest)
        return result

    async def _insert_or_split(self, table: Table, batches: list[Batch], refused: list[DeadRecord]) -> None:
        rows = [row for b in batches for row in b.rows]
        if not rows:
            return
        token = ",".join(f"{b.topic}:{b.partition}:{b.first}-{b.last}" for b in batches)
        started = time.perf_counter()
        try:
            await self.insert(table, rows, token)
        except RejectedError as exc:
            metrics.INSERTS.labels(table=table.name, outcome="rejected").inc()
            if len(rows) == 1:
                b = batches[0]
                refused.append(
                    DeadRecord(b.topic, b.partition, b.first, self.payload_of(b.rows[0]), "insert_rejected", str(exc))
                )
                return
            for half in _halves(batches):
                await self._insert_or_split(table, half, refused)
            return
        except UnavailableError:
            metrics.INSERTS.labels(table=table.name, outcome="unavailable").inc()
            raise
        metrics.INSERT_SECONDS.labels(table=table.name).observe(time.perf_counter() - started)
        metrics.INSERTS.labels(table=table.name, outcome="ok").inc()
        metrics.ROWS_WRITTEN.labels(table=table.name).inc(len(rows))
        self.rows_written += len(rows)


def _no_table(topic: str) -> Callable[[int, bytes], Any]:
    def convert(offset: int, value: bytes) -> Any:
        raise ConversionError("no_table", f"topic {topic} has no ClickHouse table")

    return convert


def _halves(batches: list[Batch]) -> list[list[Batch]]:
    """Split a list of batches into two halves by row count (splitting one batch when needed)."""
    if len(batches) > 1:
        mid = len(batches) // 2
        return [batches[:mid], batches[mid:]]
    b = batches[0]
    mid = len(b) // 2
    return [
        [Batch(b.topic, b.partition, b.offsets[:mid], b.rows[:mid])],
        [Batch(b.topic, b.partition, b.offsets[mid:], b.rows[mid:])],
    ]
