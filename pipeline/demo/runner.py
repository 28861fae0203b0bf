"""Runs the whole pipeline on the embedded defaults: broker, embedded ClickHouse, simulator with the
demo incident scenario (scenario.yaml), collectors, aggregation, anomaly and rule workers, sink and notifier (log +
a local webhook), each a ``marketprism`` child process; shows a live view and ends with a summary.

Each run gets its own topic prefix (``demo<run id>.``) on the broker and a fresh embedded database, so
the counts of one run are never mixed with another's.

Every child runs on one shared pipeline clock (pipeline/clock.py, ``MARKETPRISM_CLOCK__*``): ordinary time until
the origin, ``lead_s`` wall seconds after the components start (time for them to come up and the collectors to
connect: measured on the machine at the start, longer when it is loaded), then ``--speed`` times faster. The
simulator starts the scenario at that origin, so venue timestamps, receipt times, windows, rule timers and
notification timers all read simulated time at any speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import psutil
import yaml
from aiokafka import TopicPartition
from rich.console import Console
from rich.live import Live

from pipeline.clock import ScaledClock
from pipeline.contracts import IncidentLabel, load_registry
from pipeline.contracts.labels import encode_label
from pipeline.contracts.topics import BARS_1S
from pipeline.demo.receiver import WebhookReceiver
from pipeline.demo.summary import EXPECTED_RULES, DemoSummary, build_summary
from pipeline.demo.view import WATCHED, DemoStats
from pipeline.infra import broker_service, cpu_seconds, free_port
from pipeline.infra.services import port_open
from pipeline.kafka.admin import apply
from pipeline.kafka.clients import make_consumer
from pipeline.settings import Settings
from pipeline.supervisor.children import Child, ChildGroup

log = logging.getLogger(__name__)

SINK_GROUP = "demo-sink"
DRAIN_MAX_S = 120.0  # wall seconds the workers get to work off their backlog after the scenario
# Venue paths the simulator serves below its per-venue base URL (docs/simulator.md).
SIM_WS_PATHS = {"okx": "/ws/v5/public", "kraken": "/v2"}
# Every incident kind, each sized for its alert rule and over in time for the alert to resolve (the simulator's own
# default scenario is fixed by its tests and sized for the simulator, not for the rules).
DEMO_SCENARIO = Path(__file__).with_name("scenario.yaml")
# Pipeline faults (the sink killed and restarted 100 s later) the runner injects itself, on the simulator's clock.
DEMO_FAULTS = Path(__file__).with_name("faults.yaml")
FAULT_CHILDREN = {"sink": "sink", "aggregation": "worker", "anomaly": "anomaly", "alerting": "alerts"}
# Runs this long (wall seconds) trade latency for broker load: Tansu's memory engine lists every stored batch of a
# partition on each fetch that returns records of it (~1.5 us per batch: 23 ms of broker CPU per fetch at 15k batches,
# measured 2026-11-22, `marketprism bench broker`), and keeps every batch, so over an hour the broker saturated the
# 2-core machine. The collectors (the producers that trickle: every record as it comes) linger 1 s, so a partition
# gets about one batch a second from them; the worker and the rule engine fetch once a second (fewer lists, and the
# worker publishes its bars in fewer batches). The other components keep their settings: they flush what they
# publish (aiokafka's flush waits out the linger). Event-time results (bars, anomalies, references) are unchanged;
# wall-clock latency grows by up to ~2 s. (With every producer at 250 ms and 500 ms fetches the broker's CPU still
# grew by ~1.6 s per minute, every minute.)
LONG_RUN_S = 600.0
LONG_RUN_COLLECTOR_LINGER_MS = 1000
LONG_RUN_FETCH_WAIT_MS = 1000


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float | None = None  # wall seconds; None: until the scenario ends (or Ctrl-C)
    speed: float = 1.0  # simulated seconds per wall second
    sim_duration_s: float | None = None  # simulated seconds of the scenario (default: the scenario's)
    seed: int | None = None
    scenario: Path = DEMO_SCENARIO
    view: bool = True
    drain_s: float = 5.0  # after the collectors stop: no new bar for this long = the workers are done (max 120 s)
    # wall seconds from starting the components to the clock's origin (the scenario's start); None: measured on
    # this machine now (start-up is mostly imports, and a loaded machine takes longer: see start_up_lead_s)
    lead_s: float | None = None
    # Points an anomaly series learns before it reports; the worker's production default (150) would keep every
    # series blind for the first 2.5 simulated minutes, i.e. through the whole demo scenario.
    anomaly_warmup: int = 40
    summary_json: Path | None = None
    api_port: int = 8080  # the operations API (marketprism api); 0 or taken: a free port


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


MIN_LEAD_S, MAX_LEAD_S = 15.0, 120.0
# Wall seconds before the origin the collectors start: time to import and connect, and less than a silent stream
# takes to raise FeedStalled (30 s stale + 15 s) or MessageRateCollapse (its drop + 30 s)
COLLECT_LEAD_S = 30.0
LEAD_PER_IMPORT_S = 15.0  # lead per second one component takes to import here (ten start at once on a few cores)


def start_up_lead_s() -> float:
    """The lead the components need on this machine now: the wall time of one component's imports, measured in a
    fresh interpreter, times LEAD_PER_IMPORT_S, within [MIN_LEAD_S, MAX_LEAD_S]. A fixed 15 s let a loaded
    machine start the scenario before the collectors had connected (every feed then looked stalled)."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import faust, river, pipeline.cli, pipeline.aggregation.app"],
        capture_output=True,
        check=False,
    )
    return min(MAX_LEAD_S, max(MIN_LEAD_S, LEAD_PER_IMPORT_S * (time.monotonic() - started)))


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


async def _wait_sink_caught_up(settings: Settings, ends: dict[TopicPartition, tuple[int, int]], wait_s: float) -> bool:
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
    # SIGTERM (kill, a service manager, CI) stops the run like Ctrl-C: the task is cancelled and the `finally`
    # below stops every child and the broker (without it the default action killed us and orphaned them)
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    run = DemoRun(settings, options, console)
    wall_started = time.monotonic()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one status poll every few tenths of a second is no news
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
    fault_labels: list[IncidentLabel] = []  # pipeline faults injected (faults.yaml)
    ready_before_s: float | None = None  # wall seconds between the collectors connecting and the scenario start
    scenario_wall_s: float | None = None
    api: tuple[str, str] | None = None  # the operations API's URL and an operator token
    api_alerts: int | None = None  # alerts the API lists at the end of the run
    console_alerts: int | None = None  # alerts the web console shows an operator logged in with the printed token
    drained = False  # the scenario ended and the workers worked off their backlog
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
            capture_output=True,
            text=True,
            check=False,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"db migrate failed:\n{migrate.stdout}\n{migrate.stderr}")

        await receiver.start()
        (home / "notify.yaml").write_text(
            yaml.safe_dump(
                {
                    "route": {
                        "receiver": "demo",
                        "group_by": ["rule", "exchange", "symbol"],
                        "group_wait": "0s",
                        "group_interval": "5s",
                        "repeat_interval": "1h",
                    },
                    "receivers": [
                        {
                            "name": "demo",
                            "channels": [{"type": "log", "level": "WARNING"}, {"type": "webhook", "url": receiver.url}],
                        },
                    ],
                },
                sort_keys=False,
            )
        )

        # one time line for every child: wall time until the origin, then `speed` times faster
        lead_s = options.lead_s if options.lead_s is not None else await asyncio.to_thread(start_up_lead_s)
        origin_us = (time.time_ns() // 1000 + int(lead_s * 1e6)) // 1_000_000 * 1_000_000 + 1_000_000
        clock = ScaledClock(options.speed, origin_us)
        children.env = {
            **children.env,
            "MARKETPRISM_CLOCK__SPEED": repr(options.speed),
            "MARKETPRISM_CLOCK__ORIGIN_US": str(origin_us),
        }
        stats.to_wall_us = clock.wall_us
        run._step(
            f"simulator ({options.scenario.name}) and components: sink, aggregation, anomaly, rules, "
            f"notifier (clock origin in {(origin_us - time.time_ns() // 1000) / 1e6:.0f}s, speed "
            f"{options.speed:g})"
        )

        def metrics_env() -> dict[str, str]:
            return {"MARKETPRISM_METRICS_PORT": str(free_port())}

        # the simulator first: it and the collectors are the long pole to the origin
        sim_args = [
            "simulate",
            "--port",
            str(sim_port),
            "--speed",
            str(options.speed),
            "--labels",
            str(labels_path),
        ]  # the scenario starts at the clock's origin
        if options.seed is not None:
            sim_args += ["--seed", str(options.seed)]
        if options.sim_duration_s is not None:
            sim_args += ["--duration", str(options.sim_duration_s)]
        sim_args += ["--scenario", str(options.scenario)]
        simulator = children.start("simulator", sim_args, metrics_env())
        children.start("sink", ["sink", "--group", SINK_GROUP], metrics_env())
        sim_duration_s = options.sim_duration_s or float(yaml.safe_load(options.scenario.read_text())["duration_s"])
        long_run = sim_duration_s / options.speed >= LONG_RUN_S
        fetch_wait = ["--fetch-wait-ms", str(LONG_RUN_FETCH_WAIT_MS)] if long_run else []
        collect_env = {"MARKETPRISM_KAFKA__LINGER_MS": str(LONG_RUN_COLLECTOR_LINGER_MS)} if long_run else {}
        if long_run:
            log.info("long run (%.0f s): collectors linger %d ms, worker and rule engine fetch every %d ms",
                     sim_duration_s / options.speed, LONG_RUN_COLLECTOR_LINGER_MS, LONG_RUN_FETCH_WAIT_MS)  # fmt: skip
        children.start("worker", ["worker", *fetch_wait], metrics_env())
        children.start("anomaly", ["anomaly", "--warmup", str(options.anomaly_warmup)], metrics_env())
        demo_rules = Path(__file__).with_name("rules.yaml")
        # the lag probe's default groups, with the demo's own sink group
        lag_groups = [SINK_GROUP, f"{run.prefix}aggregator", f"{run.prefix}anomaly"]
        lag_args = [a for g in lag_groups for a in ("--lag-group", g)]
        children.start(
            "alerts",
            ["alerts", "run", "--rules", str(demo_rules), *lag_args, *fetch_wait],
            metrics_env(),
        )
        children.start("notify", ["notify", "--routes", str(home / "notify.yaml")], metrics_env())
        api = await _start_api(run, children, home, metrics_env())
        await asyncio.to_thread(_wait_port, sim_port, 60, lambda: simulator.alive)
        # the collectors start at most COLLECT_LEAD_S before the origin: the simulator sends nothing before it, so
        # collectors connected long before sat on silent streams, and a loaded run's long lead (55 s measured) turned
        # that silence into FeedStalled and MessageRateCollapse on every stream before the scenario began
        early_s = clock.wall_us(origin_us) / 1e6 - time.time() - min(lead_s, COLLECT_LEAD_S)
        if early_s > 0:
            await asyncio.sleep(early_s)
        children.start("collect", ["collect"], metrics_env() | collect_env)
        ready_us = await _collectors_connected(f"http://{base}/sim/status", list(symbols), wait_s=60)
        ready_before_s = None if ready_us is None else (clock.wall_us(origin_us) - ready_us) / 1e6
        if ready_before_s is not None and ready_before_s < 0:
            log.warning(
                "collectors connected %.1f wall s after the scenario started (the measured lead was short)",
                -ready_before_s,
            )
        scenario_wall = time.monotonic()
        faults = asyncio.create_task(
            _inject_faults(children, f"http://{base}/sim/status", sim_duration_s, fault_labels)
        )
        try:
            drained = await _watch(
                run, demo_settings, stats, children, simulator, f"http://{base}/sim/status", fault_labels
            )
        finally:
            faults.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await faults
        scenario_wall_s = time.monotonic() - scenario_wall
    finally:
        run._step("stopping: collectors, then workers once drained, then the sink once it has caught up")
        records: dict[str, int] = {}
        try:
            await _stop(children, ("collect", "simulator"))
            if not drained:  # stopped early (duration, Ctrl-C): give what is in flight a moment
                await asyncio.sleep(options.drain_s)
            if api is not None:
                api_alerts = await _api_alert_count(*api)
                console_alerts = await _console_alert_count(*api)
            await _stop(children, ("worker", "anomaly", "alerts", "notify", "api"))
            topics = [demo_settings.topic(t.name) for t in load_registry() if t.sink]
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
    with labels_path.open("ab") as out:  # the simulator has stopped: the pipeline faults join its labels
        out.writelines(encode_label(label) for label in fault_labels)
    summary = build_summary(home, labels_path, records, receiver, stats)
    summary.leftover_pids = children.leftovers()
    summary.run = {
        "speed": options.speed,
        "wall_s": round(time.monotonic() - wall_started, 1),
        "scenario_wall_s": None if scenario_wall_s is None else round(scenario_wall_s, 1),
        "collectors_ready_before_start_s": None if ready_before_s is None else round(ready_before_s, 1),
        "api_url": None if api is None else api[0],
        "api_alerts_listed": api_alerts,
        "console_alerts_shown": console_alerts,
    }
    if options.summary_json is not None:
        options.summary_json.write_bytes(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2))
    return summary


async def _start_api(run: DemoRun, children: ChildGroup, home: Path, env: dict[str, str]) -> tuple[str, str]:
    """Start ``marketprism api`` with a secret of this run, issue an operator token with ``marketprism api token``
    (the same command an operator uses), print both and write them to ``<home>/api.env``."""
    secret_env = {"MARKETPRISM_API__JWT_SECRET": secrets.token_hex(32)}
    minted = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pipeline", "api", "token", "--name", "demo-operator", "--role", "operator"],
        env={**os.environ, **children.env, **secret_env},
        capture_output=True,
        text=True,
        check=False,
    )
    if minted.returncode != 0:
        raise RuntimeError(f"api token failed:\n{minted.stdout}\n{minted.stderr}")
    token = minted.stdout.strip().splitlines()[-1]
    preferred = run.options.api_port
    for port in (preferred, free_port()) if preferred and not port_open("127.0.0.1", preferred) else (free_port(),):
        api = children.start("api", ["api", "--host", "127.0.0.1", "--port", str(port)], env | secret_env)
        with contextlib.suppress(RuntimeError):  # it lost the port to another process: the next one
            await asyncio.to_thread(_wait_port, port, 60, _alive(api))
            if api.alive:
                break
    else:
        raise RuntimeError("the operations API did not start (logs/api.log)")
    url = f"http://127.0.0.1:{port}"
    with os.fdopen(os.open(home / "api.env", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write(f"MARKETPRISM_API_URL={url}\nMARKETPRISM_API_TOKEN={token}\n")
    run._step(f"operations API: {url}/docs  web console: {url}/login  (operator token in {home / 'api.env'})")
    run.console.print(f'  curl -H "Authorization: Bearer {token}" {url}/api/v1/alerts', soft_wrap=True, highlight=False)
    return url, token


def _alive(child: Child) -> Callable[[], bool]:
    return lambda: child.alive


async def _api_alert_count(url: str, token: str) -> int | None:
    """How many alerts the operations API lists (resolved ones too), or None when it does not answer."""
    try:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            response = await http.get("/api/v1/alerts", params={"limit": 1, "include_inactive": "true"})
            response.raise_for_status()
            return int(response.json()["total"])
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        log.warning("operations API did not list the alerts: %s", exc)
        return None


_LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')


async def _console_alert_count(url: str, token: str) -> int | None:
    """How many alerts (any state) the web console's alert page shows after logging in with the printed token,
    as an operator does in a browser (login form, session cookie), or None when it does not answer."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30, follow_redirects=True) as http:
            form = await http.get("/login")
            form.raise_for_status()
            found = _LOGIN_CSRF.search(form.text)
            if found is None:
                raise ValueError("the login page has no login form")
            fields = {"token": token, "login_csrf": found.group(1), "next": "/alerts?f=1"}
            page = await http.post("/login", data=fields)
            page.raise_for_status()
            if page.url.path != "/alerts":
                raise ValueError(f"the login ended on {page.url.path}, not the alert page")
            return page.text.count("data-fingerprint=")
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("web console did not show the alerts: %s", exc)
        return None


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
    run: DemoRun,
    settings: Settings,
    stats: DemoStats,
    children: ChildGroup,
    simulator,
    status_url: str,
    faults: list[IncidentLabel],
) -> bool:
    """Consume the watched topics into the view until the duration passes, the scenario ends or Ctrl-C; True when
    the scenario ended and the workers drained.

    The collectors are stopped just before the scenario's end: the simulator then closes every connection, and
    collectors still running would report every venue down (a demo must not cry wolf at its own shutdown). Then
    the view goes on until no new 1 s bar has come for ``drain_s``: the aggregation worker has worked off its
    backlog (on a loaded machine, or at a high ``--speed``, it can be many seconds behind) and the workers after
    it have had ``drain_s`` for the last bars; and until no alert of an injected fault (``faults``) is still
    firing (at most ``DRAIN_MAX_S`` in all)."""
    topics = [settings.topic(t) for t in WATCHED]
    consumer = make_consumer(settings.kafka, *topics, group_id=f"{settings.topic_prefix}view")
    await consumer.start()
    started = time.monotonic()
    next_poll = 0.0
    margin_us = int(1.5e6 * max(run.options.speed, 1.0))  # 1.5 wall seconds of simulated time
    draining_since: float | None = None  # when the collectors were stopped
    last_bar = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            with Live(
                stats.render("MarketPrism demo"),
                console=run.console,
                refresh_per_second=2,
                transient=not run.options.view,
            ) as live:
                while True:
                    batch = await consumer.getmany(timeout_ms=250, max_records=5000)
                    for tp, messages in batch.items():
                        name = tp.topic.removeprefix(settings.topic_prefix)
                        for message in messages:
                            stats.add(name, message.value, message.timestamp)
                        if name == BARS_1S.name:
                            last_bar = time.monotonic()
                    if run.options.view:
                        live.update(stats.render("MarketPrism demo"))
                    now = time.monotonic()
                    if draining_since is not None:
                        # drained: no new bar for drain_s, and no injected fault's alert still firing (it resolves
                        # once the restarted component has caught up, which a loaded machine slows)
                        settled = now - last_bar >= run.options.drain_s and not _fault_alerts_firing(stats, faults)
                        if settled or now - draining_since >= DRAIN_MAX_S:
                            log.info("drained in %.1fs", now - draining_since)
                            return True
                    elif not simulator.alive or (
                        run.options.duration_s is not None and now - started >= run.options.duration_s
                    ):
                        return False
                    if now >= next_poll:
                        next_poll = now + 0.5
                        _sample(children, stats)
                        if draining_since is None and await _scenario_ending(http, status_url, margin_us):
                            log.info("scenario ends: stopping the collectors, draining the workers")
                            await _stop(children, ("collect",))
                            with contextlib.suppress(subprocess.TimeoutExpired):
                                await asyncio.to_thread(simulator.process.wait, 60)
                            draining_since = last_bar = time.monotonic()
                    crashed = [c.name for c in children.dead() if c.name not in ("simulator", "collect")]
                    if crashed:
                        raise RuntimeError(f"component(s) exited: {', '.join(crashed)} (logs in {run.home / 'logs'})")
    finally:
        await consumer.stop()


def _fault_alerts_firing(stats: DemoStats, faults: list[IncidentLabel]) -> list[str]:
    """Alerts of the injected faults' rules (summary.EXPECTED_RULES) still firing."""
    rules = {rule for label in faults for rule in EXPECTED_RULES.get(label.kind, ())}
    return [a.rule for a in stats.alert_states.values() if a.state == "firing" and a.rule in rules]


async def _inject_faults(children: ChildGroup, status_url: str, duration_s: float, labels: list[IncidentLabel]) -> None:
    """Play ``faults.yaml`` on the simulator's clock and record a label (simulated start/end) per fault:
    ``pause_component`` SIGSTOPs a child's process group at ``at_s`` and SIGCONTs it ``duration_s`` later;
    ``kill_component`` SIGKILLs it and starts it again (same command) ``duration_s`` later. Cancelled: resumes
    what it paused (a killed child stays down; the run is ending)."""
    faults = yaml.safe_load(DEMO_FAULTS.read_text())["faults"] if DEMO_FAULTS.exists() else []
    active: dict[str, tuple[dict[str, object], Child, int]] = {}  # fault id -> (fault, child, since us)
    pending = sorted(faults, key=lambda f: f["at_s"])
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            while pending or active:
                await asyncio.sleep(0.2)
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    status = (await http.get(status_url)).json()
                    if not status["started"]:
                        continue
                    now_us = int(status["now_us"])
                    start_us = int(status["end_us"]) - int(duration_s * 1e6)
                    while pending and now_us >= start_us + pending[0]["at_s"] * 1e6:
                        fault = pending.pop(0)
                        name = FAULT_CHILDREN[fault["component"]]
                        child = next((c for c in children.children if c.name == name and c.alive), None)
                        if child is None:
                            continue
                        if fault["kind"] == "kill_component":
                            # out of the group first: down on purpose, not a crash (the watch loop runs during the wait)
                            children.detach(child)
                            os.killpg(child.process.pid, signal.SIGKILL)
                            await asyncio.to_thread(child.process.wait, 30)
                        else:
                            os.killpg(child.process.pid, signal.SIGSTOP)
                        active[fault["id"]] = (fault, child, now_us)
                        log.info("fault %s: %s %s", fault["id"], fault["component"], fault["kind"])
                    for fault_id, (fault, child, since_us) in list(active.items()):
                        if now_us < since_us + float(fault["duration_s"]) * 1e6:  # type: ignore[arg-type]
                            continue
                        if fault["kind"] == "kill_component":
                            children.start(child.name, child.argv[3:], {"MARKETPRISM_METRICS_PORT": str(free_port())})
                        else:
                            with contextlib.suppress(ProcessLookupError):
                                os.killpg(child.process.pid, signal.SIGCONT)
                        del active[fault_id]
                        log.info("fault %s over: %s back", fault_id, fault["component"])
                        labels.append(
                            IncidentLabel(
                                id=fault_id,
                                kind=f"{fault['component']}_down",
                                venue="pipeline",
                                symbol=None,
                                start_us=since_us,
                                end_us=now_us,
                            )
                        )
    finally:
        for fault, child, _ in active.values():
            if fault["kind"] == "pause_component":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGCONT)


async def _collectors_connected(status_url: str, venues: list[str], wait_s: float) -> int | None:
    """Wait until the simulator has a connection on every venue; the wall time (epoch us) it had, or None."""
    deadline = time.monotonic() + wait_s
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                connections = (await http.get(status_url)).json()["connections"]
                if all(connections.get(v, 0) > 0 for v in venues):
                    return time.time_ns() // 1000
            await asyncio.sleep(0.2)
    log.warning("not every venue connected to the simulator within %.0fs", wait_s)
    return None


def _sample(children: ChildGroup, stats: DemoStats) -> None:
    """Record each child's resident memory (with its own children) if it is a new peak, and its CPU seconds."""
    for child in children.children:
        if not child.alive:
            continue
        with contextlib.suppress(psutil.Error):
            procs = [psutil.Process(child.process.pid)]
            procs += procs[0].children(recursive=True)
            rss = sum(p.memory_info().rss for p in procs)
            stats.peak_rss[child.name] = max(stats.peak_rss.get(child.name, 0), rss)
            stats.cpu_s[child.name] = sum(cpu_seconds(p) for p in procs)


async def _scenario_ending(http: httpx.AsyncClient, status_url: str, margin_us: int) -> bool:
    try:
        status = (await http.get(status_url)).json()
    except (httpx.HTTPError, ValueError):
        return False
    return bool(status.get("started")) and status["end_us"] - status["now_us"] <= margin_us
