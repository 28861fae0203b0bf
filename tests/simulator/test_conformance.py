"""The simulator's frames decoded by the collectors' real venue modules (the consumers).

The default scenario is played through every venue module in memory (see ``conftest``): books and
checksums hold everywhere except where an incident says otherwise, each sequence-gap and
bad-checksum incident makes the venue module report exactly one gap / checksum failure (and one
resync) for the affected symbol, every delivered trade decodes, and only malformed frames fail.
"""

from __future__ import annotations

from collections import Counter

from pipeline.contracts import BookUpdate, Funding, Liquidation, OpenInterest, Trade
from pipeline.simulator.instruments import instrument


def nonzero(counter: Counter[tuple[str, str]]) -> dict[tuple[str, str], int]:
    return {key: n for key, n in counter.items() if n}


def test_gaps_and_checksum_failures_only_where_labelled(default_run) -> None:  # type: ignore[no-untyped-def]
    driver, tally = default_run
    labels = driver.engine.labels
    expect_gaps = {(lb.venue, lb.raw_symbol): 1 for lb in labels if lb.kind == "sequence_gap"}
    expect_checksums = {(lb.venue, lb.raw_symbol): 1 for lb in labels if lb.kind == "bad_checksum"}
    assert expect_gaps and expect_checksums
    assert nonzero(tally.gaps) == expect_gaps
    assert nonzero(tally.checksum_failures) == expect_checksums
    assert nonzero(tally.resyncs) == {**expect_gaps, **expect_checksums}


def test_every_delivered_trade_decodes_once(default_run) -> None:  # type: ignore[no-untyped-def]
    driver, tally = default_run
    for venue in driver.venues:
        assert tally.trades_delivered[venue], venue
        assert tally.trade_ids(venue) == tally.trades_delivered[venue], venue
    # live updates carry each trade once; only snapshots after a (re)subscribe repeat recent ones
    repeats = Counter(f"{r.exchange}:{r.trade_id}" for r in tally.records if isinstance(r, Trade))
    assert {k.split(":")[0] for k, n in repeats.items() if n > 1} <= {"kraken"}  # the storm's reconnects


def test_only_malformed_frames_fail(default_run) -> None:  # type: ignore[no-untyped-def]
    _, tally = default_run
    assert tally.malformed_delivered
    assert dict(tally.frame_errors) == dict(tally.malformed_delivered)
    assert tally.subscription_errors == []


def test_every_record_kind_flows(default_run) -> None:  # type: ignore[no-untyped-def]
    _, tally = default_run
    kinds = Counter((type(r).__name__, r.exchange) for r in tally.records)
    for venue in ("binance", "binance_usdm", "okx", "coinbase", "kraken"):
        assert kinds[("Trade", venue)] and kinds[("BookUpdate", venue)] and kinds[("Bbo", venue)], venue
    for record_type, venue in [(Funding, "binance_usdm"), (Funding, "okx"), (OpenInterest, "okx"),
                               (Liquidation, "binance_usdm"), (Liquidation, "okx")]:  # fmt: skip
        assert kinds[(record_type.__name__, venue)], (record_type, venue)
    snapshots = [r for r in tally.records if isinstance(r, BookUpdate) and r.kind == "snapshot"]
    assert {r.exchange for r in snapshots} == {"binance", "binance_usdm", "okx", "coinbase", "kraken"}


def test_books_end_where_the_simulator_left_them(default_run) -> None:  # type: ignore[no-untyped-def]
    driver, tally = default_run
    protocols = driver.engine.protocols
    for m in driver.engine.markets:
        venue, raw = m.inst.venue, m.inst.raw
        bbo = tally.last_bbo(venue, raw)
        assert bbo is not None, (venue, raw)
        (bid, bid_size), (ask, ask_size) = m.book.best()
        proto = protocols[venue]
        expected = (proto.px(m, bid), proto.qty(m, bid_size), proto.px(m, ask), proto.qty(m, ask_size))  # type: ignore[attr-defined]
        assert (bbo.bid_price, bbo.bid_size, bbo.ask_price, bbo.ask_size) == expected, (venue, raw)
        assert instrument(venue, m.inst.symbol).raw == raw
