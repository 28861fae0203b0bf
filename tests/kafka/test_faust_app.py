"""The Faust app factory works on Tansu: a worker process joins its group quickly and processes records."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.contracts import Trade, encode
from pipeline.contracts.examples import EXAMPLES
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


async def test_factory_worker_joins_and_processes(topics: Settings, tmp_path: Path) -> None:
    env = os.environ | {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": topics.kafka.bootstrap_servers,
        "MARKETPRISM_TOPIC_PREFIX": topics.topic_prefix,
        "MARKETPRISM_STATE_DIR": str(tmp_path),
        "ECHO_APP_ID": "echo",
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("faust_echo_app.py")),
        "worker",
        "-l",
        "warn",
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    producer = make_producer(topics.kafka)
    consumer = make_consumer(topics.kafka, topics.topic("ops.dlq.v1"), group_id="echo-check")
    await producer.start()
    await consumer.start()
    try:
        started = time.monotonic()
        value = encode(EXAMPLES[Trade])
        keys = [f"binance:K{i}".encode() for i in range(20)]
        for key in keys:
            await producer.send_and_wait(topics.topic("md.trades.v1"), value, key=key)
        seen: list[bytes] = []
        async with asyncio.timeout(90):
            while len(seen) < len(keys):
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    seen += [m.key for m in messages if m.value == value]
        # Informational only (no timed assertion): how long join + processing took on this machine.
        print(f"faust worker joined and echoed {len(keys)} records in {time.monotonic() - started:.1f}s")
        assert sorted(seen) == sorted(keys)
    finally:
        await consumer.stop()
        await producer.stop()
        worker.terminate()
        try:
            await asyncio.wait_for(worker.wait(), 30)
        except TimeoutError:
            worker.kill()
            await worker.wait()
        log.close()
