"""History from the ClickHouse tables the sink writes: an alert's transitions and notifications, an anomaly
series' points around a time, a market's bars over a range.

Parameterised queries only (``{name:Type}`` placeholders: chdb binds them server-side; with
clickhouse-driver they become ``%(name)s`` parameters the driver escapes); the table names come from the
topic registry. Every query has a bounded time range and a row limit (one more row is fetched to tell a
truncated answer). Conditions and ordering name the table's columns (``t.ts_event``), not the
output aliases of the same name. Times come back as epoch microseconds, decimals as their exact strings.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass
from typing import Any

from pipeline.sinks.schema import table_name

MAX_ROWS = 5_000
MAX_RANGE_US = 31 * 24 * 3600 * 1_000_000  # one query spans at most 31 days

ALERT_TRANSITIONS = """
SELECT fingerprint, rule, state, severity, toUnixTimestamp64Micro(ts_event) AS ts_event, version, actor, comment, value
FROM {table} AS t WHERE _topic = {topic:String} AND fingerprint = {fingerprint:String}
ORDER BY version, t.ts_event LIMIT {limit:UInt32}
"""
ALERT_NOTIFICATIONS = """
SELECT notification_id, channel, receiver, status, attempt, toUnixTimestamp64Micro(ts) AS ts, error
FROM {table} AS t WHERE _topic = {topic:String} AND has(fingerprints, {fingerprint:String})
ORDER BY t.ts LIMIT {limit:UInt32}
"""
ANOMALY_POINTS = """
SELECT series_id, metric, toUnixTimestamp64Micro(ts_event) AS ts_event, value, score, expected, lower, upper, kind,
       time_to_threshold_s
FROM {table} AS t WHERE _topic = {topic:String} AND series_id = {series_id:String}
  AND t.ts_event >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')
  AND t.ts_event < fromUnixTimestamp64Micro({end:Int64}, 'UTC')
ORDER BY t.ts_event LIMIT {limit:UInt32}
"""
BARS = """
SELECT exchange, symbol, interval, toUnixTimestamp64Micro(window_start) AS window_start,
       toUnixTimestamp64Micro(window_end) AS window_end, toString(open) AS open, toString(high) AS high,
       toString(low) AS low, toString(close) AS close, toString(volume) AS volume, toString(vwap) AS vwap, trade_count
FROM {table} AS t WHERE _topic = {topic:String} AND exchange = {exchange:String} AND symbol = {symbol:String}
  AND t.window_start >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')
  AND t.window_start < fromUnixTimestamp64Micro({end:Int64}, 'UTC')
ORDER BY t.window_start LIMIT {limit:UInt32}
"""


class HistoryUnavailable(Exception):
    """The ClickHouse tables could not be read (database down, table missing); the routes answer 503."""


@dataclass
class Rows:
    columns: list[str]
    rows: list[dict[str, Any]]
    truncated: bool


_PLACEHOLDER = re.compile(r"\{(\w+):[^}]+\}")


class History:
    def __init__(self, clickhouse_url: str, topic_prefix: str = ""):
        self.url = clickhouse_url
        self.prefix = topic_prefix
        self._lock = threading.Lock()
        self._conn: Any = None

    def _query(self, sql: str, params: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._lock:
            if self.url.startswith("chdb://"):
                return self._query_chdb(sql, params)
            return self._query_server(sql, params)

    def _query_chdb(self, sql: str, params: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        import json

        import chdb

        from pipeline.sinks.chdb_backend import chdb_path

        # a connection per query: chdb binds one engine per process to one path, and a connection held open
        # would keep it (history queries are rare; the connect costs far less than the query)
        conn = chdb.connect(chdb_path(self.url))
        try:
            params = {k: _escaped(v) if isinstance(v, str) else v for k, v in params.items()}
            result = conn.query(
                sql + " SETTINGS output_format_json_quote_64bit_integers = 0", "JSONCompact", params=params
            )
        finally:
            conn.close()
        doc = json.loads(str(result) or '{"meta": [], "data": []}')
        return [m["name"] for m in doc["meta"]], [tuple(row) for row in doc["data"]]

    def _query_server(self, sql: str, params: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        from clickhouse_driver import Client

        if self._conn is None:
            self._conn = Client.from_url(self.url)
        rows, columns = self._conn.execute(_PLACEHOLDER.sub(r"%(\1)s", sql), params, with_column_types=True)
        return [name for name, _ in columns], rows

    async def rows(self, template: str, topic: str, limit: int, **params: Any) -> Rows:
        sql = template.replace("{table}", f"`{table_name(topic)}`")
        bound = params | {"topic": f"{self.prefix}{topic}", "limit": min(limit, MAX_ROWS) + 1}
        try:
            columns, rows = await asyncio.to_thread(self._query, sql, bound)
        except Exception as exc:  # chdb raises RuntimeError, the driver its own errors: all mean "no history now"
            raise HistoryUnavailable(_short(exc)) from None
        truncated = len(rows) > min(limit, MAX_ROWS)
        rows = rows[: min(limit, MAX_ROWS)]
        return Rows(columns, [dict(zip(columns, row, strict=True)) for row in rows], truncated)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.disconnect()
            self._conn = None


def _escaped(value: str) -> str:
    """A string parameter in ClickHouse's escaped (TSV) form, which chdb parses parameter values from."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "EmbeddedServer" in text:  # chdb: one process per database path, and the sink holds it
        return "the embedded chdb database is open in another process (the sink); history needs a ClickHouse server"
    return re.sub(r"://[^@/\s]*@", "://***@", text)[:300]  # never a credential of the URL
