"""Composition of stages: a sequence (stop at the first stage that returns None) and a fan-out
(the same batch to every channel of a receiver, concurrently), and the builder of each receiver's
chain: fan-out over its channels of dedup -> rate limit -> retry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from pipeline.notify.base import Batch, Clock, ReceiptSink, Stage
from pipeline.notify.channels import Channel, build_channel
from pipeline.notify.config import ReceiverConfig
from pipeline.notify.dedup import DedupStage
from pipeline.notify.nflog import NotificationLog
from pipeline.notify.ratelimit import RateLimitStage
from pipeline.notify.retry import RetryConfig, RetryStage

log = logging.getLogger(__name__)


class SequenceStage:
    def __init__(self, stages: Sequence[Stage]):
        self._stages = list(stages)

    async def exec(self, batch: Batch) -> Batch | None:
        current: Batch | None = batch
        for stage in self._stages:
            if current is None:
                return None
            current = await stage.exec(current)
        return current


class FanoutStage:
    """Runs each ``(integration, stage)`` branch on the batch; returns the batch when any branch sent."""

    def __init__(self, branches: Sequence[tuple[str, Stage]]):
        self._branches = list(branches)

    async def exec(self, batch: Batch) -> Batch | None:
        results = await asyncio.gather(
            *(stage.exec(msgspec.structs.replace(batch, integration=name)) for name, stage in self._branches),
            return_exceptions=True,
        )
        for (name, _), result in zip(self._branches, results, strict=True):
            if isinstance(result, Exception):
                log.error("%s/%s: stage failed: %r", batch.receiver, name, result, exc_info=result)
        return batch if any(isinstance(r, Batch) for r in results) else None


def integration_names(receiver: ReceiverConfig) -> list[str]:
    """``slack``, ``slack#1``, ... : one stable name per channel of a receiver."""
    seen: dict[str, int] = {}
    names = []
    for config in receiver.channels:
        index = seen.get(config.type, 0)
        seen[config.type] = index + 1
        names.append(config.type if index == 0 else f"{config.type}#{index}")
    return names


def receiver_stage(
    receiver: ReceiverConfig,
    nflog: NotificationLog,
    sink: ReceiptSink,
    clock: Clock,
    retry: RetryConfig,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[Stage, list[Channel]]:
    """The receiver's chain and the channels it owns (to close at shutdown)."""
    branches: list[tuple[str, Stage]] = []
    channels: list[Channel] = []
    for name, config in zip(integration_names(receiver), receiver.channels, strict=True):
        channel = build_channel(config)
        channels.append(channel)
        stages: list[Stage] = [DedupStage(nflog, sink, clock, config.send_resolved)]
        if config.rate_limit is not None:
            stages.append(RateLimitStage(config.rate_limit, f"{receiver.name}/{name}"))
        stages.append(RetryStage(channel, retry, sink, clock, sleep))
        branches.append((name, SequenceStage(stages)))
    return FanoutStage(branches), channels
