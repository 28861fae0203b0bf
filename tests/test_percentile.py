"""The shared nearest-rank percentile (pipeline/percentile.py)."""

from __future__ import annotations

import math

import pytest

from pipeline.percentile import percentile


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 99, 100, 101, 1000])
@pytest.mark.parametrize("q", [1, 25, 50, 90, 99, 100])
def test_nearest_rank_is_the_smallest_value_with_q_percent_at_or_below(n: int, q: int) -> None:
    ordered = list(range(10, 10 + n))
    value = percentile(ordered, q)
    at_or_below = sum(1 for v in ordered if v <= value)
    assert at_or_below * 100 >= q * n  # at least q percent at or below it
    assert value == ordered[0] or (at_or_below - 1) * 100 < q * n  # and no smaller value has that
    assert value == ordered[max(1, math.ceil(n * q / 100)) - 1]


def test_fractional_percent_and_floats() -> None:
    assert percentile([0.5, 1.5, 2.5, 3.5], 50) == 1.5
    assert percentile([0.5, 1.5, 2.5, 3.5], 0.99 * 100) == 3.5


def test_no_values_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
