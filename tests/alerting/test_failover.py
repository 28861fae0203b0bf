"""Two rule-engine replicas with one engine id (pipeline/alerting/lease.py): one is active, the other a standby that
publishes nothing; kill -9 of the active one mid-stream, the standby takes over, and ops.alerts.v1 holds exactly the
transitions of an uninterrupted run (none lost, none doubled)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline.infra import free_port
from pipeline.settings import Settings
from tests.alerting.conftest import MARKETPRISM, engine_env
from tests.alerting.test_kill import DURATION_S, RULES, _inputs, _key


class Replica:
    def __init__(self, settings: Settings, tmp: Path, index: int, *args: str):
        self.port = free_port()
        self.log_path = tmp / f"replica-{index}.log"
        self.log = self.log_path.open("wb")
        env = engine_env(settings) | {"MARKETPRISM_METRICS_PORT": str(self.port)}
        self.proc = subprocess.Popen(  # our own entry point, arguments from the test
            [MARKETPRISM, "alerts", "run", *args], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def role(self) -> str | None:
        """``active`` / ``standby`` from /readyz once this replica is ready, else None."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=10) as answer:
                doc: dict[str, Any] = json.loads(answer.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return str(doc["checks"]["rule engine"]["detail"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


async def _lease_taken(settings: Settings, engine_id: str, wait_s: float = 120.0) -> bool:
    """Join the engine id's lease group without running an engine; True once this member holds the lease (then it
    leaves the group)."""
    from pipeline.alerting.lease import EngineLease

    lease = EngineLease(settings, engine_id)
    await lease.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not lease.held and loop.time() < deadline:
            await lease.poll()
            await asyncio.sleep(0.2)
        return lease.held
    finally:
        await lease.stop()


async def _roles(replicas: list[Replica], want: set[str], wait_s: float = 120.0) -> list[str | None]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        for r in replicas:
            assert r.proc.poll() is None, r.log_path.read_text()[-3000:]
        roles = [await asyncio.to_thread(r.role) for r in replicas]
        if (set(roles) == want and len(roles) == len(want)) or loop.time() > deadline:
            return roles
        await asyncio.sleep(0.2)


async def test_standby_takes_over_after_kill_9_and_nothing_is_doubled(  # type: ignore[no-untyped-def]
    topics: Settings, tmp_path: Path, scenario, rec, kafka_io
) -> None:
    seconds = _inputs(rec)
    reference = scenario(RULES)
    for t, records in enumerate(seconds):
        reference.at(t, *records)
    expected = sorted(_key(a) for a in reference.alerts)

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    args = ("--no-core", "--rules", str(rules), "--from", "earliest", "--idle-advance", "0", "--lag-interval", "0")
    replicas = [Replica(topics, tmp_path, i, *args) for i in range(2)]
    try:
        roles = await _roles(replicas, {"active", "standby"})
        assert sorted(map(str, roles)) == ["active", "standby"], roles
        active = replicas[roles.index("active")]
        standby = replicas[roles.index("standby")]

        async def stream() -> None:
            for start in range(0, DURATION_S, 10):
                await kafka_io.produce(topics, [r for records in seconds[start : start + 10] for r in records])
                await asyncio.sleep(0.3)

        producing = asyncio.create_task(stream())
        await kafka_io.wait_for(topics, lambda got: len(got) >= len(expected) // 4)
        os.kill(active.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.to_thread(active.proc.wait, 30)
        before = len(await kafka_io.wait_for(topics, lambda got: True))

        assert await _roles([standby], {"active"}) == ["active"]
        print(f"takeover: standby active {time.monotonic() - killed_at:.1f} s after the kill -9")
        await producing
        got = await kafka_io.wait_for(topics, lambda alerts: len(alerts) >= len(expected), wait_s=180)
        standby.close()  # SIGTERM: a clean stop, its last publishes flushed
        got = await kafka_io.wait_for(topics, lambda alerts: True)
    finally:
        for replica in replicas:
            replica.close()
    assert before < len(expected)
    assert sorted(_key(a) for a in got) == expected


@pytest.mark.xfail(
    strict=False,
    reason="known race, open in issue 21: after SIGCONT the frozen engine can still evaluate and publish records "
    "fetched before it notices the lost lease, then restarts from its older checkpoint and publishes them again "
    "(failed 1 of 2 runs alone on 2026-12-03; passed in both full runs). Needs the engine to check the lease before "
    "publishing, or transactional fencing.",
)
async def test_a_frozen_engine_resumes_its_lease_and_doubles_nothing(  # type: ignore[no-untyped-def]
    topics: Settings, tmp_path: Path, scenario, rec, kafka_io
) -> None:
    """SIGSTOP past the lease group's session timeout: the group drops the member; after SIGCONT the replica notices,
    stops its engine, rejoins, gets the lease back and resumes from its checkpoint. (A second replica active during
    the freeze is the case the lease does not cover: pipeline/alerting/lease.py.)"""
    seconds = _inputs(rec)
    reference = scenario(RULES)
    for t, records in enumerate(seconds):
        reference.at(t, *records)
    expected = sorted(_key(a) for a in reference.alerts)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    args = ("--no-core", "--rules", str(rules), "--from", "earliest", "--idle-advance", "0", "--lag-interval", "0")
    replica = Replica(topics, tmp_path, 0, *args)
    try:
        assert await _roles([replica], {"active"}) == ["active"]
        half = DURATION_S // 2
        await kafka_io.produce(topics, [r for records in seconds[:half] for r in records])
        await kafka_io.wait_for(topics, lambda got: len(got) >= len(expected) // 4)
        replica.proc.send_signal(signal.SIGSTOP)
        # frozen until the group has dropped it: a bare lease member (no engine: nobody publishes meanwhile) joins, and
        # gets the lease once the coordinator has evicted the frozen one; then it leaves
        assert await _lease_taken(topics, "alerting")
        replica.proc.send_signal(signal.SIGCONT)
        await kafka_io.produce(topics, [r for records in seconds[half:] for r in records])
        assert await _roles([replica], {"active"}) == ["active"]
        got = await kafka_io.wait_for(topics, lambda alerts: len(alerts) >= len(expected), wait_s=180)
        replica.close()
        got = await kafka_io.wait_for(topics, lambda alerts: True)
    finally:
        replica.close()
    assert sorted(_key(a) for a in got) == expected
