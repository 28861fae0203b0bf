"""Shared simulator types: the error hierarchy, the frame an engine step emits, and exact formatting
of integer tick/lot counts and simulated microsecond times.

Errors: :class:`SimulatorError` is the root; :class:`ScenarioError` (a scenario file that does not
validate: the message names each field) derives from it. Client frames a simulated venue rejects
are answered on the wire with that venue's own error frame, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SEQ = "\x00seq\x00"  # placeholder for a per-connection sequence number (Coinbase ``sequence_num``)


class SimulatorError(Exception):
    """Root of the simulator errors."""


class ScenarioError(SimulatorError, ValueError):
    """A scenario that does not load or validate."""


@dataclass(slots=True)
class Frame:
    """One thing a venue does at simulated time ``t_us``.

    ``kind`` is ``data`` (send ``text`` to subscribers of ``key``), ``skip`` (a message the venue
    numbered but lost: subscribers' per-connection sequence advances, nothing is sent) or
    ``disconnect`` (the venue drops every connection). ``text`` may hold :data:`SEQ`, replaced per
    connection. ``trade_id`` is set on frames that carry one simulated trade.
    """

    t_us: int
    venue: str
    key: str
    text: str
    kind: str = "data"
    trade_id: str | None = None


def fixed(count: int, decimals: int) -> str:
    """``count * 10**-decimals`` as an exact fixed-point string (``fixed(6500012, 2) == "65000.12"``)."""
    if decimals == 0:
        return str(count)
    sign = "-" if count < 0 else ""
    digits = str(abs(count)).rjust(decimals + 1, "0")
    return f"{sign}{digits[:-decimals]}.{digits[-decimals:]}"


def trimmed(count: int, decimals: int) -> str:
    """Like :func:`fixed` without trailing fractional zeros (``"65000.1"``, ``"30261"``)."""
    text = fixed(count, decimals)
    if decimals:
        text = text.rstrip("0").rstrip(".")
    return text


class Decimals:
    """Memoised :func:`fixed` (or :func:`trimmed`) strings of counts at one precision, optionally
    padded to ``wire`` decimals (Binance spot prints 8): level prices and sizes repeat a lot."""

    __slots__ = ("cache", "decimals", "scale", "trim")

    def __init__(self, decimals: int, trim: bool = False, wire: int | None = None):
        self.decimals = decimals if wire is None else wire
        self.scale = 1 if wire is None else 10 ** (wire - decimals)
        self.trim = trim
        self.cache: dict[int, str] = {}

    def __call__(self, count: int) -> str:
        text = self.cache.get(count)
        if text is None:
            if len(self.cache) >= 100_000:
                self.cache.clear()
            format_ = trimmed if self.trim else fixed
            text = self.cache[count] = format_(count * self.scale, self.decimals)
        return text


def iso_us(t_us: int) -> str:
    """RFC 3339 UTC with microseconds: ``2026-01-01T00:00:00.123456Z``."""
    return (EPOCH + timedelta(microseconds=t_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_ns(t_us: int) -> str:
    """RFC 3339 UTC with nanoseconds (Coinbase envelopes): ``...00.123456000Z``."""
    return iso_us(t_us)[:-1] + "000Z"


def parse_time(text: str) -> int:
    """``2026-01-01T00:00:00Z`` (RFC 3339, UTC) to epoch microseconds."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
