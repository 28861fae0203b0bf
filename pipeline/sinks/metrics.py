"""Prometheus metrics of the sinks (served on the process's ``/metrics``)."""

from __future__ import annotations

from pipeline.observability.metrics import counter, gauge, histogram

ROWS_WRITTEN = counter("sink_rows_written_total", "Rows inserted into ClickHouse", ["table"])
INSERTS = counter("sink_inserts_total", "Insert statements by outcome", ["table", "outcome"])
INSERT_SECONDS = histogram(
    "sink_insert_seconds",
    "Time of one insert statement",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SKIPPED = counter("sink_skipped_records_total", "Records skipped because ClickHouse already holds them", ["topic"])
CONSUMED = counter("sink_consumed_records_total", "Records read from Kafka", ["topic"])
DEAD = counter("sink_dead_records_total", "Records sent to ops.dlq.v1 by the sink", ["topic", "reason"])
RETRIES = counter("sink_retries_total", "Write attempts retried after a transient failure", ["table"])
BACKPRESSURE = counter("sink_backpressure_total", "Times consumption paused because ClickHouse was unavailable")
COMMITS = counter("sink_commits_total", "Offset commits after successful writes")
BUFFERED_ROWS = gauge("sink_buffered_rows", "Rows buffered, not yet written")
PAUSED = gauge("sink_paused", "1 while consumption is paused for backpressure")
LAG = gauge("sink_consumer_lag_records", "Records behind the partition high watermark", ["topic"])
FLUSH_SECONDS = histogram(
    "sink_flush_seconds", "Time of one flush (all inserts and the commit)", buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30)
)
