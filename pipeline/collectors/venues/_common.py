"""Frame accessors every venue module shares: strict field access that raises :class:`FrameError`, exact
decimal strings and venue times to epoch microseconds. The per-symbol book state machine that turns book
changes into ``BookUpdate`` and ``Bbo`` records lives beside the book (:mod:`pipeline.collectors.bookstate`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from itertools import chain
from typing import Any

import orjson

from pipeline.collectors.base import FrameError
from pipeline.collectors.book import Level

_PLAIN = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]+)?")  # plain, non-negative, < 10^12 s
_PLAIN_LINES = re.compile(r"(?:-?[0-9]+(?:\.[0-9]+)?\n)*-?[0-9]+(?:\.[0-9]+)?")
INT64_MAX = 2**63 - 1
MAX_EXPONENT = 40  # decimals beyond 10^±40 are corrupt input, not prices
MAX_CHARS = 100
SMALL_LEVELS = 4  # up to this many rows, checking one by one is cheaper than the column-wise pass
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def loads(raw: str | bytes) -> Any:
    try:
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, UnicodeError) as exc:
        raise FrameError("bad_json", f"not JSON: {exc}") from None


def get(obj: Any, key: str | int) -> Any:
    """``obj[key]``; a missing key is ``missing_field``, a wrong container ``bad_type``."""
    try:
        return obj[key]
    except KeyError:
        raise FrameError("missing_field", f"missing field {key!r}") from None
    except IndexError:
        raise FrameError("missing_field", f"missing element {key}") from None
    except TypeError:
        raise FrameError("bad_type", f"cannot read {key!r} from {type(obj).__name__}") from None


def dict_of(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise FrameError("bad_type", f"{what}: expected an object, got {type(obj).__name__}")
    return obj


def list_of(obj: Any, what: str) -> list[Any]:
    if not isinstance(obj, list):
        raise FrameError("bad_type", f"{what}: expected an array, got {type(obj).__name__}")
    return obj


def text(obj: Any, what: str) -> str:
    if not isinstance(obj, str):
        raise FrameError("bad_type", f"{what}: expected a string, got {type(obj).__name__}")
    return obj


def dec(value: Any, what: str) -> str:
    """An exact plain decimal string; exponent notation is converted exactly with Decimal."""
    if isinstance(value, str):
        if len(value) > MAX_CHARS:
            raise FrameError("bad_type", f"{what}: a {len(value)}-character decimal")
        if _PLAIN.fullmatch(value):
            return value
    elif not isinstance(value, int) or isinstance(value, bool):
        raise FrameError("bad_type", f"{what}: expected a decimal string, got {type(value).__name__}")
    try:
        number = Decimal(value)
    except (InvalidOperation, ValueError):
        raise FrameError("bad_type", f"{what}: not a decimal: {value!r}") from None
    if not number.is_finite() or (number and not -MAX_EXPONENT <= number.adjusted() <= MAX_EXPONENT):
        raise FrameError("bad_type", f"{what}: not a finite decimal of sane magnitude: {value!r}")
    plain = format(number, "f")
    if len(plain) > MAX_CHARS or not _PLAIN.fullmatch(plain):
        raise FrameError("bad_type", f"{what}: not a decimal: {value!r}")
    return plain


def plain_strings(values: list[Any]) -> bool:
    """True when every value is a string of at most ``MAX_CHARS`` characters of the plain decimal
    shape, checked in one regex pass over the values joined by newlines (the shape excludes
    newlines, so one inside a value shows in the count) instead of one match per value."""
    if not values:
        return True
    try:
        joined = "\n".join(values)
    except TypeError:  # not all strings
        return False
    return (
        max(map(len, values)) <= MAX_CHARS
        and joined.count("\n") == len(values) - 1
        and _PLAIN_LINES.fullmatch(joined) is not None
    )


def levels(rows: Any, what: str) -> list[Level]:
    """``[[price, size, ...], ...]`` as exact ``(price, size)`` pairs. More than ``SMALL_LEVELS`` rows
    of plain strings take a fast path (checked all at once); a few rows, or any other row, go one by
    one (:func:`dec` for what is not a plain string)."""
    rows = list_of(rows, what)
    if len(rows) > SMALL_LEVELS and set(map(type, rows)) == {list}:
        try:
            out = [(row[0], row[1]) for row in rows]
        except IndexError:  # a short row
            return _levels_slow(rows, what)
        if plain_strings(list(chain.from_iterable(out))):
            return out
    return _levels_slow(rows, what)


def _levels_slow(rows: list[Any], what: str) -> list[Level]:
    out: list[Level] = []
    match = _PLAIN.fullmatch
    for row in rows:
        if type(row) is not list or len(row) < 2:
            raise FrameError("bad_type", f"{what}: a level must be [price, size, ...]")
        price, size = row[0], row[1]
        if (
            type(price) is str
            and type(size) is str
            and len(price) <= MAX_CHARS
            and len(size) <= MAX_CHARS
            and match(price)
            and match(size)
        ):
            out.append((price, size))
        else:
            out.append((dec(price, what), dec(size, what)))
    return out


def integer(value: Any, what: str) -> int:
    """A non-negative integer sent as a JSON number or a digit string."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isdigit() and value.isascii():
        number = int(value)
    else:
        raise FrameError("bad_type", f"{what}: expected an integer, got {value!r}")
    if not 0 <= number <= INT64_MAX:
        raise FrameError("bad_type", f"{what}: {number} is outside 0..2^63-1")
    return number


def signed(value: Any, what: str) -> int:
    """A signed 64-bit integer sent as a JSON number."""
    if isinstance(value, int) and not isinstance(value, bool) and -INT64_MAX - 1 <= value <= INT64_MAX:
        return value
    raise FrameError("bad_type", f"{what}: expected a 64-bit integer, got {value!r}")


def ms_to_us(value: Any, what: str) -> int:
    millis = integer(value, what)
    if millis > INT64_MAX // 1000:
        raise FrameError("bad_type", f"{what}: {millis} ms is out of range")
    return millis * 1000


def seconds_to_us(value: Any, what: str) -> int:
    """``"1618678133.924992"`` (decimal seconds) to integer microseconds, exactly (truncating)."""
    if type(value) is str and len(value) <= MAX_CHARS and _SECONDS.fullmatch(value):
        if value[-7:-6] == ".":  # exactly six decimals (Kraken's level times): the digits are the microseconds
            return int(value.replace(".", ""))
        whole, _, frac = value.partition(".")  # at most 12 digits of seconds: no range check needed
        return int(whole) * 1_000_000 + int((frac + "000000")[:6])
    raw = dec(value, what)
    if raw.startswith("-"):
        raise FrameError("bad_type", f"{what}: negative time {raw}")
    whole, _, frac = raw.partition(".")
    micros = int(whole) * 1_000_000 + int((frac + "000000")[:6])
    if micros > INT64_MAX:
        raise FrameError("bad_type", f"{what}: time {raw} is out of range")
    return micros


def iso_to_us(value: Any, what: str) -> int:
    """RFC 3339 UTC (``2026-08-09T20:32:50.714964855Z``, any fraction length) to microseconds."""
    raw = text(value, what)
    head, dot, rest = raw.partition(".")
    frac = ""
    if dot:
        digits = rest.rstrip("Z")
        if not digits.isdigit() or not rest.endswith("Z"):
            raise FrameError("bad_type", f"{what}: bad timestamp {raw!r}")
        frac = digits
    elif head.endswith("Z"):
        head = head[:-1]
    else:
        raise FrameError("bad_type", f"{what}: bad timestamp {raw!r}")
    try:
        seconds = _utc_seconds(head)
    except ValueError:
        raise FrameError("bad_type", f"{what}: bad timestamp {raw!r}") from None
    if seconds < 0:
        raise FrameError("bad_type", f"{what}: timestamp before 1970 {raw!r}")
    return seconds * 1_000_000 + int((frac + "000000")[:6])


@lru_cache(maxsize=4096)
def _utc_seconds(head: str) -> int:
    """``2026-08-09T20:32:50`` (UTC) as epoch seconds; cached, as consecutive frames share seconds."""
    moment = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return (moment - _EPOCH).days * 86_400 + (moment - _EPOCH).seconds


def split_pair(raw: str, quotes: Iterable[str]) -> tuple[str, str]:
    """Split a concatenated pair (``NKNUSDT``) by the longest known quote suffix."""
    for quote in quotes:
        if raw.endswith(quote) and len(raw) > len(quote):
            return raw[: -len(quote)], quote
    raise FrameError("schema", f"cannot split symbol {raw!r} into base and quote")


def symbol_ok(symbol: str) -> str:
    """Check a normalised symbol against the contract's ``BASE-QUOTE[-X]`` shape."""
    parts = symbol.split("-")
    if len(parts) < 2 or not all(part.isalnum() and part.isascii() and part.upper() == part for part in parts):
        raise FrameError("schema", f"symbol {symbol!r} does not normalise to BASE-QUOTE")
    return symbol
