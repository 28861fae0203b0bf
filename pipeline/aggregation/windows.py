"""Event-time windows: sizes, the lateness policy and a per-partition watermark.

A window ``[start, start + size)`` is *closed* once the partition watermark reaches
``start + size + grace``. The watermark of a partition is its largest event time seen minus the
allowed lateness; it never goes back. A record whose window is already closed when it arrives is
*late*: it is dropped from the bars and counted (trades also go to ``ops.dlq.v1``, reason ``late``).
When a partition receives nothing for ``idle_timeout_us`` of wall-clock time, its watermark
advances far enough to close its open windows that hold trades, bounded by the injected wall clock
(``now - allowed_lateness``), so quiet symbols and the end of a replay still close their windows; with
no such window it stays on event time (a pause then makes no later record late). A partition's BBO
stream that trails its trades (unread BBOs in the consumer) holds its windows for at most
``bbo_backlog_wait_us`` (see ``engine``).
"""

from __future__ import annotations

from dataclasses import dataclass

SECOND_US = 1_000_000
INTERVALS: dict[str, int] = {"1s": SECOND_US, "1m": 60 * SECOND_US}
NO_WATERMARK = -1


def window_start(ts_us: int, size_us: int) -> int:
    """Start of the tumbling window of ``size_us`` that holds ``ts_us``."""
    return ts_us - ts_us % size_us


@dataclass(frozen=True)
class WindowPolicy:
    """How bars' windows close: allowed lateness, grace and the idle timeout (all microseconds)."""

    allowed_lateness_us: int = 500_000
    grace_us: int = 500_000
    idle_timeout_us: int = 3 * SECOND_US
    bbo_backlog_wait_us: int = 300 * SECOND_US  # how long windows wait for a BBO stream that trails its trades

    def closes_at(self, window_end_us: int) -> int:
        """The watermark at which a window ending at ``window_end_us`` closes."""
        return window_end_us + self.grace_us

    def is_closed(self, window_end_us: int, watermark: int) -> bool:
        return watermark >= window_end_us + self.grace_us


class Watermark:
    """A monotonic event-time watermark: max event time seen minus the allowed lateness."""

    __slots__ = ("lateness_us", "value")

    def __init__(self, lateness_us: int, value: int = NO_WATERMARK):
        self.lateness_us = lateness_us
        self.value = value

    def observe(self, ts_us: int) -> None:
        candidate = ts_us - self.lateness_us
        if candidate > self.value:
            self.value = candidate

    def advance_to(self, value: int) -> None:
        if value > self.value:
            self.value = value
