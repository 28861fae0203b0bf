"""The naive baseline of ``marketprism bench aggregate``: one Faust event per trade, each updating a
Faust windowed table (the design DESIGN.md measured at ~3k events/s). Run as a worker process:
``python -m pipeline.bench.naive worker``."""

from __future__ import annotations

import faust

from pipeline.contracts import Trade, decoder_for
from pipeline.contracts.topics import TRADES
from pipeline.kafka.faust_app import create_app
from pipeline.observability.metrics import counter, serve_metrics
from pipeline.settings import Settings, load_settings

NAIVE_APP_ID = "aggregator-naive"
NAIVE_TRADES = counter("aggregation_naive_trades_total", "Trades the naive per-event agent applied")


def build_naive_app(settings: Settings) -> faust.App:
    # windowed-table changelog keys are (key, window) tuples: JSON for the tables, raw for the input
    app = create_app(settings, NAIVE_APP_ID, topic_partitions=6, key_serializer="json", value_serializer="json")
    volume = app.Table("naive-volume", default=float, partitions=6).tumbling(1.0)
    decoder = decoder_for(Trade)

    source = app.topic(settings.topic(TRADES.name), key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="naive-bars")
    async def per_event(stream: faust.StreamT) -> None:
        async for event in stream.events():
            trade = decoder.decode(event.message.value)
            volume[f"{trade.exchange}:{trade.symbol}"] += float(trade.size)
            NAIVE_TRADES.inc()

    return app


if __name__ == "__main__":
    settings = load_settings()
    serve_metrics(settings.metrics_port, addr="127.0.0.1")
    build_naive_app(settings).main()
