"""The worker's rewinds run on the thread that owns Faust's aiokafka consumer (issue 16, the crash after restart).

Faust runs aiokafka in a thread of its own; ``Consumer.seek`` called aiokafka's ``seek`` from the agent's
thread, and the fetcher's ``seek_to`` deleted the partition's buffered records while that thread was
draining them: ``KeyError(TopicPartition(...))`` in ``fetched_records``, "We experienced a crash!", the
worker died. A real app on the real broker; the fetcher's ``seek_to`` is observed (and still run).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher

from pipeline.aggregation.app import build_app, ensure_internal_topics
from pipeline.settings import Settings


async def test_rewinds_run_on_the_consumer_thread(topics: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, str, int, int]] = []
    seek_to = Fetcher.seek_to

    def observed(self: Fetcher, tp: Any, offset: int) -> None:
        calls.append((threading.get_ident(), tp.topic, tp.partition, offset))
        seek_to(self, tp, offset)

    monkeypatch.setattr(Fetcher, "seek_to", observed)
    await ensure_internal_topics(topics)
    app = build_app(topics)
    await app.start()
    try:
        async with asyncio.timeout(90):
            while not app.consumer.assignment():  # noqa: ASYNC110 - the consumer thread sets it, no event
                await asyncio.sleep(0.2)
        trades = topics.topic("md.trade_batches.v1")
        await app.bars_worker.seek(trades, 0, 0)  # type: ignore[attr-defined]
        rewinds = [call for call in calls if call[1:] == (trades, 0, 0)]
        assert rewinds
        assert all(thread != threading.get_ident() for thread, *_ in rewinds)  # on the consumer's thread
    finally:
        await app.stop()
