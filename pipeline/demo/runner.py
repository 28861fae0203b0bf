"""Runs the whole pipeline on the embedded defaults: broker, embedded ClickHouse, simulator with the
demo incident scenario (scenario.yaml), collectors, aggregation, anomaly and rule workers, sink and notifier (log +
a local webhook), each a ``marketprism`` child process; shows a live view and ends with a summary.

Each run gets its own topic prefix (``demo<run id>.``) on the broker and a fresh embedded database, so
the counts of one run are never mixed with another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import yaml
from aiokafka import TopicPartition
from rich.console import Console
from rich.live import Live

from pipeline.contracts import load_registry
from pipeline.demo.receiver import WebhookReceiver
from pipeline.demo.summary import DemoSummary, build_summary
from pipeline.demo.view import WATCHED, DemoStats
from pipeline.infra import broker_service, free_port
from pipeline.infra.services import port_open
from pipeline.kafka.admin import apply
from pipeline.kafka.clients import make_consumer
from pipeline.settings import Settings
from pipeline.supervisor.children import ChildGroup

log = logging.getLogger(__name__)

SINK_GROUP = "demo-sink"
# Venue paths the simulator serves below its per-venue base URL (docs/simulator.md).
SIM_WS_PATHS = {"okx": "/ws/v5/public", "kraken": "/v2"}
# Every incident kind, each sized for its alert rule and over in time for the alert to resolve (the simulator's own
# default scenario is fixed by its tests and sized for the simulator, not for the rules).
DEMO_SCENARIO = Path(__file__).with_name("scenario.yaml")


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float | None = None  # wall seconds; None: until the scenario ends (or Ctrl-C)
    speed: float = 1.0  # simulated seconds per wall second
    sim_duration_s: float | None = None  # simulated seconds of the scenario (default: the scenario's)
    seed: int | None = None
    scenario: Path = DEMO_SCENARIO
    view: bool = True
    drain_s: float = 5.0  # after the collectors stop: time for the workers to process what is in flight
    # Points an anomaly series learns before it reports; the worker's production default (150) would keep every
    # series blind for the first 2.5 simulated minutes, i.e. through the whole demo scenario.
    anomaly_warmup: int = 40
    summary_json: Path | None = None


@dataclass
class DemoRun:
    settings: Settings
    options: DemoOptions
    console: Console
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S"))

    @property
    def home(self) -> Path:
        return (self.settings.state_dir / "demo").resolve()

    @property
    def prefix(self) -> str:
        return f"demo{self.run_id}."

    def _step(self, text: str) -> None:
        self.console.print(f"[bold cyan]»[/bold cyan] {text}")


def _scenario_symbols(scenario: Path) -> dict[str, list[str]]:
    symbols = yaml.safe_load(scenario.read_text())["symbols"]
    return {venue: list(items) for venue, items in symbols.items()}


def _wait_port(port: int, timeout: float, child_alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open("127.0.0.1", port):
            return
        if not child_alive():
            raise RuntimeError(f"a child exited before opening port {port}")
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open within {timeout:.0f}s")


async def _read_all(
    settings: Settings, topics: list[str], idle_s: float = 3.0
) -> dict[TopicPartition, tuple[int, int]]:
    """Read every partition from the start until nothing new arrives for ``idle_s``: ``tp -> (records, next
    offset)``. (Tansu's ListOffsets answers the last batch's base offset + 1, so end offsets cannot be trusted.)"""
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = {tp: (0, 0) for tp in tps}
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_s:
            batch = await consumer.getmany(timeout_ms=500, max_records=20000)
            for tp, messages in batch.items():
                count, _ = seen[tp]
                seen[tp] = (count + len(messages), messages[-1].offset + 1)
            if batch:
                idle_since = time.monotonic()
        return seen
    finally:
        await consumer.stop()


async def _wait_sink_caught_up(
    settings: Settings, ends: dict[TopicPartition, tuple[int, int]], wait_s: float
) -> bool:
    """Wait until the sink group's committed offset reaches every partition's next offset."""
    consumer = make_consumer(settings.kafka, group_id=SINK_GROUP)
    await consumer.start()
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            behind = [tp for tp, (_, end) in ends.items() if end and (await consumer.committed(tp) or 0) < end]
            if not behind:
                return True
            await asyncio.sleep(1.0)
        log.warning("sink did not catch up within %.0fs", wait_s)
        return False
    finally:
        await consumer.stop()


async def run_demo(settings: Settings, options: DemoOptions, console: Console) -> DemoSummary:
    run = DemoRun(settings, options, console)
    if options.speed != 1:
        # venue timestamps follow simulated time, receipt times and feed metrics the wall clock
        console.print(
            f"[yellow]speed {options.speed:g}: simulated time drifts from the wall clock, so feed latency, "
            "staleness and every rule mixing feed metrics with market data are off; alerts are exact at speed 1"
            "[/yellow]"
        )
    home = run.home
    if home.exists():
        shutil.rmtree(home)
    (home / "logs").mkdir(parents=True)
    chdb_path = home / "chdb"
    demo_settings = settings.model_copy(
        update={"topic_prefix": run.prefix, "clickhouse_url": f"chdb://{chdb_path}", "state_dir": home}
    )

    run._step(f"broker on {settings.infra.broker_host}:{settings.infra.broker_port}")
    broker = broker_service(settings.state_dir / "infra", settings.infra.broker_host, settings.infra.broker_port)
    we_started_broker = broker.status().pid is None
    broker.start()

    children = ChildGroup(home / "logs", env={"MARKETPRISM_CONFIG": str(home / "config.yaml")})
    receiver = WebhookReceiver()
    stats = DemoStats()
    labels_path = home / "labels.jsonl"
    try:
        run._step(f"topics (prefix {run.prefix})")
        await apply(demo_settings.kafka, load_registry(), run.prefix)

        sim_port = free_port()
        symbols = _scenario_symbols(options.scenario)
        base = f"127.0.0.1:{sim_port}"
        config = {
            "kafka": {"bootstrap_servers": settings.kafka.bootstrap_servers},
            "topic_prefix": run.prefix,
            "clickhouse_url": f"chdb://{chdb_path}",
            "state_dir": str(home),
            "venues": {
                venue: {
                    "symbols": items,
                    "ws_url": f"ws://{base}/{venue}{SIM_WS_PATHS.get(venue, '')}",
                    "rest_url": f"http://{base}/{venue}",
                }
                for venue, items in symbols.items()
            },
            "log_level": "INFO",
        }
        (home / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

        run._step("embedded ClickHouse (chdb): migrations")
        migrate = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "pipeline", "db", "migrate"],
            env={**os.environ, "MARKETPRISM_CONFIG": str(home / "config.yaml")},
            capture_output=True, text=True, check=False,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"db migrate failed:\n{migrate.stdout}\n{migrate.stderr}")

        await receiver.start()
        (home / "notify.yaml").write_text(
            yaml.safe_dump(
                {
                    "route": {"receiver": "demo", "group_by": ["rule", "exchange", "symbol"], "group_wait": "0s",
                              "group_interval": "5s", "repeat_interval": "1h"},
                    "receivers": [
                        {"name": "demo", "channels": [{"type": "log", "level": "WARNING"},
                                                      {"type": "webhook", "url": receiver.url}]},
                    ],
                },
                sort_keys=False,
            )
        )

        run._step("components: sink, aggregation, anomaly, rules, notifier")
        def metrics_env() -> dict[str, str]:
            return {"MARKETPRISM_METRICS_PORT": str(free_port())}

        children.start("sink", ["sink", "--group", SINK_GROUP], metrics_env())
        children.start("worker", ["worker"], metrics_env())
        children.start("anomaly", ["anomaly", "--warmup", str(options.anomaly_warmup)], metrics_env())
        demo_rules = Path(__file__).with_name("rules.yaml")
        # the lag probe's default groups, with the demo's own sink group
        lag_groups = [SINK_GROUP, f"{run.prefix}aggregator", f"{run.prefix}anomaly"]
        children.start(
            "alerts",
            ["alerts", "run", "--rules", str(demo_rules), *(a for g in lag_groups for a in ("--lag-group", g))],
            metrics_env(),
        )
        children.start("notify", ["notify", "--routes", str(home / "notify.yaml")], metrics_env())

        run._step(f"simulator ({options.scenario.name}, speed {options.speed:g}) and collectors")
        sim_args = ["simulate", "--port", str(sim_port), "--speed", str(options.speed), "--labels",
                    str(labels_path), "--start-now"]
        if options.seed is not None:
            sim_args += ["--seed", str(options.seed)]
        if options.sim_duration_s is not None:
            sim_args += ["--duration", str(options.sim_duration_s)]
        sim_args += ["--scenario", str(options.scenario)]
        simulator = children.start("simulator", sim_args, metrics_env())
        await asyncio.to_thread(_wait_port, sim_port, 60, lambda: simulator.alive)
        children.start("collect", ["collect"], metrics_env())

        await _watch(run, demo_settings, stats, children, simulator, f"http://{base}/sim/status")
    finally:
        run._step("stopping: collectors, then workers once drained, then the sink once it has caught up")
        records: dict[str, int] = {}
        try:
            await _stop(children, ("collect", "simulator"))
            await asyncio.sleep(options.drain_s)
            await _stop(children, ("worker", "anomaly", "alerts", "notify"))
            topics = [demo_settings.topic(t.name) for t in load_registry()]
            ends = await _read_all(demo_settings, topics)
            await _wait_sink_caught_up(demo_settings, ends, wait_s=120)
            for tp, (count, _) in ends.items():
                name = tp.topic.removeprefix(run.prefix)
                records[name] = records.get(name, 0) + count
        finally:
            killed = children.stop()
            await receiver.stop()
            if we_started_broker:
                broker.stop()
        if killed:
            log.warning("had to SIGKILL: %s", ", ".join(killed))
    summary = build_summary(home, labels_path, records, receiver, stats)
    summary.leftover_pids = children.leftovers()
    if options.summary_json is not None:
        options.summary_json.write_bytes(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2))
    return summary


async def _stop(children: ChildGroup, names: tuple[str, ...], wait_s: float = 30.0) -> None:
    """SIGTERM the named children and wait for them to exit (the group kills stragglers later)."""
    chosen = [c for c in children.children if c.name in names]
    for child in chosen:
        if child.alive:
            child.process.terminate()
    for child in chosen:
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(child.process.wait, wait_s)


async def _watch(  # type: ignore[no-untyped-def]
    run: DemoRun, settings: Settings, stats: DemoStats, children: ChildGroup, simulator, status_url: str
) -> None:
    """Consume the watched topics into the view until the duration passes, the scenario ends or Ctrl-C.

    The collectors are stopped just before the scenario's end: the simulator then closes every connection, and
    collectors still running would report every venue down (a demo must not cry wolf at its own shutdown)."""
    topics = [settings.topic(t) for t in WATCHED]
    consumer = make_consumer(settings.kafka, *topics, group_id=f"{settings.topic_prefix}view")
    await consumer.start()
    started = time.monotonic()
    next_poll = 0.0
    margin_us = int(1.5e6 * max(run.options.speed, 1.0))  # 1.5 wall seconds of simulated time
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one status poll every half second is no news
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            with Live(stats.render("MarketPrism demo"), console=run.console, refresh_per_second=2,
                      transient=not run.options.view) as live:
                while True:
                    batch = await consumer.getmany(timeout_ms=250, max_records=5000)
                    for tp, messages in batch.items():
                        name = tp.topic.removeprefix(settings.topic_prefix)
                        for message in messages:
                            stats.add(name, message.value)
                    if run.options.view:
                        live.update(stats.render("MarketPrism demo"))
                    now = time.monotonic()
                    if run.options.duration_s is not None and now - started >= run.options.duration_s:
                        return
                    if not simulator.alive:
                        return
                    if now >= next_poll:
                        next_poll = now + 0.5
                        if await _scenario_ending(http, status_url, margin_us):
                            log.info("scenario ends: stopping the collectors")
                            await _stop(children, ("collect",))
                            with contextlib.suppress(subprocess.TimeoutExpired):
                                await asyncio.to_thread(simulator.process.wait, 60)
                            return
                    crashed = [c.name for c in children.dead() if c.name != "simulator"]
                    if crashed:
                        raise RuntimeError(
                            f"component(s) exited: {', '.join(crashed)} (logs in {run.home / 'logs'})"
                        )
    finally:
        await consumer.stop()


async def _scenario_ending(http: httpx.AsyncClient, status_url: str, margin_us: int) -> bool:
    try:
        status = (await http.get(status_url)).json()
    except (httpx.HTTPError, ValueError):
        return False
    return bool(status.get("started")) and status["end_us"] - status["now_us"] <= margin_us
