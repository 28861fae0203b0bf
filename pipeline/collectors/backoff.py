"""Reconnect delays: capped exponential backoff with full jitter.

``delay = uniform(0, min(cap, base * 2**attempt))`` (the "full jitter" scheme of AWS's *Exponential
Backoff and Jitter*), so a fleet of collectors that lost a venue at the same moment does not come
back in lock-step. The random source is injected so tests can pin it.
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

    def next_delay(self) -> float:
        delay = self._uniform(0.0, self.ceiling(self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
