"""Durations in the notifier's YAML: ``"500ms"``, ``"30s"``, ``"5m"``, ``"4h"``, ``"1d"`` or a number of seconds."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_seconds(value: object) -> float:
    """Seconds in a duration string or number; raises ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 4h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _SCALE[match.group(2)]
    else:
        raise ValueError(f"expected a duration like 500ms, 30s, 5m, 4h, 1d; got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Seconds = Annotated[float, BeforeValidator(parse_seconds)]
"""A non-negative duration in seconds, parsed from ``30s``-style strings."""


def micros(seconds: float) -> int:
    return round(seconds * 1_000_000)
