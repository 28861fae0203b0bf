"""Hand-written frames for what no capture covers: OKX seqId chains, Kraken v2 books and checksums,
Binance USD-M routed endpoints, Coinbase sequence gaps, and the frames every venue sends and reads."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest

from pipeline.collectors.base import ConnectionPlan, FrameError, RestRequest, SubscriptionError
from pipeline.collectors.venues import VENUES, Binance, BinanceUsdm, Coinbase, Kraken, KrakenV1, Okx
from pipeline.contracts import Bbo, BookUpdate, Funding, Liquidation, OpenInterest, Trade, decode, encode

PLAN = ConnectionPlan("test-0", "wss://example", (), (), ())


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def roundtrip(records: list[Any]) -> None:
    for record in records:
        assert decode(type(record), encode(record)) == record


def test_registry_has_every_venue() -> None:
    assert set(VENUES) == {"binance", "binance_usdm", "okx", "coinbase", "kraken"}
    assert VENUES["kraken"] is Kraken and Kraken.api_version == "v2" and KrakenV1.api_version == "v1"


# ---- OKX ---------------------------------------------------------------------------------------


def okx_crc(bids: list[list[str]], asks: list[list[str]]) -> int:
    parts = []
    for i in range(25):
        if i < len(bids):
            parts += bids[i][:2]
        if i < len(asks):
            parts += asks[i][:2]
    value = zlib.crc32(":".join(parts).encode())
    return value - 2**32 if value > 2**31 - 1 else value


def okx_book(action: str, bids: list[list[str]], asks: list[list[str]], seq: int, prev: int, checksum: int = 0) -> str:
    data = {"asks": asks, "bids": bids, "ts": "1700000000123", "checksum": checksum, "seqId": seq, "prevSeqId": prev}
    return dumps({"arg": {"channel": "books", "instId": "BTC-USDT-SWAP"}, "action": action, "data": [data]})


def test_okx_seqid_chain_keepalive_reset_and_gap() -> None:
    venue = Okx(["BTC-USDT-PERP", "ETH-USDT"])
    bids, asks = [["100.5", "2", "0", "1"], ["100", "1", "0", "1"]], [["101", "3", "0", "2"]]
    snap = venue.on_frame(okx_book("snapshot", bids, asks, 10, -1, okx_crc(bids, asks)), 1, PLAN)
    update = snap.records[0]
    assert isinstance(update, BookUpdate) and update.kind == "snapshot" and update.seq_last == 10
    assert update.prev_seq is None and update.symbol == "BTC-USDT-PERP" and update.raw_symbol == "BTC-USDT-SWAP"
    bbo = snap.records[1]
    assert isinstance(bbo, Bbo) and (bbo.bid_price, bbo.ask_price, bbo.ts_event) == ("100.5", "101", 1700000000123000)

    after = [["100.5", "2", "0", "1"], ["100.2", "4", "0", "1"], ["100", "1", "0", "1"]]
    ok = venue.on_frame(okx_book("update", [["100.2", "4", "0", "1"]], [], 15, 10, okx_crc(after, asks)), 2, PLAN)
    assert ok.gaps == 0 and [type(r) for r in ok.records] == [BookUpdate]  # top unchanged: no Bbo
    assert (ok.records[0].seq_first, ok.records[0].prev_seq) == (15, 10)
    keepalive = venue.on_frame(okx_book("update", [], [], 15, 15), 3, PLAN)
    assert keepalive.gaps == 0
    reset = venue.on_frame(okx_book("update", [], [["101", "0", "0", "0"], ["102", "1", "0", "1"]], 3, 15), 4, PLAN)
    assert reset.gaps == 0 and isinstance(reset.records[-1], Bbo) and reset.records[-1].ask_price == "102"

    gap = venue.on_frame(okx_book("update", [["99", "1", "0", "1"]], [], 30, 20), 5, PLAN)
    assert (gap.gaps, gap.resyncs, gap.records) == (1, 1, [])
    assert [json.loads(f) for f in gap.resubscribe] == [
        {"op": "unsubscribe", "args": [{"channel": "books", "instId": "BTC-USDT-SWAP"}]},
        {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT-SWAP"}]},
    ]
    ignored = venue.on_frame(okx_book("update", [["98", "1", "0", "1"]], [], 31, 30), 6, PLAN)
    assert ignored.records == [] and ignored.gaps == 0
    again = venue.on_frame(okx_book("snapshot", bids, asks, 40, -1), 7, PLAN)
    assert again.records[0].resync is True and again.records[0].kind == "snapshot"


def test_okx_checksum_mismatch_resubscribes_and_zero_is_not_checked() -> None:
    venue = Okx(["BTC-USDT-PERP"])
    bids, asks = [["100", "1", "0", "1"]], [["101", "1", "0", "1"]]
    assert venue.on_frame(okx_book("snapshot", bids, asks, 1, -1, 0), 1, PLAN).checksum_failures == 0
    bad = venue.on_frame(okx_book("update", [["100", "2", "0", "1"]], [], 2, 1, 12345), 2, PLAN)
    assert (bad.checksum_failures, bad.resyncs, len(bad.resubscribe), bad.records) == (1, 1, 2, [])


def test_okx_trades_tickers_funding_oi_liquidations_and_control() -> None:
    venue = Okx(["BTC-USDT-PERP"])
    trade = venue.on_frame(
        dumps(
            {
                "arg": {"channel": "trades", "instId": "BTC-USDT-SWAP"},
                "data": [
                    {
                        "instId": "BTC-USDT-SWAP",
                        "tradeId": "42",
                        "px": "30230.20",
                        "sz": "1e-3",
                        "side": "sell",
                        "ts": "1652459233099",
                    }
                ],
            }
        ),
        9,
        PLAN,
    ).records[0]
    assert isinstance(trade, Trade)
    assert (trade.symbol, trade.trade_id, trade.price, trade.size, trade.side, trade.ts_event, trade.ts_recv) == (
        "BTC-USDT-PERP",
        "42",
        "30230.20",
        "0.001",
        "sell",
        1652459233099000,
        9,
    )
    funding = venue.on_frame(
        dumps(
            {
                "arg": {"channel": "funding-rate", "instId": "BTC-USDT-SWAP"},
                "data": [
                    {
                        "fundingRate": "0.0001875",
                        "fundingTime": "1700726400000",
                        "instId": "BTC-USDT-SWAP",
                        "ts": "1700724675402",
                    }
                ],
            }
        ),
        9,
        PLAN,
    ).records[0]
    assert (
        isinstance(funding, Funding) and funding.rate == "0.0001875" and funding.next_funding_time == 1700726400000000
    )
    oi = venue.on_frame(
        dumps(
            {
                "arg": {"channel": "open-interest", "instId": "BTC-USDT-SWAP"},
                "data": [
                    {
                        "instId": "BTC-USDT-SWAP",
                        "oi": "2216113.01",
                        "oiCcy": "22161.13",
                        "oiUsd": "1525934400",
                        "ts": "1700724675402",
                    }
                ],
            }
        ),
        9,
        PLAN,
    ).records[0]
    assert isinstance(oi, OpenInterest) and (oi.open_interest, oi.open_interest_value) == ("2216113.01", "1525934400")
    liq = venue.on_frame(
        dumps(
            {
                "arg": {"channel": "liquidation-orders", "instType": "SWAP"},
                "data": [
                    {
                        "details": [{"bkPx": "30000.1", "side": "buy", "sz": "13", "ts": "1692266434010"}],
                        "instId": "BTC-USDT-SWAP",
                    },
                    {"details": [{"bkPx": "1", "side": "buy", "sz": "1", "ts": "1"}], "instId": "IOST-USDT-SWAP"},
                ],
            }
        ),
        9,
        PLAN,
    )
    assert [(r.symbol, r.side, r.price, r.size) for r in liq.records] == [("BTC-USDT-PERP", "buy", "30000.1", "13")]
    ticker = venue.on_frame(
        dumps(
            {
                "arg": {"channel": "tickers", "instId": "BTC-USDT-SWAP"},
                "data": [
                    {"instId": "BTC-USDT-SWAP", "bidPx": "1", "bidSz": "2", "askPx": "3", "askSz": "4", "ts": "5"}
                ],
            }
        ),
        9,
        PLAN,
    )
    assert isinstance(ticker.records[0], Bbo) and ticker.records[0].ask_size == "4"
    assert venue.on_frame("pong", 1, PLAN).control == "pong"
    assert venue.on_frame('{"event":"subscribe","arg":{"channel":"books"}}', 1, PLAN).control == "ack"
    with pytest.raises(SubscriptionError):
        venue.on_frame('{"event":"error","code":"60012","msg":"Invalid request"}', 1, PLAN)
    with pytest.raises(FrameError) as err:
        venue.on_frame('{"arg":{"channel":"books5","instId":"X"},"data":[]}', 1, PLAN)
    assert err.value.reason == "unknown_channel"
    roundtrip(trade and [trade, funding, oi, *liq.records, *ticker.records])


def test_okx_plan_subscribes_swap_channels_and_liquidations() -> None:
    venue = Okx(["BTC-USDT", "BTC-USDT-PERP"])
    (plan,) = venue.plan()
    args = json.loads(plan.subscribe[0])["args"]
    assert {"channel": "funding-rate", "instId": "BTC-USDT-SWAP"} in args
    assert {"channel": "books", "instId": "BTC-USDT"} in args
    assert {"channel": "liquidation-orders", "instType": "SWAP"} in args
    assert Okx.keepalive.ping_frame == "ping"


# ---- Kraken v2 -----------------------------------------------------------------------------------


def kraken_crc(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    def part(level: tuple[str, str]) -> str:
        return level[0].replace(".", "").lstrip("0") + level[1].replace(".", "").lstrip("0")

    asks_sorted = sorted(asks, key=lambda lv: float(lv[0]))[:10]
    bids_sorted = sorted(bids, key=lambda lv: -float(lv[0]))[:10]
    return zlib.crc32(("".join(map(part, asks_sorted)) + "".join(map(part, bids_sorted))).encode())


def kraken_book(kind: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]], checksum: int) -> str:
    def side(levels: list[tuple[str, str]]) -> str:  # numbers written with their exact text, as Kraken does
        return "[" + ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in levels) + "]"

    return (
        f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"BTC/USD","bids":{side(bids)},'
        f'"asks":{side(asks)},"checksum":{checksum},"timestamp":"2023-10-06T17:35:55.440295Z"}}]}}'
    )


def test_kraken_v2_book_with_checksums() -> None:
    venue = Kraken(["BTC-USD", "ETH-USD"])
    bids = [(f"4528{i}.5", "0.00100000") for i in range(9, -1, -1)] + [("45270.0", "1.50000000")]
    asks = [(f"4530{i}.2", "2.25000000") for i in range(10)] + [("45400.0", "0.10000000")]
    snap = venue.on_frame(kraken_book("snapshot", bids, asks, kraken_crc(bids, asks)), 1, PLAN)
    assert snap.checksum_failures == 0
    book = snap.records[0]
    assert isinstance(book, BookUpdate) and book.kind == "snapshot" and book.symbol == "BTC-USD"
    assert book.bids[0] == ("45289.5", "0.00100000") and book.ts_event == 1696613755440295
    assert isinstance(snap.records[1], Bbo) and snap.records[1].ask_price == "45300.2"

    bids2 = [("45289.5", "0.20000000"), *bids[1:]]
    asks2 = asks[1:]
    update = kraken_book("update", [("45289.5", "0.20000000")], [("45300.2", "0")], kraken_crc(bids2, asks2))
    good = venue.on_frame(update, 2, PLAN)
    assert good.checksum_failures == 0 and good.records[0].kind == "delta"
    assert good.records[1].ask_price == "45301.2" and good.records[1].bid_size == "0.20000000"

    bad = venue.on_frame(kraken_book("update", [("45289.5", "0.3")], [], 1234), 3, PLAN)
    assert (bad.checksum_failures, bad.resyncs, bad.records) == (1, 1, [])
    assert [json.loads(f) for f in bad.resubscribe] == [
        {"method": "unsubscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 1000}},
        {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 1000}},
    ]
    assert venue.on_frame(kraken_book("update", [("45289.5", "0.3")], [], 1), 4, PLAN).records == []
    again = venue.on_frame(kraken_book("snapshot", bids, asks, kraken_crc(bids, asks)), 5, PLAN)
    assert again.records[0].resync is True


def test_kraken_v2_truncates_to_depth() -> None:
    class Kraken10(Kraken):
        book_depth = 10

    venue = Kraken10(["BTC-USD"])
    bids = [(f"{100 - i}.0", "1.0") for i in range(10)]
    asks = [(f"{200 + i}.0", "1.0") for i in range(10)]
    venue.on_frame(kraken_book("snapshot", bids, asks, kraken_crc(bids, asks)), 1, PLAN)
    bids2 = [("100.5", "2.0"), *bids[:9]]  # the worst bid falls out of the subscribed depth
    result = venue.on_frame(kraken_book("update", [("100.5", "2.0")], [], kraken_crc(bids2, asks)), 2, PLAN)
    assert result.checksum_failures == 0
    bids3 = [*bids2[1:], ("80.0", "1.0")]  # a level beyond the old depth comes back in
    result = venue.on_frame(
        kraken_book("update", [("100.5", "0"), ("80.0", "1.0")], [], kraken_crc(bids3, asks)), 3, PLAN
    )
    assert result.checksum_failures == 0


def test_kraken_v2_trade_ticker_control_and_exponents() -> None:
    venue = Kraken(["MATIC-USD"])
    trade = venue.on_frame(
        '{"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"sell",'
        '"price":0.5117,"qty":1e-05,"ord_type":"market","trade_id":4665906,'
        '"timestamp":"2023-09-25T07:49:37.708706Z"}]}',
        7,
        PLAN,
    ).records[0]
    assert isinstance(trade, Trade)
    assert (trade.price, trade.size, trade.trade_id, trade.side, trade.ts_event) == (
        "0.5117",
        "0.00001",
        "4665906",
        "sell",
        1695628177708706,
    )
    ticker = venue.on_frame(
        '{"channel":"ticker","type":"snapshot","data":[{"symbol":"MATIC/USD","bid":0.10025,'
        '"bid_qty":740.0,"ask":0.10035,"ask_qty":740.00000000,"last":0.1}]}',
        7,
        PLAN,
    ).records[0]
    assert isinstance(ticker, Bbo) and (ticker.bid_size, ticker.ask_size, ticker.ts_event) == (
        "740.0",
        "740.00000000",
        7,
    )
    assert venue.on_frame('{"channel":"heartbeat"}', 1, PLAN).control == "heartbeat"
    assert venue.on_frame('{"method":"pong","time_in":"x","time_out":"y"}', 1, PLAN).control == "pong"
    ack = '{"method":"subscribe","result":{"channel":"book","symbol":"MATIC/USD"},"success":true}'
    assert venue.on_frame(ack, 1, PLAN).control == "ack"
    with pytest.raises(SubscriptionError):
        venue.on_frame('{"method":"subscribe","error":"Currency pair not supported","success":false}', 1, PLAN)
    assert Kraken.keepalive.ping_frame == '{"method":"ping"}'
    roundtrip([trade, ticker])


def test_kraken_plans_speak_their_version() -> None:
    v2 = json.loads(Kraken(["BTC-USD", "DOGE-USD"]).plan()[0].subscribe[0])
    assert v2 == {
        "method": "subscribe",
        "params": {"channel": "book", "symbol": ["BTC/USD", "DOGE/USD"], "depth": 1000},
    }
    plan = KrakenV1(["BTC-USD", "DOGE-USD"]).plan()[0]
    assert plan.url == "wss://ws.kraken.com"
    v1 = json.loads(plan.subscribe[0])
    assert v1 == {"event": "subscribe", "pair": ["XBT/USD", "XDG/USD"], "subscription": {"name": "book", "depth": 1000}}


# ---- Binance USD-M routed endpoints ---------------------------------------------------------------


def test_binance_usdm_routes_streams_to_public_and_market() -> None:
    venue = BinanceUsdm(["BTC-USDT-PERP", "ETH-USDT-PERP"])
    plans = venue.plan()
    assert [p.url for p in plans] == [
        "wss://fstream.binance.com/public/stream?streams="
        "btcusdt@depth@100ms/btcusdt@bookTicker/ethusdt@depth@100ms/ethusdt@bookTicker",
        "wss://fstream.binance.com/market/stream?streams="
        "btcusdt@aggTrade/btcusdt@markPrice@1s/btcusdt@forceOrder/ethusdt@aggTrade/ethusdt@markPrice@1s/"
        "ethusdt@forceOrder",
    ]
    public, market = plans
    assert len(venue.on_connect(public)) == 2 and venue.on_connect(market) == []
    assert BinanceUsdm.keepalive.max_lifetime_s is not None and BinanceUsdm.keepalive.max_lifetime_s < 24 * 3600
    many = BinanceUsdm([f"C{i}-USDT-PERP" for i in range(150)]).plan()
    assert [len(p.streams) for p in many] == [200, 100, 198, 198, 54]
    assert all("/public/" in p.url for p in many[:2]) and all("/market/" in p.url for p in many[2:])


def test_binance_usdm_routed_frames_and_depth_chain() -> None:
    venue = BinanceUsdm(["BTC-USDT-PERP"])
    public = venue.plan()[0]
    (request,) = venue.on_connect(public)
    assert (request.url, request.params) == (
        "https://fapi.binance.com/fapi/v1/depth",
        (("symbol", "BTCUSDT"), ("limit", "1000")),
    )

    def depth(first: int, last: int, prev: int, bids: list[list[str]]) -> str:
        return dumps(
            {
                "stream": "btcusdt@depth@100ms",
                "data": {
                    "e": "depthUpdate",
                    "E": 1700000000000,
                    "T": 1700000000000,
                    "s": "BTCUSDT",
                    "U": first,
                    "u": last,
                    "pu": prev,
                    "b": bids,
                    "a": [],
                },
            }
        )

    assert venue.on_frame(depth(90, 95, 89, [["99", "1"]]), 1, public).records == []  # buffered
    snap = venue.on_rest(
        request, b'{"lastUpdateId":100,"E":1700000000001,"T":1,"bids":[["100","1"]],"asks":[["101","1"]]}', 2
    )
    assert [r.kind for r in snap.records if isinstance(r, BookUpdate)] == ["snapshot"]  # buffered diff dropped
    first = venue.on_frame(depth(98, 103, 97, [["100.5", "2"]]), 3, public)
    assert first.records[0].seq_first == 98 and first.records[1].bid_price == "100.5"
    chained = venue.on_frame(depth(104, 110, 103, [["100.5", "0"]]), 4, public)
    assert chained.gaps == 0 and chained.records[0].prev_seq == 103
    gap = venue.on_frame(depth(120, 125, 115, []), 5, public)
    assert (gap.gaps, gap.resyncs, len(gap.requests)) == (1, 1, 1) and gap.requests[0].reason == "gap"
    assert venue.on_frame(depth(126, 130, 125, []), 6, public).requests == []  # one request per resync

    market = venue.plan()[1]
    agg = venue.on_frame(
        dumps(
            {
                "stream": "btcusdt@aggTrade",
                "data": {
                    "e": "aggTrade",
                    "E": 1,
                    "s": "BTCUSDT",
                    "a": 5,
                    "p": "30000.10",
                    "q": "0.010",
                    "f": 1,
                    "l": 2,
                    "T": 1700000000005,
                    "m": True,
                },
            }
        ),
        7,
        market,
    ).records[0]
    assert isinstance(agg, Trade) and (agg.symbol, agg.side, agg.trade_id) == ("BTC-USDT-PERP", "sell", "5")
    mark = venue.on_frame(
        dumps(
            {
                "stream": "btcusdt@markPrice@1s",
                "data": {
                    "e": "markPriceUpdate",
                    "E": 1562305380000,
                    "s": "BTCUSDT",
                    "p": "11794.15000000",
                    "i": "11784.62659091",
                    "P": "11784.25641265",
                    "r": "0.00038167",
                    "T": 1562306400000,
                },
            }
        ),
        8,
        market,
    ).records[0]
    assert isinstance(mark, Funding) and (mark.rate, mark.mark_price, mark.next_funding_time) == (
        "0.00038167",
        "11794.15000000",
        1562306400000000,
    )
    force = venue.on_frame(
        dumps(
            {
                "stream": "btcusdt@forceOrder",
                "data": {
                    "e": "forceOrder",
                    "E": 1568014460893,
                    "o": {
                        "s": "BTCUSDT",
                        "S": "SELL",
                        "o": "LIMIT",
                        "f": "IOC",
                        "q": "0.014",
                        "p": "9910",
                        "ap": "9910",
                        "X": "FILLED",
                        "l": "0.014",
                        "z": "0.014",
                        "T": 1568014460893,
                    },
                },
            }
        ),
        9,
        market,
    ).records[0]
    assert isinstance(force, Liquidation) and (force.side, force.price, force.size) == ("sell", "9910", "0.014")
    unrouted = venue.on_frame(
        dumps(
            {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 6, "p": "1", "q": "2", "f": 1, "l": 1, "T": 1, "m": False}
        ),
        10,
        market,
    ).records[0]
    assert isinstance(unrouted, Trade) and unrouted.side == "buy"
    ticker = venue.on_frame(
        dumps(
            {
                "stream": "btcusdt@bookTicker",
                "data": {
                    "e": "bookTicker",
                    "u": 7,
                    "s": "BTCUSDT",
                    "b": "1.0",
                    "B": "2",
                    "a": "1.1",
                    "A": "3",
                    "T": 1,
                    "E": 1626992741017,
                },
            }
        ),
        11,
        public,
    )
    assert isinstance(ticker.records[0], Bbo) and ticker.records[0].ts_event == 1626992741017000
    roundtrip([agg, mark, force, unrouted, *ticker.records])


def test_binance_usdm_open_interest_poll() -> None:
    venue = BinanceUsdm(["BTC-USDT-PERP", "ETH-USDT-250627"])
    polls = venue.polls()
    assert [(r.url, r.params, every) for r, every in polls] == [
        ("https://fapi.binance.com/fapi/v1/openInterest", (("symbol", "BTCUSDT"),), 30.0),
        ("https://fapi.binance.com/fapi/v1/openInterest", (("symbol", "ETHUSDT_250627"),), 30.0),
    ]
    result = venue.on_rest(
        polls[1][0], b'{"symbol":"ETHUSDT_250627","openInterest":"10659.509","time":1589437530011}', 5
    )
    (oi,) = result.records
    assert isinstance(oi, OpenInterest)
    assert (oi.symbol, oi.raw_symbol, oi.open_interest, oi.ts_event) == (
        "ETH-USDT-250627",
        "ETHUSDT_250627",
        "10659.509",
        1589437530011000,
    )


# ---- Binance spot and Coinbase -------------------------------------------------------------------


def test_binance_spot_combined_url_and_stream_split() -> None:
    (plan,) = Binance(["BTC-USDT"]).plan()
    assert (
        plan.url == "wss://stream.binance.com:9443/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker/btcusdt@trade"
    )
    plans = Binance([f"C{i}-USDT" for i in range(400)]).plan()
    assert sum(len(p.streams) for p in plans) == 1200
    assert all(len(p.streams) <= 1024 and len(p.url) <= Binance.max_url_chars for p in plans)
    assert Binance.keepalive.max_lifetime_s is not None and Binance.keepalive.max_lifetime_s < 24 * 3600
    with pytest.raises(SubscriptionError):
        Binance(["BTC-USDT"]).on_frame('{"error":{"code":2,"msg":"Invalid request"},"id":1}', 1, plan)


def coinbase_l2(seq: int, kind: str, product: str, updates: list[tuple[str, str, str]]) -> str:
    return dumps(
        {
            "channel": "l2_data",
            "client_id": "",
            "timestamp": "2026-08-09T21:05:48.397727063Z",
            "sequence_num": seq,
            "events": [
                {
                    "type": kind,
                    "product_id": product,
                    "updates": [
                        {"side": s, "event_time": "2026-08-09T21:05:48.367318Z", "price_level": p, "new_quantity": q}
                        for s, p, q in updates
                    ],
                }
            ],
        }
    )


def test_coinbase_sequence_gap_resubscribes_the_connection_products() -> None:
    venue = Coinbase(["BTC-USD", "ETH-USD", "SOL-USD"])
    plan = venue.plan()[0]
    assert [json.loads(f)["channel"] for f in plan.subscribe] == ["heartbeats", "level2", "market_trades", "ticker"]
    venue.on_connect(plan)
    venue.on_frame(coinbase_l2(0, "snapshot", "BTC-USD", [("bid", "1", "1"), ("offer", "2", "1")]), 1, plan)
    venue.on_frame(coinbase_l2(1, "snapshot", "ETH-USD", [("bid", "1", "1"), ("offer", "2", "1")]), 1, plan)
    ok = venue.on_frame(coinbase_l2(2, "update", "BTC-USD", [("bid", "1.5", "3")]), 2, plan)
    assert ok.gaps == 0 and ok.records[1].bid_price == "1.5" and ok.records[0].ts_event == 1786309548397727
    heartbeat = '{"channel":"heartbeats","timestamp":"2026-08-09T21:05:48.1Z","sequence_num":3,"events":[]}'
    assert venue.on_frame(heartbeat, 3, plan).control == "heartbeat"
    gap = venue.on_frame(coinbase_l2(7, "update", "BTC-USD", [("bid", "1.6", "3")]), 4, plan)
    assert (gap.gaps, gap.resyncs, gap.records) == (1, 2, [])
    frames = [json.loads(f) for f in gap.resubscribe]
    assert frames == [
        {"type": "unsubscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"},
        {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"},
    ]
    back = venue.on_frame(coinbase_l2(8, "snapshot", "BTC-USD", [("bid", "1", "1"), ("offer", "2", "1")]), 5, plan)
    assert back.records[0].resync is True
    venue.on_connect(plan)  # a new connection restarts the sequence
    assert venue.on_frame(coinbase_l2(0, "snapshot", "BTC-USD", [("bid", "1", "1")]), 6, plan).gaps == 0
    with pytest.raises(SubscriptionError):
        venue.on_frame('{"type":"error","message":"failure to subscribe"}', 1, plan)


def test_rest_request_shape() -> None:
    (request,) = Binance(["ETH-BTC"]).on_connect(Binance(["ETH-BTC"]).plan()[0])
    assert request == RestRequest(
        kind="snapshot",
        symbol="ETH-BTC",
        url="https://api.binance.com/api/v3/depth",
        params=(("symbol", "ETHBTC"), ("limit", "1000")),
        weight=50,
        reason="connect",
    )


def test_full_snapshot_is_republished_periodically() -> None:
    venue = Okx(["BTC-USDT-PERP"])
    bids, asks = [["100", "1", "0", "1"]], [["101", "1", "0", "1"]]
    venue.on_frame(okx_book("snapshot", bids, asks, 1, -1), 1_000_000, PLAN)
    soon = venue.on_frame(okx_book("update", [["99", "1", "0", "1"]], [], 2, 1), 30_000_000, PLAN)
    assert [r.kind for r in soon.records] == ["delta"]
    later = venue.on_frame(okx_book("update", [["98", "1", "0", "1"]], [], 3, 2), 61_000_001, PLAN)
    delta, snapshot = later.records
    assert (delta.kind, snapshot.kind, snapshot.resync, snapshot.seq_last) == ("delta", "snapshot", False, 3)
    assert snapshot.bids == [("100", "1"), ("99", "1"), ("98", "1")] and snapshot.asks == [("101", "1")]
