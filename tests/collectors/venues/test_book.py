"""L2Book against a naive dict model: best, top-n (with its cache), truncation and crossing, over
random change sequences; and the checksum functions on the venues' documented examples."""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.collectors.checksums import kraken_checksum, okx_checksum

from .conftest import assert_book_follows_reference

prices = st.sampled_from(["9.5", "9.50", "10", "10.0", "10.25", "11", "12.125", "13", "14", "0.5"])
sizes = st.sampled_from(["0", "0.000", "1", "2.50", "0.001"])
changes = st.lists(st.tuples(prices, sizes), max_size=6)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(changes, changes), max_size=12), st.sampled_from([0, 2, 4]), st.sampled_from([1, 3]))
def test_book_matches_a_dict_model(steps: list[tuple[list, list]], depth: int, n: int) -> None:
    assert_book_follows_reference(steps, depth, n)


deep_prices = st.integers(1, 400).map(lambda i: f"{i / 4:.2f}")
deep_changes = st.lists(st.tuples(deep_prices, sizes), max_size=40)  # many levels: the per-level and bulk paths
SNAPSHOT = ([(f"{i / 4:.2f}", "1") for i in range(200, 0, -1)], [(f"{i / 4:.2f}", "2") for i in range(201, 401)])


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(deep_changes, deep_changes), max_size=12),
    st.sampled_from([0, 150]),
    st.sampled_from([1, 10]),
    st.booleans(),
)
def test_a_deep_book_matches_a_dict_model(steps: list[tuple[list, list]], depth: int, n: int, best_first: bool) -> None:
    """A 200-level-a-side book: change sets small against a side (sorted one by one), large ones (re-sorted
    at once), truncation below the depth, and the best levels read with and without a cached top."""
    assert_book_follows_reference([SNAPSHOT, *steps], depth, n, best_first)


def test_okx_checksum_documented_examples() -> None:
    """OKX's documented even and odd examples (signed int32)."""
    assert okx_checksum([("3366.1", "7"), ("3366", "6")], [("3366.8", "9"), ("3368", "8")]) == -1881014294
    assert okx_checksum([("3366.1", "7")], [("3366.8", "9"), ("3368", "8"), ("3372", "8")]) == 831078360


def test_kraken_checksum_is_over_stripped_wire_strings() -> None:
    asks = [("0.05005", "0.00000500"), ("0.05010", "0.00000500")]
    bids = [("0.05000", "0.00000500")]
    assert kraken_checksum(bids, asks) == zlib.crc32(b"5005500" + b"5010500" + b"5000500")
