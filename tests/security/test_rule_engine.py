"""The rule engine against a writer of its topics: forged checkpoints are refused (dead letter, counter) and the
engine starts without them; a silence that decodes but breaks the engine is dead-lettered and the next one applies."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from pipeline.alerting import control
from pipeline.alerting import silence as silence_stage
from pipeline.alerting.metrics import CHECKPOINTS_REFUSED
from pipeline.alerting.rules import load_rules
from pipeline.alerting.runner import SEAL_HEADER, SEAL_PURPOSE, RuleEngineRunner, RunnerOptions
from pipeline.contracts import encode
from pipeline.contracts.records import RuleEngineCheckpoint, Silence
from pipeline.kafka import make_producer
from pipeline.kafka.sealed import Sealer
from pipeline.settings import Settings
from tests.security.conftest import dead_letters

FORGED_NOW = 4_000_000_000_000_000  # a forged state would throw event time to the year 2096


def forged_checkpoint(engine_id: str) -> bytes:
    state = f'{{"now":{FORGED_NOW},"instances":[],"peers":{{}},"slots":[],"silences":[]}}'
    return encode(RuleEngineCheckpoint(engine_id=engine_id, ts=1, offsets={}, state=state))


def silence(silence_id: str, matcher: str) -> Silence:
    return Silence(
        silence_id=silence_id,
        matchers=[matcher],
        starts_at=1_000_000,
        ends_at=FORGED_NOW,
        author="sre",
        comment="maintenance",
        created_at=1_000_000,
    )


async def test_forged_checkpoints_are_refused_and_a_poison_silence_is_dead_lettered(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = topics
    # fault injection: applying the silence "boom" raises what no input check anticipates (the engine's generic
    # containment: dead letter `processing_error`, next record applied)
    real_check = silence_stage.check

    def check(item: Silence) -> None:
        if item.silence_id == "boom":
            raise RuntimeError("injected fault")
        real_check(item)

    monkeypatch.setattr(silence_stage, "check", check)
    value = forged_checkpoint("alerting")
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        checkpoints = settings.topic(control.CHECKPOINTS_TOPIC)
        await producer.send_and_wait(checkpoints, value, key=b"alerting")  # no seal at all
        wrong = Sealer(SEAL_PURPOSE, os.urandom(32)).tag(value)  # sealed under a key that is not the engine's
        await producer.send_and_wait(checkpoints, value, key=b"alerting", headers=[(SEAL_HEADER, wrong)])
        silences = settings.topic(control.SILENCES_TOPIC)
        # decodes, but compiling its regex overflows re's compiler: refused as a bad silence (it used to crash-loop)
        await producer.send_and_wait(silences, encode(silence("evil", 'symbol=~"a{99999999999}"')), key=b"evil")
        await producer.send_and_wait(silences, encode(silence("boom", 'symbol="ETH-USDT"')), key=b"boom")
        await producer.send_and_wait(silences, encode(silence("good", 'symbol="BTC-USDT"')), key=b"good")
    finally:
        await producer.stop()
    before = {
        r: CHECKPOINTS_REFUSED.labels(reason=r)._value.get() for r in ("checkpoint_unsealed", "checkpoint_bad_tag")
    }

    runner = RuleEngineRunner(settings, load_rules(), RunnerOptions(idle_advance_us=0))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        letters = await dead_letters(
            settings,
            lambda got: (
                {"checkpoint_unsealed", "checkpoint_bad_tag", "bad_silence", "processing_error"}
                <= {d.reason for d in got}
            ),
            timeout_s=120,
        )
        async with asyncio.timeout(60):
            while "good" not in runner.engine.silences and not task.done():  # noqa: ASYNC110 - the engine's own loop
                await asyncio.sleep(0.2)
        alive = not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert alive and "good" in runner.engine.silences and not {"evil", "boom"} & set(runner.engine.silences)
    assert runner.engine.now < FORGED_NOW  # neither forged state was restored
    by_reason = {d.reason: d for d in letters}
    assert by_reason["checkpoint_unsealed"].topic == settings.topic(control.CHECKPOINTS_TOPIC)
    assert by_reason["checkpoint_bad_tag"].offset == 1
    evil = by_reason["bad_silence"]
    assert evil.topic == settings.topic(control.SILENCES_TOPIC) and "bad regex" in evil.error
    poison = by_reason["processing_error"]
    assert poison.topic == settings.topic(control.SILENCES_TOPIC) and "injected fault" in poison.error
    for reason, count in before.items():
        assert CHECKPOINTS_REFUSED.labels(reason=reason)._value.get() == count + 1


async def test_a_restarted_engine_resumes_from_its_own_sealed_checkpoint(
    topics: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The seal does not refuse what the engine wrote itself: a second run resumes from the first one's checkpoint."""
    producer = make_producer(topics.kafka)
    await producer.start()
    try:
        good = silence("good", 'symbol="BTC-USDT"')
        await producer.send_and_wait(topics.topic(control.SILENCES_TOPIC), encode(good), key=b"good")
    finally:
        await producer.stop()
    caplog.set_level(logging.INFO, logger="pipeline.alerting.runner")
    for _ in range(2):
        runner = RuleEngineRunner(topics, load_rules(), RunnerOptions(idle_advance_us=0, checkpoint_interval_us=0))
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        async with asyncio.timeout(60):
            while "good" not in runner.engine.silences and not task.done():  # noqa: ASYNC110 - the engine's own loop
                await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, 60)
    records = await control.read_raw(topics, control.CHECKPOINTS_TOPIC)
    assert records and all(dict(r.headers)[SEAL_HEADER] for r in records)
    assert not runner._refused and "good" in runner.engine.silences
    resumed = [r for r in caplog.records if r.getMessage().startswith("resumed from checkpoint")]
    assert len(resumed) == 1  # the second run, from the first one's sealed checkpoint
