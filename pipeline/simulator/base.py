"""Shared simulator types: the error hierarchy, the frame an engine step emits, and exact formatting
of integer tick/lot counts and simulated microsecond times.

Errors: :class:`SimulatorError` is the root; :class:`ScenarioError` (a scenario file that does not
validate: the message names each field) and :class:`ClientError` (a client frame the simulated
venue rejects) derive from it.
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


class ClientError(SimulatorError):
    """A client frame the simulated venue answers with an error."""


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
