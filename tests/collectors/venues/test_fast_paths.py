"""The fast paths agree with the exact, one-at-a-time ones: float-keyed books (and their switch to
``Decimal`` keys on a long price) against a ``Decimal`` dict model, the bulk decimal checks against
per-value checks, and Coinbase's typed ``l2_data`` decoding against the generic path."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.collectors.base import CollectorError, ConnectionPlan, FrameResult
from pipeline.collectors.book import FLOAT_EXACT_CHARS, L2Book, Level
from pipeline.collectors.bookstate import BookState
from pipeline.collectors.checksums import kraken_checksum, kraken_side, okx_checksum
from pipeline.collectors.venues import Coinbase, Kraken
from pipeline.collectors.venues._common import _PLAIN, MAX_CHARS, _levels_slow, levels, plain_strings, seconds_to_us
from pipeline.collectors.venues.coinbase import _typed_level2
from pipeline.contracts import encode

from .conftest import assert_book_follows_reference

# prices whose floats are near each other or equal unless compared exactly (the long ones are
# longer than FLOAT_EXACT_CHARS and switch the book to Decimal keys)
PRICES = [
    "0.1",
    "0.10",
    "0.1000000000000001",
    "0.10000000000000001",
    "0.09999999999999999",
    "9007199254740993",
    "9007199254740992",
    "123456789012.345",
    "123456789012.3451",
    "100",
    "99.99999999999",
    "0.000000000001",
]
prices = st.sampled_from(PRICES)
sizes = st.sampled_from(["0", "0.000", "1", "2.50", "0.001"])
changes = st.lists(st.tuples(prices, sizes), max_size=5)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(changes, changes), max_size=10), st.sampled_from([0, 3]), st.sampled_from([1, 2, 25]))
def test_book_orders_like_decimal_across_the_float_to_decimal_switch(
    steps: list[tuple[list, list]], depth: int, n: int
) -> None:
    assert_book_follows_reference(steps, depth, n)


def test_short_prices_keep_float_keys_and_a_long_one_rekeys_the_book() -> None:
    book = L2Book()
    book.replace([("0.1", "1"), ("0.0999999999999", "2")], [("0.2", "1")])
    assert not book._exact and max(map(len, ("0.1", "0.0999999999999"))) <= FLOAT_EXACT_CHARS
    book.apply([("0.1000000000000001", "3")], [])  # 18 characters: equal to 0.1 as a float
    assert book._exact
    assert book.levels() == ([("0.1000000000000001", "3"), ("0.1", "1"), ("0.0999999999999", "2")], [("0.2", "1")])
    book.clear()
    assert not book._exact


values = st.one_of(
    st.sampled_from(["1", "-2.5", "0.00100", "1.", ".5", "1e5", "1.2.3", "", "12\n3", "+1", "1" * 101, "1" * 100]),
    st.from_regex(r"-?[0-9]{1,5}(\.[0-9]{1,5})?", fullmatch=True),
    st.integers(-5, 5),
    st.none(),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.lists(values, min_size=0, max_size=4), max_size=6))
def test_bulk_level_check_matches_the_per_row_check(rows: list[list[Any]]) -> None:
    def outcome(fn: Any) -> Any:
        try:
            return fn(rows, "asks")
        except CollectorError as exc:
            return (type(exc).__name__, str(exc))

    assert outcome(levels) == outcome(_levels_slow)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(values, max_size=6))
def test_plain_strings_is_the_per_value_check(items: list[Any]) -> None:
    want = all(type(v) is str and len(v) <= MAX_CHARS and _PLAIN.fullmatch(v) is not None for v in items)
    assert plain_strings(items) == want


def test_checksum_memo_follows_the_top_levels() -> None:
    state = BookState("KSM-BTC", "KSM/XBT", L2Book(10))
    state.take(True, [("0.05000", "0.00000500")], [("0.05005", "0.00000500"), ("0.05010", "0.00000500")])
    first = state.checksum(10, kraken_checksum)
    assert first == kraken_checksum(*state.book.top(10))
    assert state.checksum(10, kraken_checksum) == first
    state.take(False, [("0.05001", "1")], [])
    assert state.checksum(10, kraken_checksum) == kraken_checksum(*state.book.top(10)) != first
    assert state.checksum(25, okx_checksum) == okx_checksum(*state.book.top(25))


PLAN = ConnectionPlan("coinbase-0", "wss://example", (), ("BTC-USD",), ())


def l2_frame(seq: Any, events: Any, typed_first: bool, **extra: Any) -> str:
    """The same message with ``channel`` first (typed path) or last (generic path)."""
    body = {"timestamp": "2026-08-09T21:05:48.507547362Z", "sequence_num": seq, "events": events, **extra}
    ordered = {"channel": "l2_data", **body} if typed_first else {**body, "channel": "l2_data"}
    return orjson.dumps(ordered).decode()


def update(side: Any, price: Any, size: Any) -> dict[str, Any]:
    return {"side": side, "event_time": "2026-08-09T21:05:48.407682Z", "price_level": price, "new_quantity": size}


SNAPSHOT = [
    {"type": "snapshot", "product_id": "BTC-USD", "updates": [update("bid", "10", "1"), update("offer", "11", "2")]}
]
CASES: list[tuple[Any, Any, dict[str, Any]]] = [
    (1, [{"type": "update", "product_id": "BTC-USD", "updates": [update("bid", "10.5", "3")]}], {}),
    (1, [{"type": "update", "product_id": "BTC-USD", "updates": [update("bid", "1e1", "0")]}], {}),
    (1, [{"type": "update", "product_id": "BTC-USD", "updates": [update("bid", "1.2.3", "1")]}], {}),
    (1, [{"type": "update", "product_id": "BTC-USD", "updates": [update("middle", "10", "1")]}], {}),
    (1, [{"type": "update", "product_id": "BTC-USD", "updates": [update("bid", 10, "1")]}], {}),
    (1, [{"type": "bogus", "product_id": "BTC-USD", "updates": [update("bid", "10", "1")]}], {}),
    (1, [{"type": "update", "product_id": "BTC-USD", "updates": [{"side": "bid"}]}], {}),
    (5, [{"type": "update", "product_id": "BTC-USD", "updates": [update("offer", "10.9", "1")]}], {}),
    (-1, [], {}),
    ("1", [], {}),
    (1, [], {"type": "error", "message": "nope"}),
    (1, [{"type": "update", "product_id": "BTC-USD", "updates": [update("bid", "12", "1")]}], {}),  # crossed
]


@pytest.mark.parametrize(("seq", "events", "extra"), CASES)
def test_coinbase_typed_level2_matches_the_generic_path(seq: Any, events: Any, extra: dict[str, Any]) -> None:
    outcomes = []
    for typed_first in (True, False):
        venue = Coinbase(["BTC-USD"])
        venue.on_connect(PLAN)
        venue.on_frame(l2_frame(0, SNAPSHOT, typed_first), 1, PLAN)
        try:
            result: FrameResult | tuple[str, str] = venue.on_frame(l2_frame(seq, events, typed_first, **extra), 2, PLAN)
        except CollectorError as exc:
            result = (type(exc).__name__, str(exc))
        if isinstance(result, FrameResult):
            outcomes.append(([encode(r) for r in result.records], result.gaps, result.resyncs, result.crossed))
        else:
            outcomes.append(result)
    assert outcomes[0] == outcomes[1]


def test_typed_decoding_takes_well_formed_l2_data_only() -> None:
    assert _typed_level2(l2_frame(3, SNAPSHOT, typed_first=True)) is not None
    assert _typed_level2(l2_frame(3, SNAPSHOT, typed_first=True).encode()) is not None
    assert _typed_level2(l2_frame(3, SNAPSHOT, typed_first=False)) is None  # channel not first: generic path
    assert _typed_level2(l2_frame(3, SNAPSHOT, typed_first=True, type="error")) is None
    assert _typed_level2(l2_frame(-3, SNAPSHOT, typed_first=True)) is None
    assert _typed_level2(l2_frame(3, [{"type": "snapshot"}], typed_first=True)) is None


okx_prices = st.from_regex(r"[0-9]{1,4}\.[0-9]{1,3}", fullmatch=True)
level_lists = st.lists(st.tuples(okx_prices, st.sampled_from(["1", "0.5"])), max_size=30)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(level_lists, level_lists)
def test_okx_checksum_is_the_documented_interleaving(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
    parts: list[str] = []
    for i in range(25):  # OKX's description: bid i then ask i, a missing side skipped
        if i < len(bids):
            parts.extend(bids[i])
        if i < len(asks):
            parts.extend(asks[i])
    crc = zlib.crc32(":".join(parts).encode())
    assert okx_checksum(bids, asks) == (crc - (1 << 32) if crc >= (1 << 31) else crc)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.from_regex(r"[0-9]{1,12}(\.[0-9]{1,8})?", fullmatch=True))
def test_seconds_with_six_decimals_take_the_digit_path_exactly(value: str) -> None:
    whole, _, frac = value.partition(".")
    assert seconds_to_us(value, "t") == int(whole) * 1_000_000 + int((frac + "000000")[:6])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(st.sampled_from(PRICES), st.sampled_from(["1", "0.00100", "12.5"])), max_size=12),
    st.lists(st.tuples(st.sampled_from(PRICES), st.sampled_from(["1", "0.00100", "12.5"])), max_size=12),
)
def test_kraken_checksum_is_the_crc_of_its_sides_continued(bids: list[Level], asks: list[Level]) -> None:
    assert zlib.crc32(kraken_side(bids), zlib.crc32(kraken_side(asks))) == kraken_checksum(bids, asks)


def test_kraken_memoised_checksum_follows_changes_of_either_side() -> None:
    venue = Kraken(["KSM-BTC"])
    state = venue._state("KSM/XBT", 10)
    steps: list[tuple[bool, list[Level], list[Level]]] = [
        (True, [("0.05000", "1"), ("0.04990", "2")], [("0.05005", "1"), ("0.05010", "3")]),
        (False, [("0.05001", "1")], []),  # bids only
        (False, [], [("0.05004", "2")]),  # asks only
        (False, [("0.04000", "1")], [("0.06000", "1")]),  # both sides
        (False, [("0.05001", "0")], [("0.05004", "0")]),  # removals
        (False, [], []),
    ]
    for snapshot, bids, asks in steps:
        state.take(snapshot, bids, asks)
        assert venue._checksum(state) == kraken_checksum(*state.book.top(10))
