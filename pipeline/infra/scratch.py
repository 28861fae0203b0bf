"""Scratch pipelines for benchmarks: a topic prefix of their own with the registry applied, optionally on a
Tansu broker of their own in a temporary directory (started on a free port, stopped by PID at the end)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pipeline.infra.services import broker_service, free_port
from pipeline.settings import KafkaSettings, Settings


async def with_fresh_prefix(settings: Settings, stem: str = "bench") -> Settings:
    """``settings`` under a new topic prefix (``<prefix><stem><random>.``) with the topic registry applied."""
    from pipeline.contracts import load_registry
    from pipeline.kafka.admin import apply

    fresh = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}{stem}{uuid.uuid4().hex[:8]}."})
    await apply(fresh.kafka, load_registry(), fresh.topic_prefix)
    return fresh


@asynccontextmanager
async def scratch_broker(base: Settings, name: str = "bench") -> AsyncIterator[tuple[Settings, Path]]:
    """A broker of its own: yields (settings pointing at it under a fresh prefix with the registry applied and
    ``state_dir`` in the work directory, the work directory); everything is gone after the block."""
    with tempfile.TemporaryDirectory(prefix=f"mp-{name}-") as tmp:
        work = Path(tmp)
        broker = broker_service(work / "broker", port=free_port())
        broker.start()
        try:
            local = base.model_copy(
                update={"kafka": KafkaSettings(bootstrap_servers=broker.address), "state_dir": work / "state"}
            )
            yield await with_fresh_prefix(local), work
        finally:
            broker.stop()
