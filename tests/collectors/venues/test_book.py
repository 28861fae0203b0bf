"""L2Book against a naive dict model: best, top-n (with its cache), truncation and crossing, over
random change sequences; and the checksum functions on the venues' documented examples."""

from __future__ import annotations

import zlib
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.collectors.book import L2Book
from pipeline.collectors.checksums import kraken_checksum, okx_checksum

prices = st.sampled_from(["9.5", "9.50", "10", "10.0", "10.25", "11", "12.125", "13", "14", "0.5"])
sizes = st.sampled_from(["0", "0.000", "1", "2.50", "0.001"])
changes = st.lists(st.tuples(prices, sizes), max_size=6)


def model_apply(side: dict[Decimal, tuple[str, str]], levels: list[tuple[str, str]]) -> None:
    for price, size in levels:
        if Decimal(size) == 0:
            side.pop(Decimal(price), None)
        else:
            side[Decimal(price)] = (price, size)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(changes, changes), max_size=12), st.sampled_from([0, 2, 4]), st.sampled_from([1, 3]))
def test_book_matches_a_dict_model(steps: list[tuple[list, list]], depth: int, n: int) -> None:
    book = L2Book(depth)
    bids: dict[Decimal, tuple[str, str]] = {}
    asks: dict[Decimal, tuple[str, str]] = {}
    for new_bids, new_asks in steps:
        book.apply(new_bids, new_asks)
        model_apply(bids, new_bids)
        model_apply(asks, new_asks)
        if depth:
            for key in sorted(bids, reverse=True)[depth:]:
                del bids[key]
            for key in sorted(asks)[depth:]:
                del asks[key]
        want_bids = [bids[k] for k in sorted(bids, reverse=True)]
        want_asks = [asks[k] for k in sorted(asks)]
        assert book.top(n) == (want_bids[:n], want_asks[:n])
        assert book.best() == (want_bids[0] if bids else None, want_asks[0] if asks else None)
        assert book.levels() == (want_bids, want_asks)
        assert book.crossed() == bool(bids and asks and max(bids) >= min(asks))
        assert book.sizes() == (len(bids), len(asks))


def test_okx_checksum_documented_examples() -> None:
    """OKX's documented even and odd examples (signed int32)."""
    assert okx_checksum([("3366.1", "7"), ("3366", "6")], [("3366.8", "9"), ("3368", "8")]) == -1881014294
    assert okx_checksum([("3366.1", "7")], [("3366.8", "9"), ("3368", "8"), ("3372", "8")]) == 831078360


def test_kraken_checksum_is_over_stripped_wire_strings() -> None:
    asks = [("0.05005", "0.00000500"), ("0.05010", "0.00000500")]
    bids = [("0.05000", "0.00000500")]
    assert kraken_checksum(bids, asks) == zlib.crc32(b"5005500" + b"5010500" + b"5000500")
