"""Retry stage: calls the channel with capped, jittered exponential backoff (tenacity), publishes a
receipt for every attempt on ``ops.notifications.v1`` (an intent ``sending`` first, ``retrying``,
then ``sent`` or ``dead_lettered``) and a dead letter on ``ops.dlq.v1`` once the last attempt failed or the channel
said retrying cannot help."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from pipeline.contracts import Notification
from pipeline.notify.base import Batch, ChannelError, Clock, ReceiptSink
from pipeline.notify.channels import Channel
from pipeline.notify.channels.base import channel_secrets, redact
from pipeline.notify.durations import Seconds
from pipeline.observability.metrics import counter, histogram

log = logging.getLogger(__name__)

ATTEMPTS = counter("notify_attempts_total", "Delivery attempts by channel and result", ["channel", "status"])
LATENCY = histogram(
    "notify_attempt_seconds", "Duration of one delivery attempt", ["channel"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30)
)


class RetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(default=5, ge=1)
    initial: Seconds = 1.0  # backoff multiplier: attempt n waits up to initial * 2**n (jittered)
    max: Seconds = 60.0  # backoff cap


class _Retry(Exception):
    """One attempt failed in a way worth retrying."""


class RetryStage:
    def __init__(
        self,
        channel: Channel,
        config: RetryConfig,
        sink: ReceiptSink,
        clock: Clock,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self._channel = channel
        self._config = config
        self._sink = sink
        self._clock = clock
        self._sleep = sleep

    async def exec(self, batch: Batch) -> Batch | None:
        # The intent, durable before the first attempt: after a crash it tells "never tried" (send) from "maybe
        # delivered" (send again marked as a redelivery, same key).
        await self._sink.receipt(receipt(batch, "sending", 1, self._clock.now_us(), None, None))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._config.attempts),
            wait=wait_random_exponential(multiplier=self._config.initial, max=self._config.max),
            retry=retry_if_exception_type(_Retry),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number
                error, retryable, elapsed = await self._attempt(batch)
                if error is None:
                    await self._record(batch, "sent", number, None, elapsed)
                    return batch
                if retryable and number < self._config.attempts:
                    log.info(
                        "%s/%s attempt %d failed, will retry: %s", batch.receiver, batch.integration, number, error
                    )
                    await self._record(batch, "retrying", number, error, elapsed)
                    raise _Retry(error)
                log.warning("%s/%s: giving up on %s: %s", batch.receiver, batch.integration, batch.group_key, error)
                # The dead letter is queued before the settling receipt, whose flush makes both durable.
                await self._sink.dead_letter(batch, error)
                await self._record(batch, "dead_lettered", number, error, elapsed)
        return None

    async def _attempt(self, batch: Batch) -> tuple[str | None, bool, int]:
        started = self._clock.now_us()
        try:
            retryable, error = await self._channel.notify(batch)
        except ChannelError as exc:
            retryable, error = exc.retryable, str(exc)
        except Exception as exc:  # a channel bug or a message it chokes on: retried (bounded), then dead-lettered
            log.exception("%s/%s: channel raised", batch.receiver, batch.integration)
            retryable, error = True, redact(f"{type(exc).__name__}: {exc}", channel_secrets(self._channel))
        elapsed = max(self._clock.now_us() - started, 0)
        LATENCY.labels(channel=self._channel.kind).observe(elapsed / 1e6)
        return error, retryable, elapsed

    async def _record(self, batch: Batch, status: str, number: int, error: str | None, elapsed: int) -> None:
        ATTEMPTS.labels(channel=self._channel.kind, status=status).inc()
        await self._sink.receipt(receipt(batch, status, number, self._clock.now_us(), error, elapsed))


def receipt(
    batch: Batch, status: str, attempt: int, ts: int, error: str | None, latency_us: int | None
) -> Notification:
    """The ``ops.notifications.v1`` record of one attempt (or of a skipped duplicate)."""
    return Notification(
        notification_id=f"{batch.idempotency_key}-{attempt}-{status}",
        idempotency_key=batch.idempotency_key,
        channel=batch.integration,
        receiver=batch.receiver,
        group_key=batch.group_key,
        status=status,  # type: ignore[arg-type]
        attempt=attempt,
        ts=ts,
        fingerprints=sorted({a.fingerprint for a in batch.alerts}),
        error=error,
        latency_us=latency_us,
        firing=sorted(a.episode for a in batch.alerts if a.status in ("firing", "flapping", "muted")),
        resolved=sorted(a.episode for a in batch.alerts if a.status == "resolved"),
    )
