"""The consumer-lag probe: measures committed lag of consumer groups (the ClickHouse sink, the Faust
workers) from the broker and publishes it as ``ConsumerLag`` records on ``ops.consumer_lag.v1``.

A sink that cannot reach ClickHouse stops committing, so its lag grows: that is how the rule engine
sees an unreachable database without the sink having to say so. The engine reads the probe's
records back from the topic like any input, so replays stay deterministic.

Every broker call of a round has a wall-time budget (``call_timeout_s``): a call not answered in time (an
offset fetch held while the group rebalances after its member was killed, say) is abandoned and the round goes
on with what it knows, so one slow answer cannot stall the rounds after it. The log ends are fetched once per
partition (:func:`pipeline.kafka.offsets.log_end_offsets`), so a round ends on a topic written all the time.
A group's committed offsets only move forward and stay put while it has no live member (a killed sink),
so when the fetch is not answered the round reuses the last offsets it got for the group: its lag keeps being
published against fresh log ends, and keeps growing while nobody commits.

Stall: every record carries ``stalled_s``, the wall seconds since the round that last saw the group's committed
offsets on the topic move (or nothing pending). A live sink or Faust worker commits about every second while
records wait, so a dead (SIGKILL) or hung (SIGSTOP) one is seen as soon as ``stalled_s`` passes a rule's bound
(SinkStalled, WorkerStalled: 15 s), however fast the lag grows on a loaded machine: the signal is the commits'
absence, not the lag's growth. Wall seconds, not pipeline seconds: commit cadences run on the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from pipeline.clock import Clock
from pipeline.contracts import encode, load_registry
from pipeline.contracts.records import ConsumerLag
from pipeline.contracts.topics import CONSUMER_LAG
from pipeline.kafka.clients import client_options
from pipeline.kafka.offsets import log_end_offsets
from pipeline.settings import Settings

log = logging.getLogger(__name__)

LAG_TOPIC = CONSUMER_LAG.name


def default_groups(settings: Settings) -> list[str]:
    """The groups MarketPrism runs: the ClickHouse sink and the aggregation and anomaly Faust apps."""
    prefix = settings.topic_prefix
    return [f"{prefix}marketprism-sink", f"{prefix}aggregator", f"{prefix}anomaly"]


CALL_TIMEOUT_S = 5.0  # wall seconds one broker call of a round may take


class StallTracker:
    """Per (group, topic): since when (wall seconds) its committed offsets have not moved while records waited."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[int, float]] = {}  # -> (committed, moved or idle at)

    def observe(self, group: str, topic: str, committed: int, lag: int, wall_s: float) -> float:
        """The stall in seconds at ``wall_s``: 0 when the offsets moved since the last round or nothing waits; the
        first round of a pair starts its clock (a group found dead is stalled one bound after the probe starts)."""
        key = (group, topic)
        seen = self._seen.get(key)
        if seen is None or committed != seen[0] or lag == 0:
            self._seen[key] = (committed, wall_s)
            return 0.0
        return max(0.0, wall_s - seen[1])


def sink_partitions(settings: Settings, group: str) -> list[TopicPartition]:
    """The partitions a ClickHouse sink group must consume (every topic the registry stores), or none for a group
    that is not a sink. A sink is told by its name, as the sink rules (``group: "~.*sink.*"``) tell it."""
    if "sink" not in group.removeprefix(settings.topic_prefix):
        return []
    return [TopicPartition(settings.topic(t.name), p) for t in load_registry() if t.sink for p in range(t.partitions)]


async def committed_offsets(
    settings: Settings, admin: AIOKafkaAdminClient, group: str, timeout_s: float = CALL_TIMEOUT_S
) -> dict[TopicPartition, int]:
    """The group's committed offsets on the registry's topics (TimeoutError past ``timeout_s``).

    A sink group's partitions that have no committed offset count as committed at 0: a sink that dies (or
    crash-loops) before its first commit is behind by everything written, and must not be invisible to the
    probe (it was: the demo's sink killed one second into the scenario raised no SinkStalled at speed 1). Once the
    group has committed, only the topics it has committed on are completed so: a sink deployed for some topics
    (``marketprism sink --topics``) is not behind, let alone stalled, on the topics it does not store.
    """
    # Ask for the registry's partitions by name: brokers differ in answering "all partitions" (Tansu fails it).
    wanted = [TopicPartition(settings.topic(t.name), p) for t in load_registry() for p in range(t.partitions)]
    answer = await asyncio.wait_for(admin.list_consumer_group_offsets(group, partitions=wanted), timeout_s)
    offsets = {tp: meta.offset for tp, meta in answer.items() if meta.offset >= 0}
    stored = {tp.topic for tp in offsets}
    for tp in sink_partitions(settings, group):
        if not stored or tp.topic in stored:
            offsets.setdefault(tp, 0)
    return offsets


async def lag_records(
    settings: Settings,
    group: str,
    committed: dict[TopicPartition, int],
    at: int,
    timeout_s: float = CALL_TIMEOUT_S,
    stalls: StallTracker | None = None,
) -> list[ConsumerLag]:
    """One record per topic of ``committed`` against the partitions' log ends now (TimeoutError past
    ``timeout_s``), with its stall from ``stalls`` (0 without one)."""
    if not committed:
        return []
    ends = await asyncio.wait_for(log_end_offsets(settings.kafka, committed, timeout_s / 2), timeout_s)
    per_topic: dict[str, list[TopicPartition]] = defaultdict(list)
    for tp in committed:
        per_topic[tp.topic].append(tp)
    out = []
    wall_s = time.monotonic()
    for topic, tps in sorted(per_topic.items()):
        done, end = sum(committed[tp] for tp in tps), sum(ends[tp] for tp in tps)
        name = topic.removeprefix(settings.topic_prefix)
        stalled = stalls.observe(group, name, done, max(0, end - done), wall_s) if stalls is not None else 0.0
        out.append(
            ConsumerLag(
                group=group,
                topic=name,
                ts=at,
                lag=max(0, end - done),
                partitions=len(tps),
                committed=done,
                end=end,
                stalled_s=round(stalled, 3),
            )
        )
    return out


async def measure(
    settings: Settings, admin: AIOKafkaAdminClient, group: str, at: int, timeout_s: float = CALL_TIMEOUT_S
) -> list[ConsumerLag]:
    """One record per topic the group has committed offsets on (none when the group never committed)."""
    return await lag_records(settings, group, await committed_offsets(settings, admin, group, timeout_s), at, timeout_s)


async def run_probe(
    settings: Settings,
    producer: AIOKafkaProducer,
    groups: list[str],
    interval_s: float,
    clock: Clock,
    stop: asyncio.Event,
    call_timeout_s: float = CALL_TIMEOUT_S,
) -> None:
    """Measure every ``interval_s`` (pipeline time) until ``stop``. A broker error or a call past
    ``call_timeout_s`` is logged and the round goes on; a group whose offsets are not answered is measured from
    its last answered offsets; rounds start on schedule whatever the last one took."""
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    known: dict[str, dict[TopicPartition, int]] = {}  # group -> its last committed offsets answered
    stalls = StallTracker()
    stale_admin = False
    try:
        next_round = clock.monotonic()
        while not stop.is_set():
            at = clock.now_us()
            for group in groups:
                if stale_admin:  # an abandoned request may still hold the old client's connection
                    admin, stale_admin = await _fresh_admin(settings, admin, call_timeout_s)
                committed = known.get(group)
                try:
                    if stale_admin:
                        raise KafkaError("no admin client")
                    committed = known[group] = await committed_offsets(settings, admin, group, call_timeout_s)
                except (TimeoutError, KafkaError) as exc:
                    stale_admin = stale_admin or isinstance(exc, TimeoutError)
                    log.warning(
                        "committed offsets of group %s not answered (%s)%s",
                        group,
                        exc or f"{call_timeout_s}s",
                        ": using the last answered" if committed else "",
                    )
                if not committed:
                    continue
                try:
                    records = await lag_records(settings, group, committed, at, call_timeout_s, stalls)
                except (TimeoutError, KafkaError) as exc:
                    log.warning("log ends for group %s not answered (%s)", group, exc or f"{call_timeout_s}s")
                    continue
                for record in records:
                    await producer.send(
                        settings.topic(LAG_TOPIC), encode(record), key=f"{record.group}:{record.topic}".encode()
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(producer.flush(), call_timeout_s)
            next_round += interval_s
            if next_round <= clock.monotonic():
                next_round = clock.monotonic()  # behind schedule: start the next round now, do not burst
            with contextlib.suppress(TimeoutError):  # interval_s of pipeline time after the last round began
                await asyncio.wait_for(stop.wait(), (next_round - clock.monotonic()) / clock.speed)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), call_timeout_s)


async def _fresh_admin(
    settings: Settings, admin: AIOKafkaAdminClient, timeout_s: float
) -> tuple[AIOKafkaAdminClient, bool]:
    """A new admin client in place of ``admin``; (client, True) when it did not start in time (retry later)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(admin.close(), timeout_s)
    fresh = AIOKafkaAdminClient(**client_options(settings.kafka))
    try:
        await asyncio.wait_for(fresh.start(), timeout_s)
    except (TimeoutError, KafkaError) as exc:
        log.warning("lag probe: admin client not started (%s)", exc or f"{timeout_s}s")
        return fresh, True
    return fresh, False
