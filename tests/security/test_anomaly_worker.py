"""The anomaly worker against a writer of its topics: forged checkpoints on its changelog are refused (dead letter,
counter) without running their code, and a bar that decodes but breaks scoring is dead-lettered while the worker
goes on with the next records."""

from __future__ import annotations

import asyncio
import os
import pickle
import zlib
from pathlib import Path

import msgspec
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.anomaly.checkpoint import loads
from pipeline.contracts import encode, market_key
from pipeline.infra import free_port
from pipeline.kafka.clients import client_options, make_producer
from pipeline.kafka.producer import KeyHashPartitioner
from pipeline.kafka.sealed import Sealer, sealer_for
from pipeline.settings import Settings
from tests.anomaly.helpers import bars
from tests.conftest import read_to_end
from tests.security.conftest import component, dead_letters, metric_value, scrape

ARGS = ("anomaly", "--warmup", "50", "--checkpoint-every", "10", "--checkpoint-interval", "3600")
ARGS += ("--health-interval", "3600")


class RunsCode:
    """A pickle that, if loaded by a plain ``pickle.loads``, creates a file (the proof that code ran)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


async def test_forged_checkpoints_are_refused_and_a_poison_bar_is_dead_lettered(
    topics: Settings, tmp_path: Path
) -> None:
    settings = topics
    changelog = settings.topic("anomaly-bar-models-changelog")
    # The worker's own changelog, created as the worker would (6 partitions, as its bars table), before it starts.
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(changelog, num_partitions=6, replication_factor=1)])
    finally:
        await admin.close()
    marker = tmp_path / "code-ran"
    evil = zlib.compress(pickle.dumps(RunsCode(marker)))
    partition = KeyHashPartitioner()(market_key("okx", "ETH-USDT"), list(range(6)), list(range(6)))
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        # an attacker's pickle as it was before sealing, and one sealed under a key that is not the worker's
        await producer.send_and_wait(changelog, evil, key=b"okx:ETH-USDT:1s:volume", partition=partition)
        forged = Sealer("anomaly-series-state", os.urandom(32)).seal(evil)
        await producer.send_and_wait(changelog, forged, key=b"okx:ETH-USDT:1s:trade_count", partition=partition)
    finally:
        await producer.stop()

    history = bars("okx", "ETH-USDT", 131, seed=7)
    poison_at = 80
    # A decodable bar that makes River's predictive detector overflow ((y_pred - y) ** 2 with y = 1e300).
    poison = msgspec.structs.replace(history[poison_at], volume="1" + "0" * 300)
    port = free_port()
    env = {"MARKETPRISM_METRICS_PORT": str(port)}
    with component(settings, tmp_path / "worker.log", *ARGS, env=env) as proc:
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            for bar in [*history[:poison_at], poison, *history[poison_at + 1 :]]:
                await producer.send(settings.topic("md.bars.1s.v1"), encode(bar), key=market_key("okx", "ETH-USDT"))
            await producer.flush()
        finally:
            await producer.stop()
        letters = await dead_letters(
            settings,
            lambda got: {"checkpoint_unsealed", "checkpoint_bad_tag", "processing_error"} <= {d.reason for d in got},
            timeout_s=180,
        )
        # every bar after the poison one is learned: the trade-count series reaches 130 points (131 bars minus
        # the poison one), checkpointed every 10
        sealer = sealer_for(settings, "anomaly-series-state")

        async def trade_count_seen() -> int:
            records = await read_to_end(settings, "anomaly-bar-models-changelog")
            mine = [r.value for r in records if r.key == b"okx:ETH-USDT:1s:trade_count" and r.value != forged]
            return max((loads(value, sealer).detector.seen for value in mine if value), default=0)

        text = await scrape(port, lambda t: 'anomaly_restores_total{result="refused"} 2.0' in t)
        seen = 0
        async with asyncio.timeout(180):
            while (seen := await trade_count_seen()) < 130 and proc.poll() is None:  # noqa: ASYNC110 - polls the broker
                await asyncio.sleep(1)
        alive = proc.poll() is None
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert alive and seen == 130, log[-3000:]
    assert not marker.exists()  # the forged pickle's code never ran
    by_reason = {d.reason: d for d in letters}
    assert by_reason["checkpoint_unsealed"].topic == changelog
    assert "okx:ETH-USDT:1s:volume" in by_reason["checkpoint_unsealed"].error
    assert "okx:ETH-USDT:1s:trade_count" in by_reason["checkpoint_bad_tag"].error
    assert by_reason["processing_error"].offset == poison_at and "OverflowError" in by_reason["processing_error"].error
    assert metric_value(text, 'marketprism_anomaly_poison_records_total{source="bars"}') == 1
    assert metric_value(text, 'marketprism_dead_letters_total{reason="processing_error",source="anomaly"}') == 1
