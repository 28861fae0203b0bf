"""The signals that prove a pipeline component dead or stalled: the lag probe's stall clock (committed offsets
not moving while records wait), the stall rules firing on it with no `for` to race, and the rule engine's
dead-man's switch (its checkpoint heartbeat watched from outside)."""

from __future__ import annotations

from pipeline.alerting.deadman import RULE, EngineWatch
from pipeline.alerting.lagprobe import StallTracker
from pipeline.alerting.rules import load_rules
from tests.alerting.conftest import us


def test_the_stall_clock_runs_only_while_records_wait_and_nothing_is_committed() -> None:
    stalls = StallTracker()
    assert stalls.observe("sink", "md.trades.v1", 100, 50, wall_s=0.0) == 0.0  # first round starts the clock
    assert stalls.observe("sink", "md.trades.v1", 150, 40, wall_s=2.0) == 0.0  # committed moved
    assert stalls.observe("sink", "md.trades.v1", 150, 90, wall_s=4.0) == 2.0  # waiting, nothing committed
    assert stalls.observe("sink", "md.trades.v1", 150, 400, wall_s=19.0) == 17.0
    assert stalls.observe("sink", "md.trades.v1", 151, 400, wall_s=21.0) == 0.0  # one commit ends the stall
    # an idle topic (nothing pending) is never stalled, however long its offsets stay put
    assert stalls.observe("sink", "ops.alerts.v1", 7, 0, wall_s=0.0) == 0.0
    assert stalls.observe("sink", "ops.alerts.v1", 7, 0, wall_s=100.0) == 0.0
    assert stalls.observe("sink", "ops.alerts.v1", 7, 1, wall_s=101.0) == 1.0  # a new record since the last round
    # each (group, topic) has its own clock
    assert stalls.observe("aggregator", "md.trades.v1", 150, 90, wall_s=21.0) == 0.0


def _fire_time(scenario, rec, rule: str, group: str, topic: str, dead_at: float, every: float) -> int:  # type: ignore[no-untyped-def]
    """Play probe rounds every ``every`` s with the group dead from ``dead_at``; the alert's firing event time."""
    sc = scenario()

    def records(t: float):  # type: ignore[no-untyped-def]
        stalled = max(0.0, t - dead_at)
        return [rec.fm(t), rec.lag(t, 5 if t < dead_at else int(5 + 50 * stalled), group, topic, stalled_s=stalled)]

    sc.run(dead_at + 60, every, records)
    fired = [a for a in sc.alerts if a.rule == rule and a.state == "firing"]
    assert fired, sc.transitions()
    return fired[0].ts_event


def test_sink_and_worker_stall_rules_fire_on_the_first_round_past_15_s_without_a_for(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    rules = {r.name: r for r in load_rules().rules}
    for name in ("SinkStalled", "WorkerStalled"):
        assert rules[name].for_ == 0, f"{name}: the stall is its own duration, no `for` to race an outage"
    at = _fire_time(scenario, rec, "SinkStalled", "marketprism-sink", "md.trades.v1", dead_at=30, every=2)
    assert at == us(46)  # the first 2 s round with stalled_s >= 15 (46 - 30 = 16)
    at = _fire_time(scenario, rec, "WorkerStalled", "aggregator", "md.trade_batches.v1", dead_at=30, every=2)
    assert at == us(46)


def test_a_sink_group_stall_is_not_a_worker_stall(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario()
    sc.run(60, 2, lambda t: [rec.fm(t), rec.lag(t, 500, "marketprism-sink", "md.trades.v1", stalled_s=t)])
    fired = {a.rule for a in sc.alerts if a.state == "firing"}
    assert fired == {"SinkStalled"}


def test_the_dead_mans_switch_pages_after_the_silence_and_resolves_on_the_next_heartbeat() -> None:
    watch = EngineWatch(silence_s=15.0)
    assert watch.observe(3, wall_s=0.0, now_us=1) is None  # first reading: the engine seen
    assert watch.observe(4, wall_s=5.0, now_us=2) is None  # heartbeat
    assert watch.observe(4, wall_s=19.9, now_us=3) is None  # silent 14.9 s
    fired = watch.observe(4, wall_s=20.0, now_us=4)
    assert fired is not None and fired.rule == RULE and fired.state == "firing" and fired.version == 1
    assert fired.value == 15.0 and fired.severity == "P1" and fired.fired_at == 4
    assert watch.observe(4, wall_s=60.0, now_us=5) is None  # one page, not one per reading
    resolved = watch.observe(9, wall_s=61.0, now_us=6)
    assert resolved is not None and resolved.state == "resolved" and resolved.version == 2
    assert resolved.fingerprint == fired.fingerprint and resolved.fired_at == 4 and resolved.resolved_at == 6
    assert watch.observe(10, wall_s=62.0, now_us=7) is None


def test_a_restarted_watcher_continues_the_versions_and_resolves_a_page_left_firing() -> None:
    first = EngineWatch(silence_s=15.0)
    first.observe(1, wall_s=0.0, now_us=1)
    first.observe(2, wall_s=1.0, now_us=2)  # a heartbeat: the engine seen alive
    fired = first.observe(2, wall_s=16.0, now_us=3)
    assert fired is not None
    second = EngineWatch(silence_s=15.0)
    second.resume(fired)
    assert second.observe(2, wall_s=100.0, now_us=4) is None  # its first reading: no evidence either way yet
    back = second.observe(3, wall_s=101.0, now_us=5)
    assert back is not None and back.state == "resolved" and back.version == fired.version + 1


def test_an_engine_never_seen_beating_is_paged_only_after_the_start_up_grace() -> None:
    watch = EngineWatch(silence_s=15.0, startup_grace_s=120.0)
    assert watch.observe(4, wall_s=0.0, now_us=1) is None  # an engine checkpointed here before
    assert watch.observe(4, wall_s=60.0, now_us=2) is None  # a slow start-up on a loaded machine is not a death
    fired = watch.observe(4, wall_s=120.0, now_us=3)
    assert fired is not None and fired.state == "firing"
    # a notifier used without any engine (nothing ever checkpointed) is never paged about one
    alone = EngineWatch(silence_s=15.0, startup_grace_s=120.0)
    assert all(alone.observe(0, wall_s=t, now_us=1) is None for t in (0.0, 120.0, 3600.0))


def test_a_few_records_waiting_on_a_group_nobody_runs_are_not_a_stall(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    """A probe told of a sink group that is not deployed sees its never-committed offsets at 0 and the few records
    of a quiet topic waiting forever: under 100 records that is not a dead sink."""
    sc = scenario()
    sc.run(120, 2, lambda t: [rec.fm(t), rec.lag(t, 2, "marketprism-sink", "md.reference.v1", stalled_s=t)])
    assert not [a for a in sc.alerts if a.state == "firing"]
