"""Unit tests of the runtime's pure parts: backoff, watchdog (virtual clock) and trade dedup."""

from __future__ import annotations

import asyncio
import bisect

import pytest

from pipeline.backoff import Backoff
from pipeline.collectors.base import KeepAlive
from pipeline.collectors.dedup import TradeDedup
from pipeline.collectors.watchdog import Watchdog, WatchdogTimeout
from pipeline.contracts import Trade


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    draws: list[tuple[float, float]] = []

    def top(low: float, high: float) -> float:
        draws.append((low, high))
        return high

    backoff = Backoff(base_s=0.5, cap_s=8.0, uniform=top)
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert all(low == 0.0 for low, _ in draws)  # full jitter: every draw starts at zero
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_draws_come_from_the_injected_random() -> None:
    backoff = Backoff(base_s=1.0, cap_s=30.0, uniform=lambda low, high: low + 0.25 * (high - low))
    assert [backoff.next_delay() for _ in range(3)] == [0.25, 0.5, 1.0]
    assert Backoff(1.0, 30.0).ceiling(1000) == 30.0  # no overflow for huge attempt counts
    with pytest.raises(ValueError):
        Backoff(base_s=2.0, cap_s=1.0)


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_watchdog_times_out_when_pings_go_unanswered() -> None:
    clock = VirtualClock()
    dog = Watchdog(KeepAlive(ping_frame="ping", interval_s=20, pong_timeout_s=5), clock, clock.sleep)
    pings: list[float] = []

    async def ping() -> None:
        pings.append(clock.now)

    with pytest.raises(WatchdogTimeout, match="no pong or frame within 5s"):
        await dog.run(ping)
    assert pings == [20.0]
    assert clock.now == 25.0


async def test_watchdog_keeps_going_while_pongs_arrive_then_trips_on_silence() -> None:
    clock = VirtualClock()
    dog = Watchdog(KeepAlive(ping_frame=None, interval_s=10, pong_timeout_s=3), clock, clock.sleep)
    answered = 0

    async def ping() -> None:
        nonlocal answered
        if answered < 4:  # the peer answers four pings, then goes silent
            answered += 1
            clock.now += 1
            dog.alive()

    with pytest.raises(WatchdogTimeout):
        await dog.run(ping)
    assert dog.pings == 5


async def test_watchdog_counts_data_frames_as_life() -> None:
    clock = VirtualClock()
    dog = Watchdog(KeepAlive(ping_frame=None, interval_s=10, pong_timeout_s=3), clock, clock.sleep)
    frames = 0

    async def ping() -> None:
        nonlocal frames
        if frames < 2:
            frames += 1
            clock.now += 2.9  # a data frame arrives just inside the timeout
            dog.alive()

    with pytest.raises(WatchdogTimeout):
        await dog.run(ping)
    assert dog.pings == 3


def _trade(trade_id: str, symbol: str = "BTC-USD") -> Trade:
    return Trade(
        exchange="kraken",
        symbol=symbol,
        raw_symbol=symbol,
        trade_id=trade_id,
        price="1.0",
        size="2",
        side="buy",
        ts_event=1,
        ts_recv=2,
    )


def test_dedup_passes_first_copies_only_per_symbol() -> None:
    dedup = TradeDedup(capacity=100)
    assert dedup.first_time(_trade("1"))
    assert not dedup.first_time(_trade("1"))
    assert dedup.first_time(_trade("1", "ETH-USD"))  # ids are per symbol
    assert dedup.duplicates == 1


def test_dedup_memory_is_bounded_and_forgets_the_oldest() -> None:
    dedup = TradeDedup(capacity=3)
    for n in range(10):
        assert dedup.first_time(_trade(str(n)))
    assert dedup.remembered("kraken", "BTC-USD") == 3
    assert not dedup.first_time(_trade("9"))
    assert dedup.first_time(_trade("0"))  # forgotten: evicted long ago


def test_the_runtime_record_check_is_the_contract_except_level_patterns() -> None:
    """The runtime re-checks every field of what it publishes; the levels' decimal pattern is checked
    once, on input, by the venue modules (the fuzz and capture tests hold their records to the full
    contract)."""
    import msgspec

    from pipeline.collectors.runtime import checker_for
    from pipeline.contracts import BookUpdate, DecodeError, decode, decoder_for, encode

    def book(**changes: object) -> bytes:
        fields: dict[str, object] = dict(
            exchange="okx",
            symbol="BTC-USDT",
            raw_symbol="BTC-USDT",
            kind="delta",
            bids=[("1.5", "2")],
            asks=[],
            ts_event=1,
            ts_recv=2,
            seq_last=7,
        )
        return encode(BookUpdate(**(fields | changes)))  # type: ignore[arg-type]

    check = checker_for(BookUpdate)
    assert msgspec.structs.asdict(check.decode(book())) == msgspec.structs.asdict(decode(BookUpdate, book()))
    for bad in (
        {"symbol": "BTCUSDT"},
        {"exchange": "nyse"},
        {"kind": "full"},
        {"ts_event": -1},
        {"bids": [("1.5", 2)]},
        {"asks": [("1.5",)]},
        {"seq_last": "7"},
    ):
        with pytest.raises(DecodeError):
            check.decode(book(**bad))
    assert check.decode(book(bids=[("1e5", "2")])).bids == [("1e5", "2")]  # the pattern is the venue's check
    with pytest.raises(DecodeError):
        decode(BookUpdate, book(bids=[("1e5", "2")]))
    assert checker_for(Trade) is decoder_for(Trade)  # other records: the full contract


async def test_the_producer_partitions_exactly_like_aiokafkas_default() -> None:
    """``make_producer``'s partitioner memoises key hashes (the collector's keys repeat); the partition
    of every key is the default partitioner's, so records of one market stay in order on one partition."""
    from aiokafka.partitioner import DefaultPartitioner

    from pipeline.kafka.clients import make_record_producer
    from pipeline.kafka.producer import KeyHashPartitioner
    from pipeline.settings import KafkaSettings

    memo = KeyHashPartitioner(capacity=64)
    for count in (1, 3, 4, 12):
        partitions = list(range(count))
        for n in range(300):  # past the capacity: the memo starts over, the answers do not change
            key = f"binance:SYM{n % 150}-USDT".encode()
            assert memo(key, partitions, partitions) == DefaultPartitioner()(key, partitions, partitions)
    assert len(memo._hashes) <= 64
    assert {memo(None, [0, 1, 2], [2]) for _ in range(20)} == {2}  # no key: a random available partition
    records = make_record_producer(KafkaSettings())  # picks partitions with the producer's own partitioner
    assert isinstance(records._partitioner, KeyHashPartitioner)
    assert records._partitioner is records._producer._partitioner


def test_the_latency_histogram_exposes_what_the_library_histogram_would() -> None:
    """``LatencyHistograms`` (plain-list counting, exposed through the custom-collector API) against a
    ``prometheus_client.Histogram`` with the same buckets fed the same lags: same samples and values."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from pipeline.collectors.metrics import LATENCY_BUCKETS, LatencyHistograms

    lags_us = [
        -5,
        0,
        999,
        1000,
        1001,
        4_999,
        5_000,
        250_000,
        999_999,
        1_000_000,
        59_999_999,
        60_000_000,
        60_000_001,
        3_600_000_000,
    ]
    ours, registry = LatencyHistograms(), CollectorRegistry()
    registry.register(ours)  # type: ignore[arg-type]
    library = Histogram(
        "collector_latency_seconds",
        LatencyHistograms.documentation,
        ["exchange", "stream"],
        namespace="marketprism",
        buckets=LATENCY_BUCKETS,
        registry=None,
    )
    quiet = ours.series("okx", "bbo")  # a declared stream reports zeros, as a library child would
    library.labels("okx", "bbo")
    counts = ours.series("kraken", "book")
    for lag in lags_us:
        seconds = lag / 1e6
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # what FeedStats.lag does
        counts[-1] += seconds
        library.labels("kraken", "book").observe(seconds)
    assert quiet == [0.0] * (len(LATENCY_BUCKETS) + 2)

    def samples(text: bytes) -> list[str]:
        return sorted(line for line in text.decode().splitlines() if "_created" not in line)

    expected = CollectorRegistry()
    expected.register(library)
    assert samples(generate_latest(registry)) == samples(generate_latest(expected))


def test_feed_stats_count_lags_into_the_latency_histogram() -> None:
    from pipeline.collectors.metrics import LATENCY, LATENCY_BUCKETS, FeedStats

    stats = FeedStats("binance_usdm")
    before = list(LATENCY.series("binance_usdm", "lag-test"))
    for lag in (500, 2_000, 70_000_000):
        stats.lag("lag-test", lag)
    after = LATENCY.series("binance_usdm", "lag-test")
    added = [b - a for a, b in zip(before, after, strict=True)]
    assert added[0] == 1 and added[1] == 1 and added[len(LATENCY_BUCKETS)] == 1  # le=0.001, le=0.005, +Inf
    assert sum(added[:-1]) == 3 and added[-1] == pytest.approx(70.0025)
