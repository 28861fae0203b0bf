"""End to end: ``marketprism collect`` (its own process: real runtime, real venue modules, real
broker) against the simulator, configured with endpoint overrides only. Every trade the simulator
delivered reaches ``md.trades.v1`` exactly once, and each sequence-gap / bad-checksum incident shows
as exactly one resync of the affected symbol in ``ops.feed_metrics.v1``."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from pipeline.collectors.venues import VENUES
from pipeline.contracts import FeedMetrics, Trade
from pipeline.settings import Settings, VenueSettings
from pipeline.simulator.cli import WS_PATHS
from pipeline.simulator.scenario import Scenario, load_scenario, scenario_from
from pipeline.simulator.server import SimulatorServer
from tests.conftest import read_records

pytestmark = pytest.mark.broker

MARKETPRISM = Path(sys.executable).with_name("marketprism")


async def until(condition: Callable[[], Awaitable[bool]], limit_s: float) -> None:
    async with asyncio.timeout(limit_s):
        while not await condition():  # noqa: ASYNC110 - polling a broker and a server's counters
            await asyncio.sleep(0.5)


def e2e_scenario() -> Scenario:
    """The default markets with its gap and checksum incidents moved early, 40 simulated seconds."""
    base = load_scenario()
    incidents = [
        inc.model_dump() | {"at_s": 12.0 + 4 * n}
        for n, inc in enumerate(i for i in base.incidents if i.kind in ("sequence_gap", "bad_checksum"))
    ]
    return scenario_from(base.model_dump() | {"duration_s": 40.0, "incidents": incidents})


def tokens(stream: str) -> list[str]:
    return re.split("[:@]", stream.lower())


async def test_collect_publishes_every_trade_once_and_resyncs_once(topics: Settings, tmp_path: Path) -> None:
    scenario = e2e_scenario()
    async with SimulatorServer(scenario, speed=4.0, hold=True, close_at_end=False) as server:
        venues = {}
        for venue, symbols in scenario.symbols.items():
            ws, rest = server.urls()[venue]
            venues[venue] = VenueSettings(symbols=symbols, ws_url=ws + WS_PATHS.get(venue, ""), rest_url=rest)
        settings = topics.model_copy(update={"venues": venues})
        config = tmp_path / "collect.yaml"
        config.write_text(yaml.safe_dump({
            "kafka": {"bootstrap_servers": settings.kafka.bootstrap_servers},
            "topic_prefix": settings.topic_prefix,
            "state_dir": str(tmp_path / "state"),
            "metrics_port": 0,
            "venues": {name: conf.model_dump(exclude_none=True) for name, conf in venues.items()},
        }))  # fmt: skip
        modules = [VENUES[name](conf.symbols, conf.ws_url, conf.rest_url) for name, conf in venues.items()]
        planned = sum(len(module.plan()) for module in modules)
        with (tmp_path / "collect.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                str(MARKETPRISM), "--config", str(config), "collect", stdout=log, stderr=log
            )
        try:

            async def connected() -> bool:
                return sum(len(c) for c in server.clients.values()) >= planned

            await until(connected, 120)
            await asyncio.sleep(2.0)  # subscriptions acked, books synced (the clock is held)
            server.start()
            await asyncio.wait_for(server.run(), 300)
            delivered = {(venue, tid) for venue, ids in server.trades.items() for tid in ids}

            async def all_published() -> bool:
                return len(await read_records(settings, "md.trades.v1", Trade)) >= len(delivered)

            with contextlib.suppress(TimeoutError):  # the assertions below say what is missing
                await until(all_published, 120)
            await asyncio.sleep(2.5)  # one more feed-metrics interval
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 120)
    assert proc.returncode == 0, (tmp_path / "collect.log").read_text()[-3000:]

    trades = await read_records(settings, "md.trades.v1", Trade)
    published = Counter((t.exchange, f"{t.raw_symbol}:{t.trade_id}") for t in trades)
    assert [key for key, n in published.items() if n > 1] == []
    assert set(published) == delivered
    assert {venue for venue, _ in delivered} == set(scenario.symbols)

    metrics = [m for m in await read_records(settings, "ops.feed_metrics.v1", FeedMetrics) if m.source == "collector"]
    resyncs = Counter((m.exchange, m.stream) for m in metrics for _ in range(m.resyncs))
    raw_of = {(m.inst.venue, m.inst.symbol): m.inst.raw for m in server.engine.markets}
    expected = Counter((inc.venue, raw_of[(inc.venue, inc.symbol)]) for inc in scenario.incidents)
    assert set(expected.values()) == {1}
    assert Counter(exchange for exchange, _ in resyncs.elements()) == Counter(venue for venue, _ in expected)
    for venue, raw in expected:
        # every venue's book streams are per symbol (Kraken's `book:BTC/USD` too, since its feed streams are split
        # per pair even where one v2 frame carries several)
        named = [n for (exchange, stream), n in resyncs.items() if exchange == venue and raw.lower() in tokens(stream)]
        assert named == [1], (venue, raw, resyncs)
