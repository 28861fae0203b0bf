"""Fault tests through the real broker: dropped connections, malformed frames, broker away and back."""

from __future__ import annotations

from pathlib import Path

from pipeline.collectors.base import KeepAlive
from pipeline.contracts import DeadLetter, FeedMetrics, Trade
from pipeline.replay.server import ReplayServer
from pipeline.settings import Settings


async def test_dropped_connection_reconnects_with_jitter_and_publishes_no_duplicate(
    topics: Settings, tmp_path: Path, run_collector, toy
) -> None:
    frames = [toy.trade_frame(n) for n in range(300)]
    capture = toy.write_capture(tmp_path / "toy.txt", frames)
    server = ReplayServer([capture], drop_after=200, drops=2)  # two drops, then a full session
    await server.start()
    venue = toy.ToyVenue(["BTC-USD"], ws_url=server.url_for(toy.TOY_WS))
    try:
        async with run_collector(topics, [venue]) as running:
            state = server.state[capture]
            await toy.wait_for(lambda: state.completed >= 1 and running.collector.frames >= 2 * 200 + 301)
            supervisor = running.collector.runtimes[0].connections[0]
    finally:
        await server.stop()
    assert supervisor.sessions == 3
    assert len(supervisor.delays) >= 2 and all(0 <= d <= supervisor.backoff.cap_s for d in supervisor.delays)
    assert venue.connects == 3
    trades = [record for _, record in await toy.read_topic(topics, "md.trades.v1", Trade)]
    assert sorted(int(t.trade_id) for t in trades) == list(range(300))  # each exactly once
    assert {(t.trade_id, t.price, t.size) for t in trades} == {
        (str(n), f"100.{n:04d}0", f"0.{n:03d}") for n in range(300)
    }
    # each dropped session carried the ack and 199 trades, all replayed by the next session
    assert running.collector.runtimes[0].dedup.duplicates == 2 * 199


async def test_malformed_frames_go_to_the_dlq_and_the_feed_goes_on(
    topics: Settings, tmp_path: Path, run_collector, toy
) -> None:
    bad = [
        "{not json",
        '["a list"]',
        '{"op":"mystery"}',
        '{"op":"trade","s":"BTC-USD"}',
        '{"op":"trade","s":"BTC-USD","id":"x","p":"1","q":"1","side":"up","ts":1}',
        '{"op":"reject"}',
    ]
    frames = []
    for n in range(60):
        frames.append(toy.trade_frame(n))
        if n % 10 == 5:
            frames.append(bad[n // 10])
    capture = toy.write_capture(tmp_path / "toy.txt", frames)
    server = ReplayServer([capture])
    await server.start()
    venue = toy.ToyVenue(["BTC-USD"], ws_url=server.url_for(toy.TOY_WS))
    try:
        async with run_collector(topics, [venue]) as running:
            await toy.wait_for(lambda: running.collector.frames >= len(frames) + 1)
            runtime = running.collector.runtimes[0]
    finally:
        await server.stop()
    assert runtime.dead_letters == len(bad)
    dead = [record for _, record in await toy.read_topic(topics, "ops.dlq.v1", DeadLetter)]
    assert sorted(d.payload for d in dead if d.reason != "schema") == sorted(b for b in bad if '"up"' not in b)
    assert next(d.payload for d in dead if d.reason == "schema").startswith('{"exchange":"kraken"')  # the record
    assert {d.reason for d in dead} == {
        "bad_json",
        "bad_type",
        "unknown_channel",
        "missing_field",
        "schema",
        "subscription",
    }
    assert all(d.source == "collector" and d.exchange == "kraken" for d in dead)
    trades = [record for _, record in await toy.read_topic(topics, "md.trades.v1", Trade)]
    assert len(trades) == 60  # every good frame around the bad ones
    # the last (partial) interval is flushed at shutdown, so the windows add up to every frame
    metrics = [record for key, record in await toy.read_topic(topics, "ops.feed_metrics.v1", FeedMetrics)]
    assert sum(m.parse_errors for m in metrics) == len(bad)
    trades_metrics = [m for m in metrics if m.stream == "trades"]
    # 61: the frame whose record failed the schema was a trades frame too
    assert sum(m.messages for m in trades_metrics) == 61 and all(m.source == "collector" for m in metrics)
    assert any(m.connected for m in trades_metrics)


async def test_silent_connection_trips_the_watchdog_and_reconnects(
    topics: Settings, tmp_path: Path, run_collector, toy
) -> None:
    """A connection that stays open but answers nothing (no pong, no frame) is declared dead by the
    watchdog and replaced; the replayed trades of the new session are not published again."""
    capture = toy.write_capture(tmp_path / "toy.txt", [toy.trade_frame(n) for n in range(5)])
    server = ReplayServer([capture])
    await server.start()

    class FastPing(toy.ToyVenue):
        keepalive = KeepAlive(ping_frame='{"op":"ping"}', interval_s=0.2, pong_timeout_s=0.5)

    venue = FastPing(["BTC-USD"], ws_url=server.url_for(toy.TOY_WS))
    try:
        async with run_collector(topics, [venue]) as running:
            supervisor = running.collector.runtimes[0].connections[0]
            await toy.wait_for(lambda: running.collector.frames >= 6 and '{"op":"ping"}' in server.received)
            assert server.freeze() == 1
            await toy.wait_for(lambda: supervisor.sessions >= 2 and running.collector.frames >= 12)
    finally:
        await server.stop()
    assert supervisor.reasons["WatchdogTimeout"] >= 1
    assert venue.connects >= 2
    trades = [record for _, record in await toy.read_topic(topics, "md.trades.v1", Trade)]
    assert sorted(int(t.trade_id) for t in trades) == list(range(5))


async def test_resubscribe_frames_go_back_on_the_same_connection(
    topics: Settings, tmp_path: Path, run_collector, toy
) -> None:
    frames = [toy.trade_frame(0), '{"op":"gap"}', toy.trade_frame(1)]
    capture = toy.write_capture(tmp_path / "toy.txt", frames)
    server = ReplayServer([capture])
    await server.start()
    venue = toy.ToyVenue(["BTC-USD"], ws_url=server.url_for(toy.TOY_WS))
    try:
        async with run_collector(topics, [venue]) as running:
            await toy.wait_for(lambda: '{"op":"sub"}' in server.received)
            runtime = running.collector.runtimes[0]
    finally:
        await server.stop()
    assert server.received[-2:] == ['{"op":"unsub"}', '{"op":"sub"}']
    assert runtime.stats.totals["gaps"] == 1 and runtime.stats.totals["resyncs"] == 1
    assert runtime.connections[0].sessions == 1  # a resync, not a reconnect


async def test_planned_reconnect_at_max_lifetime_takes_no_backoff(
    topics: Settings, tmp_path: Path, run_collector, toy
) -> None:
    capture = toy.write_capture(tmp_path / "toy.txt", [toy.trade_frame(n) for n in range(20)])
    server = ReplayServer([capture])
    await server.start()

    class ShortLived(toy.ToyVenue):
        keepalive = KeepAlive(ping_frame=None, interval_s=5.0, pong_timeout_s=5.0, max_lifetime_s=0.5)

    venue = ShortLived(["BTC-USD"], ws_url=server.url_for(toy.TOY_WS))
    try:
        async with run_collector(topics, [venue]) as running:
            supervisor = running.collector.runtimes[0].connections[0]
            await toy.wait_for(lambda: supervisor.sessions >= 3)
    finally:
        await server.stop()
    assert supervisor.reasons["planned reconnect after 0.5s"] >= 2
    assert supervisor.delays[:2] == [0.0, 0.0]
    trades = [record for _, record in await toy.read_topic(topics, "md.trades.v1", Trade)]
    assert sorted(int(t.trade_id) for t in trades) == list(range(20))
