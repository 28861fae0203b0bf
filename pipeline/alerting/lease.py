"""Active/standby among rule-engine replicas of one engine id, through a Kafka consumer group (as the notifier's).

Every replica of ``alerts run --engine-id ID`` joins the group ``<prefix>marketprism-alerting-<ID>`` on
``ops.alerting_checkpoints.v1`` (one partition; paused: the group is used for membership only). The replica the group
gives partition 0 runs the engine; the others wait, joined, and run nothing. So two replicas never both publish:

- **Crash** (kill -9, node loss): the group drops the dead member after ``kafka.session_timeout_ms``, a standby gets
  the partition and starts the engine the way a restart does: it restores the checkpoint and ``ops.alerts.v1`` and
  does not publish again what the dead one already published (:mod:`pipeline.alerting.runner`).
- **Handover** (a replica joins or leaves cleanly, a rollout): the rebalance revokes the partition from the active
  replica first, and the revocation waits for its engine to stop (final checkpoint written) before the group
  assigns the partition again, so the next active starts from that checkpoint.

Not covered: a replica frozen (SIGSTOP, a long GC pause) or cut off from the broker while it can still produce keeps
publishing until it notices; the next active's restore then skips what already reached ``ops.alerts.v1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import ConsumerRebalanceListener, TopicPartition

from pipeline.alerting.runner import RuleEngineRunner
from pipeline.contracts.topics import ALERTING_CHECKPOINTS
from pipeline.kafka import make_consumer
from pipeline.observability.health import HEALTH, Health, Status
from pipeline.observability.metrics import gauge
from pipeline.settings import Settings

log = logging.getLogger(__name__)

ACTIVE = gauge("alerting_active", "1 while this rule-engine replica holds its engine id's lease and runs the engine")
# A dead active replica is noticed after this (the lease group's own session timeout, below the components' default:
# a takeover costs it plus one rebalance plus the restore; a replica whose loop stalls this long is not live anyway)
LEASE_SESSION_TIMEOUT_MS = 6000
STOP_WAIT_S = 30.0  # how long a revocation waits for the engine to stop (its final checkpoint) before going on


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lease: EngineLease):
        self._lease = lease

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._lease.release()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._lease.on_assigned(set(assigned))


class EngineLease:
    """Membership in the engine id's lease group; ``held`` while this replica may run the engine."""

    def __init__(self, settings: Settings, engine_id: str):
        self.topic = settings.topic(ALERTING_CHECKPOINTS.name)
        self.group = f"{settings.topic_prefix}marketprism-alerting-{engine_id}"
        self._consumer = make_consumer(
            settings.kafka,
            group_id=self.group,
            session_timeout_ms=min(settings.kafka.session_timeout_ms, LEASE_SESSION_TIMEOUT_MS),
        )
        self.held = False
        self.joined = False
        self._engine_stop: asyncio.Event | None = None
        self._engine: asyncio.Task[None] | None = None

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._consumer.pause(*assigned)
        self.joined = True
        self.held = TopicPartition(self.topic, 0) in assigned
        ACTIVE.set(int(self.held))
        log.warning("rule engine lease (%s): %s", self.group, "ACTIVE" if self.held else "standby")

    def running(self, engine: asyncio.Task[None], engine_stop: asyncio.Event) -> None:
        """The engine this replica started while holding the lease (stopped when the lease goes)."""
        self._engine, self._engine_stop = engine, engine_stop

    async def release(self) -> None:
        """Give up the lease: stop the engine and wait until it has (it publishes nothing after this returns)."""
        was_held, self.held = self.held, False
        ACTIVE.set(0)
        if self._engine_stop is not None:
            self._engine_stop.set()
        if self._engine is not None and not self._engine.done():
            log.warning("rule engine lease (%s) revoked: stopping the engine", self.group)
            await asyncio.wait({self._engine}, timeout=STOP_WAIT_S)
        elif was_held:
            log.warning("rule engine lease (%s) revoked", self.group)

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe([self.topic], listener=_Listener(self))

    async def poll(self) -> None:
        """Keep the membership alive (the partition is paused: nothing is fetched)."""
        await self._consumer.getmany(timeout_ms=0)

    async def stop(self) -> None:
        self.held = False
        ACTIVE.set(0)
        await self._consumer.stop()


async def run_with_lease(
    settings: Settings,
    engine_id: str,
    make_runner: Callable[[], RuleEngineRunner],
    stop: asyncio.Event,
    health: Health = HEALTH,
    poll_s: float = 0.2,
) -> None:
    """Wait for the lease, run the engine while it is held, wait again when it goes; until ``stop`` is set.

    A standby is ready (``/readyz``) once it has joined the group: it is serving its purpose."""
    lease = EngineLease(settings, engine_id)
    current: list[RuleEngineRunner] = []

    def readiness() -> Status:
        if not lease.joined:
            return Status(False, f"joining the lease group {lease.group}")
        if not lease.held:
            return Status(True, "standby")
        if current and current[-1].ready.is_set():
            return Status(True, "active")
        return Status(False, "active: restoring its checkpoint and positioning its inputs")

    health.add("rule engine", readiness)
    await lease.start()
    log.info("rule engine %s: waiting for the lease of group %s", engine_id, lease.group)
    try:
        while not stop.is_set():
            await lease.poll()
            if not lease.held:
                await asyncio.sleep(poll_s)
                continue
            runner = make_runner()
            current[:] = [runner]
            engine_stop = asyncio.Event()
            engine = asyncio.create_task(runner.run(engine_stop))
            lease.running(engine, engine_stop)
            while not engine.done():
                if stop.is_set():
                    engine_stop.set()
                await lease.poll()
                await asyncio.wait({engine}, timeout=poll_s)
            engine.result()  # an engine that failed ends the process (the orchestrator restarts it)
            current.clear()
    finally:
        with contextlib.suppress(Exception):
            await lease.stop()
