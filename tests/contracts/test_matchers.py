"""Alertmanager-style matchers: every malformed one is a ValueError naming it, never another exception."""

from __future__ import annotations

import pytest

from pipeline.contracts.matchers import parse_matcher


@pytest.mark.parametrize(
    "text",
    [
        'exchange=~"("',  # unbalanced
        'exchange=~"a{99999999999}"',  # the repeat count overflows re's compiler (OverflowError)
        'exchange!~"[z-a]"',  # bad range
        "no operator here",
    ],
)
def test_a_bad_matcher_is_a_value_error_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="matcher"):
        parse_matcher(text)


def test_good_matchers_match() -> None:
    assert parse_matcher('exchange=~"ok.*"').matches({"exchange": "okx"})
    assert not parse_matcher('exchange!="okx"').matches({"exchange": "okx"})
