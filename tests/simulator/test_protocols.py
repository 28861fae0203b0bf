"""Protocol details a collector relies on: routes, acks, errors, checksums, sequence numbering."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.collectors.checksums import kraken_checksum, okx_checksum
from pipeline.simulator.base import SEQ, fixed, trimmed
from pipeline.simulator.engine import Engine
from pipeline.simulator.protocols import Connection
from pipeline.simulator.protocols.kraken import checksum as sim_kraken_checksum
from pipeline.simulator.protocols.okx import checksum as sim_okx_checksum
from pipeline.simulator.scenario import load_scenario, scenario_from

levels = st.lists(
    st.tuples(st.integers(1, 10**9), st.integers(0, 10**9), st.integers(0, 8), st.integers(0, 8)), max_size=30
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(levels, levels)
def test_checksums_agree_with_the_collectors(bid_rows, ask_rows) -> None:  # type: ignore[no-untyped-def]
    bids = [(trimmed(p, pd), trimmed(q, qd)) for p, q, pd, qd in bid_rows]
    asks = [(fixed(p, pd), fixed(q, qd)) for p, q, pd, qd in ask_rows]
    assert sim_okx_checksum(bids, asks) == okx_checksum(bids, asks)
    assert sim_kraken_checksum(asks, bids) == kraken_checksum(bids, asks)


def engine(seconds: float = 1.0) -> Engine:
    return Engine(load_scenario(duration_s=seconds))


def test_usdm_routes_deliver_only_their_streams() -> None:
    proto = engine().protocols["binance_usdm"]
    market = Connection(1, path="/market/stream")
    proto.open(market, {"streams": "btcusdt@depth@100ms/btcusdt@aggTrade/btcusdt@markPrice@1s"}, 0)
    assert set(market.keys) == {"aggTrade|BTCUSDT", "markPrice|BTCUSDT"}
    assert market.combined
    legacy = Connection(2, path="/ws")
    request = '{"method":"SUBSCRIBE","params":["btcusdt@forceOrder","btcusdt@bookTicker"],"id":1}'
    assert proto.message(legacy, request, 0) == ['{"result":null,"id":1}']
    assert set(legacy.keys) == {"bookTicker|BTCUSDT"}  # unrouted: /public streams only, silently
    listed = json.loads(proto.message(legacy, '{"method":"LIST_SUBSCRIPTIONS","id":2}', 0)[0])
    assert listed == {"result": ["btcusdt@forceOrder", "btcusdt@bookTicker"], "id": 2}
    assert proto.render(market, "aggTrade|BTCUSDT", "{}") == '{"stream":"btcusdt@aggTrade","data":{}}'
    assert proto.render(legacy, "bookTicker|BTCUSDT", "{}") == "{}"
    assert json.loads(proto.message(legacy, "nonsense", 0)[0])["error"]["code"] == 2


def test_error_replies() -> None:
    protos = engine().protocols
    okx = protos["okx"]
    conn = Connection(1)
    okx.open(conn, {}, 0)
    error = json.loads(okx.message(conn, '{"op":"subscribe","args":[{"channel":"books","instId":"NOPE"}]}', 0)[0])
    assert (error["event"], error["code"]) == ("error", "60018")
    swap_only = '{"op":"subscribe","args":[{"channel":"funding-rate","instId":"BTC-USDT"}]}'
    assert json.loads(okx.message(conn, swap_only, 0)[0])["event"] == "error"
    kraken = protos["kraken"]
    bad_pair = '{"method":"subscribe","params":{"channel":"book","symbol":["DOGE/EUR"]},"req_id":3}'
    reply = json.loads(kraken.message(Connection(2), bad_pair, 0)[0])
    assert reply["success"] is False and reply["req_id"] == 3
    bad_depth = '{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":7}}'
    assert json.loads(kraken.message(Connection(3), bad_depth, 0)[0])["error"] == "Invalid depth"
    coinbase = protos["coinbase"]
    unknown = '{"type":"subscribe","product_ids":["BTC-USD"],"channel":"x"}'
    reply = json.loads(coinbase.message(Connection(4), unknown, 0)[0])
    assert reply["type"] == "error"


def test_coinbase_numbers_every_message_of_a_connection() -> None:
    proto = engine().protocols["coinbase"]
    conn = Connection(1)
    replies = []
    for channel in ("level2", "heartbeats"):
        request = json.dumps({"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": channel})
        replies += [proto.render(conn, None, text) for text in proto.message(conn, request, 0)]
    assert [json.loads(text)["sequence_num"] for text in replies] == list(range(len(replies)))
    assert [json.loads(text)["channel"] for text in replies] == ["l2_data", "l2_data", "subscriptions", "subscriptions"]
    assert json.loads(replies[-1])["events"][0]["subscriptions"] == {
        "level2": ["BTC-USD", "ETH-USD"], "heartbeats": ["heartbeats"]
    }  # fmt: skip
    assert SEQ not in replies[0]


def test_a_coinbase_gap_is_one_skipped_sequence_number(make_driver) -> None:  # type: ignore[no-untyped-def]
    scenario = scenario_from({
        "duration_s": 8,
        "incidents": [{"kind": "sequence_gap", "venue": "coinbase", "symbol": "BTC-USD", "at_s": 3}],
    })  # fmt: skip
    driver = make_driver(scenario)
    tally = driver.run()
    assert {venue: n for (venue, _), n in tally.gaps.items() if n} == {"coinbase": 1}
    assert sum(tally.checksum_failures.values()) == 0
    assert [label.kind for label in driver.engine.labels] == ["sequence_gap"]
