"""Helpers of the sink tests: generated record variations, producing them, reading chdb back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec

from pipeline.contracts import Record, encode, load_registry
from pipeline.contracts.examples import EXAMPLES
from pipeline.kafka import make_producer
from pipeline.settings import Settings
from pipeline.sinks.schema import decimal_fields

PRICES = ("0.000000000000000001", "99999999999999999999.999999999999999999", "36512.01000000", "0.1", "-5.25")


def _vary(value: Any, i: int, name: str, shape: str | None) -> Any:
    if shape == "value" or (shape == "optional" and value is not None):
        return PRICES[i % len(PRICES)] if i % 3 == 0 else f"{Decimal(value) + Decimal(i) / 1000}"
    if shape == "levels":
        return [(PRICES[(i + k) % len(PRICES)], f"{k}.{i:03d}") for k in range(1 + i % 3)]
    if shape == "map":
        return {f"v{k}": PRICES[(i + k) % len(PRICES)] for k in range(2)}
    if name in ("ts_event", "ts_recv", "ts", "window_start", "created_at", "starts_at"):
        return value + i * 1_000_003
    if name in ("window_end", "ends_at"):
        return value + i * 1_000_003
    if name in ("trade_id", "notification_id", "fingerprint", "silence_id", "action_id", "series_id"):
        return f"{value}-{i}"
    return value


def variations(record_type: type[Record], n: int) -> list[Record]:
    """``n`` distinct valid records of a type, derived from its example (decimals at the column limits)."""
    example = EXAMPLES[record_type]
    shapes = dict(decimal_fields(record_type))
    out = []
    for i in range(n):
        changes = {f: _vary(getattr(example, f), i, f, shapes.get(f)) for f in record_type.__struct_fields__}
        out.append(msgspec.structs.replace(example, **changes))
    return out


def corpus(per_topic: int) -> dict[str, list[Record]]:
    """Generated records for every registry topic the sink stores that has an example."""
    return {
        t.name: variations(t.record_type, per_topic) for t in load_registry() if t.sink and t.record_type in EXAMPLES
    }


async def produce(
    settings: Settings, records: dict[str, list[Record]], extra: dict[str, list[bytes]] | None = None
) -> None:
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for topic, items in records.items():
            for i, record in enumerate(items):
                await producer.send(settings.topic(topic), encode(record), key=f"k{i % 7}".encode())
        for topic, values in (extra or {}).items():
            for value in values:
                await producer.send(settings.topic(topic), value, key=b"bad")
        await producer.flush()
    finally:
        await producer.stop()


@contextlib.contextmanager
def chdb_conn(path: str) -> Iterator[Any]:
    import chdb

    conn = chdb.connect(path)
    try:
        yield conn
    finally:
        conn.close()


def rows(path: str, sql: str) -> list[list[str]]:
    with chdb_conn(path) as conn:
        return [line.split("\t") for line in str(conn.query(sql, "TabSeparated")).splitlines() if line]


async def wait_for(predicate: Any, limit_s: float = 120.0, interval: float = 0.5) -> bool:
    """Poll ``predicate`` (a coroutine function) until true or ``limit_s`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return bool(await predicate())
