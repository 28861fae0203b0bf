"""The one backoff policy of hand-driven retry loops: capped exponential backoff with full jitter.

``delay = uniform(0, min(cap, base * 2**attempt))`` (the "full jitter" scheme of AWS's *Exponential
Backoff and Jitter*), so a fleet of processes that lost a venue or a broker at the same moment does not
come back in lock-step. Used by the collectors' reconnects, REST retries and producer pump, the
supervisor's restarts and the bar worker's re-delivery of bars; retries wrapped around one call use
tenacity (``wait_exponential_jitter``) instead. The random source is injected so tests can pin it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Uniform = Callable[[float, float], float]


class Backoff:
    """Successive delays of one reconnecting connection; :meth:`reset` after a healthy session."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0, uniform: Uniform = random.uniform):
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={base_s}, cap_s={cap_s}")
        self.base_s = base_s
        self.cap_s = cap_s
        self._uniform = uniform
        self.attempt = 0

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay drawn for ``attempt`` (0-based)."""
        return float(min(self.cap_s, self.base_s * 2 ** min(attempt, 62)))

    def delay(self, attempt: int, uniform: Uniform | None = None) -> float:
        """A delay for ``attempt`` (0-based) without touching the counter (callers that count attempts)."""
        return (uniform or self._uniform)(0.0, self.ceiling(attempt))

    def next_delay(self) -> float:
        delay = self._uniform(0.0, self.ceiling(self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
