"""The bar worker's summaries for the feeds worker, shipped on each tick to the internal summaries topic
(:data:`~pipeline.contracts.topics.AGGREGATOR_SUMMARIES`): the feed partials of its partitions, one mid per
market per receipt second for the reference price, and a backlog partial for each market of a partition whose
BBOs are read behind (the reference then waits for those mids instead of calling them stale).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from pipeline.aggregation.bars import EXACT, fmt
from pipeline.aggregation.engine import PartitionAggregator
from pipeline.aggregation.health import FeedStatsCollector
from pipeline.aggregation.reference import asset_of
from pipeline.aggregation.summaries import BacklogPartial, MidPartial, Summary, encode_summary
from pipeline.contracts import Bbo
from pipeline.contracts.topics import AGGREGATOR_SUMMARIES
from pipeline.kafka import RecordProducer

SUMMARY_TOPIC = AGGREGATOR_SUMMARIES.name


def collect_summaries(
    feed: FeedStatsCollector,
    mids: dict[tuple[str, str], list[Bbo]],
    engines: dict[int, PartitionAggregator],
    bbo_unread: Callable[[int, PartitionAggregator], int],
    allowed_lateness_us: int,
    idle_timeout_us: int,
    now: int,
) -> list[tuple[bytes, Summary]]:
    """The summaries of one tick, keyed as the feeds worker partitions them; empties ``mids``."""
    summaries: list[tuple[bytes, Summary]] = [(f"{p.exchange}:{p.stream}".encode(), p) for p in feed.drain()]
    for (exchange, symbol), samples in mids.items():
        asset = asset_of(symbol)
        if asset is not None:
            for bbo in samples:
                mid = EXACT.divide(EXACT.add(Decimal(bbo.bid_price), Decimal(bbo.ask_price)), Decimal(2))
                partial = MidPartial(exchange, symbol, fmt(mid), bbo.ts_event, bbo.ts_recv)
                summaries.append((asset.encode(), partial))
    mids.clear()
    for partition, engine in engines.items():
        unread = bbo_unread(partition, engine)
        newest = engine.bbo_wm.value + allowed_lateness_us  # the newest BBO applied (event time)
        if unread and now - newest > idle_timeout_us:
            # behind, not stopped: the reference waits for these markets' mids instead of calling them stale
            # (a partition that is current has no excuse for a market whose mids stopped)
            for sym in engine.state.symbols.values():
                if (asset := asset_of(sym.symbol)) is not None:
                    summaries.append((asset.encode(), BacklogPartial(sym.exchange, sym.symbol, unread)))
    return summaries


async def ship_summaries(producer: RecordProducer, summaries: list[tuple[bytes, Summary]]) -> None:
    for key, summary in summaries:
        await producer.send_raw(SUMMARY_TOPIC, key, encode_summary(summary))
