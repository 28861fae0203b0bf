"""Rate-limit stage: at most ``max`` messages per ``per`` seconds for one channel (aiolimiter's
leaky bucket). A message over the limit waits for capacity; it is never dropped."""

from __future__ import annotations

import logging

from aiolimiter import AsyncLimiter
from pydantic import BaseModel, ConfigDict, Field

from pipeline.notify.base import Batch
from pipeline.notify.durations import Seconds
from pipeline.observability.metrics import counter

log = logging.getLogger(__name__)

RATE_LIMITED = counter("notify_rate_limited_total", "Notifications that waited for a channel's rate limit", ["channel"])


class RateLimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max: float = Field(gt=0, description="messages allowed per period")
    per: Seconds = Field(default=60.0, gt=0, description="the period")


class RateLimitStage:
    def __init__(self, config: RateLimitConfig, integration: str):
        self._limiter = AsyncLimiter(config.max, config.per)
        self._integration = integration

    async def exec(self, batch: Batch) -> Batch | None:
        if not self._limiter.has_capacity():
            RATE_LIMITED.labels(channel=self._integration).inc()
            log.info("%s/%s: rate limit reached, waiting", batch.receiver, self._integration)
        await self._limiter.acquire()
        return batch
