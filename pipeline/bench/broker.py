"""``marketprism bench broker``: what one fetch costs the local Tansu broker as a partition's stored batches grow.

Tansu's memory engine keeps every produced batch as an object and, on each fetch that returns records of a
partition, lists all of that partition's objects to find the offsets (the engine has no retention: deleting
records is not implemented). So the broker's CPU per fetch grows with the batches it keeps, and a pipeline that
writes small batches for an hour slows it down until it saturates (docs/benchmarks.md, "Long runs"). This bench
measures that: a scratch broker, one single-partition topic filled with one-record batches up to each level, then
rounds of "produce one record, fetch it", timed by the broker's own CPU time (``/proc``, the level's total over
its rounds) and by the wall clock (median). The first level is the run's baseline: the ratio column is each
level's CPU per round against it.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.infra.services import broker_service, cpu_seconds, free_port

TOPIC = "bench-broker"


@dataclass(frozen=True)
class LevelResult:
    batches: int  # one-record batches stored in the partition when the level was measured
    cpu_ms: float  # broker CPU per produce + fetch round (the level's total over its rounds)
    wall_ms: float  # median wall time per round


async def measure(levels: list[int], rounds: int) -> list[LevelResult]:
    """Broker CPU and wall time per produce + fetch round at each level of stored batches (ascending)."""
    results: list[LevelResult] = []
    with tempfile.TemporaryDirectory(prefix="mp-bench-broker-") as tmp:
        broker = broker_service(Path(tmp), port=free_port())
        status = broker.start()
        assert status.pid is not None
        process = psutil.Process(status.pid)
        try:
            admin = AIOKafkaAdminClient(bootstrap_servers=broker.address)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(TOPIC, 1, 1)])
            finally:
                await admin.close()
            producer = AIOKafkaProducer(bootstrap_servers=broker.address, linger_ms=0)
            consumer = AIOKafkaConsumer(bootstrap_servers=broker.address, fetch_max_wait_ms=10,
                                        enable_auto_commit=False)  # fmt: skip
            await producer.start()
            await consumer.start()
            try:
                tp = TopicPartition(TOPIC, 0)
                consumer.assign([tp])
                stored = 0
                for level in sorted(levels):
                    while stored < level:  # awaited one by one: each record is a batch (an object) of its own
                        await (await producer.send(TOPIC, b"x" * 100, partition=0))
                        stored += 1
                    consumer.seek(tp, stored)
                    wall = []
                    cpu_before = cpu_seconds(process)  # per level, not per round: the kernel counts in 10 ms ticks
                    for _ in range(rounds):
                        started = time.perf_counter()
                        await (await producer.send(TOPIC, b"y", partition=0))
                        stored += 1
                        while not (await consumer.getmany(tp, timeout_ms=30_000)).get(tp):
                            pass
                        wall.append((time.perf_counter() - started) * 1e3)
                    cpu_ms = (cpu_seconds(process) - cpu_before) * 1e3 / rounds
                    results.append(LevelResult(level, cpu_ms, statistics.median(wall)))
            finally:
                await consumer.stop()
                await producer.stop()
        finally:
            broker.stop()
    return results


def report(results: list[LevelResult], rounds: int) -> str:
    base = results[0].cpu_ms
    lines = [
        f"Tansu memory engine, one partition, {rounds} rounds of produce 1 + fetch it per level; broker CPU per"
        " round = the level's total / rounds (/proc, 10 ms ticks), wall = median round",
        "| stored batches | broker CPU ms / fetch | wall ms / round | CPU vs first level |",
        "|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{r.cpu_ms / base:.1f}x" if base > 0 else "n/a"
        lines.append(f"| {r.batches} | {r.cpu_ms:.2f} | {r.wall_ms:.1f} | {ratio} |")
    return "\n".join(lines)


def run_bench(levels: list[int], rounds: int) -> str:
    return report(asyncio.run(measure(levels, rounds)), rounds)
