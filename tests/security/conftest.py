"""Helpers of the security tests: a ``marketprism`` component as a real process with extra environment,
its ``/metrics`` scraped over loopback, dead letters read back from the broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from pipeline.contracts import DeadLetter, decoder_for
from pipeline.kafka.clients import make_consumer
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def component(
    settings: Settings, log_path: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``marketprism <args>`` on the test's broker, prefix and state dir; stopped by PID."""
    full_env = os.environ | {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix,
        "MARKETPRISM_STATE_DIR": str(settings.state_dir),
        "MARKETPRISM_CLICKHOUSE_URL": str(settings.clickhouse_url),
        "MARKETPRISM_METRICS_PORT": "0",
        "MARKETPRISM_LOG_LEVEL": "INFO",
    }
    exe = Path(sys.executable).parent / "marketprism"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(exe), *args], cwd=ROOT, env=full_env | (env or {}), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def scrape(port: int, until: Callable[[str], bool] = lambda _: True, timeout_s: float = 120.0) -> str:
    """``/metrics`` of a process on 127.0.0.1, once ``until(text)`` holds (polled: the process may still start)."""
    text = ""
    async with httpx.AsyncClient() as client, asyncio.timeout(timeout_s):
        while True:
            try:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.TransportError:
                text = ""
            if text and until(text):
                return text
            await asyncio.sleep(0.5)


def metric_value(text: str, line_prefix: str) -> float:
    """The value of the sample line starting with ``line_prefix`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def dead_letters(
    settings: Settings, until: Callable[[list[DeadLetter]], bool], timeout_s: float
) -> list[DeadLetter]:
    """Dead letters of the test's prefix read from the beginning until ``until(letters)`` holds."""
    decode = decoder_for(DeadLetter).decode
    consumer = make_consumer(settings.kafka, settings.topic("ops.dlq.v1"), group_id=None)
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        async with asyncio.timeout(timeout_s):
            while not until(letters):
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    letters += [decode(m.value) for m in messages if m.value]
    finally:
        await consumer.stop()
    return letters
