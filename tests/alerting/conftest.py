"""Alerting test harness: a rule-test style scenario on a virtual clock, and builders of the records
the real components emit (collectors' and aggregator's FeedMetrics, bars, anomalies, dead letters)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from pipeline.alerting.engine import AlertEngine
from pipeline.alerting.rules import RuleSet, load_rules, parse_rule_file
from pipeline.alerting.runner import RuleEngineRunner, RunnerOptions
from pipeline.alerting.sources import SOURCES
from pipeline.contracts import encode
from pipeline.contracts.records import (
    Alert,
    AlertAction,
    Anomaly,
    Bar,
    Bbo,
    ConsumerLag,
    DeadLetter,
    FeedMetrics,
    Record,
    ReferencePrice,
    Silence,
)
from pipeline.settings import Settings

T0 = 1_700_000_000_000_000
S = 1_000_000


def us(t: float) -> int:
    """Scenario seconds -> epoch microseconds."""
    return T0 + int(t * S)


def fm(
    t: float, exchange: str = "binance", stream: str = "book", source: str = "collector", **fields: object
) -> FeedMetrics:
    base: dict[str, object] = {"messages": 100, "connected": True, "lag_p99_us": 5_000, "staleness_us": 100_000}
    if source == "aggregator":
        base = {"health_score": 95.0}
    return FeedMetrics(
        exchange=exchange,
        stream=stream,
        source=source,
        ts_event=us(t),
        interval_us=S,  # type: ignore[arg-type]
        **(base | fields),
    )


def bar(
    t: float,
    exchange: str = "binance",
    symbol: str = "BTC-USDT",
    interval: str = "1s",
    close: str = "100.00",
    **fields: object,
) -> Bar:
    width = S if interval == "1s" else 60 * S
    # a market that trades moves a little: high one cent above the close (a bar whose range is 0 while trades print is
    # what FrozenPrice looks for)
    values: dict[str, object] = {
        "open": close, "high": str(Decimal(close) + Decimal("0.01")), "low": close, "close": close,
        "volume": "1.5", "quote_volume": "150.0",
        "vwap": close, "trade_count": 3, "buy_volume": "1.0", "sell_volume": "0.5", "first_trade_id": "1",
        "last_trade_id": "3", "spread_mean_bps": 1.0, "spread_max_bps": 2.0, "mid_change_bps": 0.1, "crossed_us": 0,
    } | fields  # fmt: skip
    return Bar(
        exchange=exchange,
        symbol=symbol,
        interval=interval,
        window_start=us(t) - width,
        window_end=us(t),  # type: ignore[arg-type]
        **values,
    )


def anomaly(
    t: float,
    score: float,
    metric: str = "log_return",
    exchange: str = "binance",
    symbol: str = "BTC-USDT",
    kind: str = "anomaly",
    tts: float | None = None,
) -> Anomaly:
    return Anomaly(
        series_id=f"{exchange}:{symbol}:1s:{metric}",
        metric=metric,
        ts_event=us(t),
        value=0.01,
        score=score,
        detector="ensemble",
        exchange=exchange,
        symbol=symbol,
        kind=kind,
        time_to_threshold_s=tts,
    )  # type: ignore[arg-type]


def dead_letter(t: float, source: str = "sink.clickhouse", reason: str = "write_failed") -> DeadLetter:
    return DeadLetter(
        source=source, reason=reason, error="Connection refused", payload="{}", ts_recv=us(t), topic="md.trades.v1"
    )


def bbo(t: float, bid: str, ask: str, exchange: str = "binance", symbol: str = "BTC-USDT") -> Bbo:
    return Bbo(
        exchange=exchange,
        symbol=symbol,
        raw_symbol=symbol.replace("-", ""),
        bid_price=bid,
        bid_size="1",  # type: ignore[arg-type]
        ask_price=ask,
        ask_size="1",
        ts_event=us(t),
        ts_recv=us(t) + 500,
    )


def reference(t: float, mids: dict[str, str], price: str = "36500.00", diverging: float = 100.0) -> ReferencePrice:
    """The aggregator's cross-venue reference of BTC-USD: each venue's mid and its divergence in bps."""
    from decimal import Decimal

    ref = Decimal(price)
    divergence = {v: float((Decimal(m) - ref) * 10_000 / ref) for v, m in mids.items()}
    excluded = {v: "diverging" for v, d in divergence.items() if abs(d) > diverging}
    return ReferencePrice(
        asset="BTC-USD",
        ts_event=us(t),
        price=price,
        venues=len(mids) - len(excluded),
        mids=mids,  # type: ignore[arg-type]
        divergence_bps=divergence,
        excluded=excluded,
    )


def lag(
    t: float, lag: int, group: str = "marketprism-sink", topic: str = "md.trades.v1", stalled_s: float = 0.0
) -> ConsumerLag:
    """The lag probe's measurement of one group on one topic."""
    return ConsumerLag(
        group=group, topic=topic, ts=us(t), lag=lag, partitions=6, committed=10_000, end=10_000 + lag,
        stalled_s=stalled_s,
    )  # fmt: skip


_BY_TYPE = {
    ConsumerLag: "consumer_lag",
    FeedMetrics: "feed_metrics",
    Anomaly: "anomalies",
    DeadLetter: "dlq",
    Bbo: "bbo",
    ReferencePrice: "reference",
}


def source_of(record: Record) -> str:
    if isinstance(record, Bar):
        return "bars_1s" if record.interval == "1s" else "bars_1m"
    return _BY_TYPE[type(record)]


@dataclass
class Scenario:
    """Push records at scripted event times through the engine; read back the transitions it made."""

    rules: RuleSet
    engine: AlertEngine = field(init=False)
    alerts: list[Alert] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.engine = AlertEngine(self.rules)

    def push(self, *records: Record) -> None:
        """Records go through their topic's real decoder, as the runner feeds them."""
        for record in records:
            for sample in SOURCES[source_of(record)].samples(encode(record)):
                self.alerts += self.engine.process(sample)

    def at(self, t: float, *records: Record) -> None:
        """Records at time ``t`` (each keeps its own event time), then event time moves to ``t``."""
        self.push(*records)
        self.alerts += self.engine.advance(us(t))

    def ack(self, fingerprint: str, action: str = "ack") -> None:
        self.alerts += self.engine.apply_action(
            AlertAction(
                action_id="a",
                fingerprint=fingerprint,
                action=action,  # type: ignore[arg-type]
                actor="sre",
                ts=self.engine.now,
                comment="on it",
            )
        )

    def silence(self, matchers: list[str], start: float, end: float, silence_id: str = "s1") -> None:
        self.alerts += self.engine.apply_silence(
            Silence(
                silence_id=silence_id,
                matchers=matchers,
                starts_at=us(start),
                ends_at=us(end),
                author="sre",
                comment="maintenance",
                created_at=us(start),
            )
        )

    def transitions(self, rule: str | None = None, **labels: str) -> list[tuple[float, str]]:
        return [
            ((a.ts_event - T0) / S, a.state)
            for a in self.alerts
            if (rule is None or a.rule == rule) and all(a.labels.get(k) == v for k, v in labels.items())
        ]

    def fingerprint(self, rule: str, **labels: str) -> str:
        found = {
            a.fingerprint
            for a in self.alerts
            if a.rule == rule and all(a.labels.get(k) == v for k, v in labels.items())
        }
        assert len(found) == 1, found
        return found.pop()

    def run(self, until: float, step: float, make, start: float = 0.0) -> None:  # type: ignore[no-untyped-def]
        """Push ``make(t)`` (records) every ``step`` seconds from ``start`` to ``until``."""
        t = start
        while t <= until + 1e-9:
            self.at(t, *make(t))
            t = round(t + step, 6)


@pytest.fixture
def rec() -> SimpleNamespace:
    """The record builders (test modules cannot import conftest under --import-mode=importlib)."""
    return SimpleNamespace(
        fm=fm, bar=bar, anomaly=anomaly, dead_letter=dead_letter, bbo=bbo, reference=reference, lag=lag, us=us, T0=T0
    )


@pytest.fixture
def scenario():  # type: ignore[no-untyped-def]
    def make(rules_yaml: str | None = None) -> Scenario:
        rules = load_rules() if rules_yaml is None else _ruleset(rules_yaml)
        return Scenario(rules)

    return make


def _ruleset(text: str) -> RuleSet:
    parsed = parse_rule_file(text, "test.yaml")
    return RuleSet(rules=tuple(parsed.rules), inhibit_rules=tuple(parsed.inhibit_rules))


# ---------------------------------------------------------------- one scenario per shipped core rule


@dataclass(frozen=True)
class CoreScenario:
    rule: str
    labels: dict[str, str]
    until: float
    step: float
    make: Callable[[SimpleNamespace, float], list[Record]]


def _feed(rec: SimpleNamespace, t: float, **bad: object) -> list[Record]:
    return [rec.fm(t, **bad), rec.fm(t, exchange="okx")]


SCENARIOS = [
    CoreScenario("VenueDisconnected", {"exchange": "binance", "stream": "book"}, 120, 1,
                 lambda r, t: _feed(r, t, connected=not 10 <= t < 40)),
    CoreScenario("FeedStalled", {"exchange": "binance", "stream": "book"}, 120, 1,
                 lambda r, t: _feed(r, t, staleness_us=45_000_000 if 10 <= t < 50 else 100_000)),
    CoreScenario("SequenceGapRate", {"exchange": "binance", "stream": "book"}, 700, 5,
                 lambda r, t: _feed(r, t, gaps=1 if t < 100 else 0, resyncs=1 if t < 100 and t % 10 == 0 else 0)),
    CoreScenario("ChecksumFailures", {"exchange": "binance", "stream": "book"}, 400, 5,
                 lambda r, t: _feed(r, t, checksum_failures=2 if t == 20 else 0)),
    CoreScenario("FeedLatencyHigh", {"exchange": "binance", "stream": "book"}, 300, 5,
                 lambda r, t: _feed(r, t, lag_p99_us=3_500_000 if 20 <= t < 150 else 4_000)),
    CoreScenario("MessageRateCollapse", {"exchange": "binance", "stream": "book"}, 400, 5,
                 lambda r, t: _feed(r, t, messages=5 if t >= 100 else 1000)),
    CoreScenario("ExchangeHealthLow", {"exchange": "binance", "stream": "book"}, 400, 5,
                 lambda r, t: [r.fm(t, source="aggregator", health_score=30.0 if 20 <= t < 200 else 92.5)]),
    CoreScenario("PriceSpikeAnomaly", {"exchange": "binance", "symbol": "BTC-USDT", "metric": "log_return"}, 300, 5,
                 lambda r, t: [r.bar(t)] + ([r.anomaly(t, 0.99, metric="log_return")] if t == 30 else [])),
    CoreScenario("VolumeBurst", {"exchange": "okx", "symbol": "ETH-USDT", "metric": "volume"}, 300, 5,
                 lambda r, t: [r.bar(t)] + ([r.anomaly(t, 0.98, metric="volume", exchange="okx", symbol="ETH-USDT")]
                                            if t in (30, 35) else [])),
    CoreScenario("SpreadBlowout", {"exchange": "kraken", "symbol": "BTC-USD"}, 120, 1,
                 lambda r, t: [r.bar(t, exchange="kraken", symbol="BTC-USD",
                                     spread_max_bps=85.0 if 10 <= t < 60 else 3.0)]),
    CoreScenario("VenueDivergence", {"exchange": "okx", "symbol": "BTC-USDT"}, 600, 5,
                 lambda r, t: [r.reference(t, {"binance:BTC-USDT": "36500.10", "kraken:BTC-USD": "36499.9",
                                               "okx:BTC-USDT": "37000.00" if 100 <= t < 300 else "36501.00"})]),
    CoreScenario("VenueCloseDivergence", {"exchange": "okx", "symbol": "BTC-USDT"}, 900, 60,
                 lambda r, t: [r.bar(t, exchange=ex, interval="1m", close=close) for ex, close in
                               (("binance", "36500.00"), ("kraken", "36510.0"),
                                ("okx", "37500.00" if 120 <= t < 480 else "36505.50"))]),
    CoreScenario("ReconnectStorm", {"exchange": "kraken", "stream": "book"}, 400, 5,
                 lambda r, t: [r.fm(t, exchange="kraken", reconnects=1 if t in (20, 30, 40) else 0),
                               r.fm(t, exchange="okx", reconnects=1 if t == 20 else 0)]),
    CoreScenario("FrozenPrice", {"exchange": "coinbase", "symbol": "ETH-USD"}, 200, 1,
                 lambda r, t: [r.bar(t, exchange="coinbase", symbol="ETH-USD", **({"high": "3000.00"}
                               if 20 <= t < 80 else {}), close="3000.00")]),
    CoreScenario("CrossedBook", {"exchange": "coinbase", "symbol": "BTC-USD"}, 120, 1,
                 lambda r, t: [r.bar(t, exchange="coinbase", symbol="BTC-USD",
                                     crossed_us=400_000 if 10 <= t < 15 else 0)]),
    CoreScenario("BarsStalled", {"exchange": "binance", "symbol": "ETH-USDT"}, 900, 60,
                 lambda r, t: [r.bar(t, interval="1m")]
                 + ([] if 120 < t < 600 else [r.bar(t, interval="1m", symbol="ETH-USDT")])),
    CoreScenario("PipelineStalled", {}, 150, 1,
                 lambda r, t: [r.fm(t)] + ([] if 20 < t < 90 else [r.bar(t)])),
    CoreScenario("SinkFailing", {"source": "sink.clickhouse"}, 500, 5,
                 lambda r, t: [r.fm(t)] + ([r.dead_letter(t)] if 30 <= t < 60 else [])),
    # the sink dies at 100 s (nothing committed from then on while its lag grows) and is back at 400 s
    CoreScenario("SinkStalled", {"group": "marketprism-sink", "topic": "md.trades.v1"}, 900, 5,
                 lambda r, t: [r.fm(t), r.lag(t, int(500 + 400 * (t - 100)), stalled_s=t - 100) if 100 <= t < 400
                               else r.lag(t, 200)]),
    CoreScenario("WorkerStalled", {"group": "aggregator", "topic": "md.trade_batches.v1"}, 600, 5,
                 lambda r, t: [r.fm(t), r.lag(t, 300, group="aggregator", topic="md.trade_batches.v1",
                                             stalled_s=t - 100 if 100 <= t < 300 else 0.0)]),
    CoreScenario("ConsumerLagGrowing", {"group": "aggregator", "topic": "md.trades.v1"}, 1500, 15,
                 lambda r, t: [r.fm(t), r.lag(t, int(20_000 + 200 * (t - 100)) if 100 <= t < 900 else 50,
                                             group="aggregator")]),
    CoreScenario("DeadLetterRate", {"source": "collector.okx"}, 500, 5,
                 lambda r, t: [r.fm(t)] + ([r.dead_letter(t, source="collector.okx", reason="parse_error")] * 3
                                           if 20 <= t < 40 else [])),
    CoreScenario("CapacityBreachPredicted", {"series_id": "binance:book:lag_p99_ms"}, 600, 10,
                 lambda r, t: [r.fm(t)] + ([_forecast(r, t)] if t in (60, 70, 80) else [])),
]  # fmt: skip


def _forecast(rec: SimpleNamespace, t: float) -> Record:
    record = rec.anomaly(t, 0.8, metric="lag_p99_ms", kind="forecast", tts=420.0)
    return msgspec.structs.replace(record, series_id="binance:book:lag_p99_ms", symbol=None, stream="book")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "core_scenario" in metafunc.fixturenames:
        metafunc.parametrize("core_scenario", SCENARIOS, ids=[s.rule for s in SCENARIOS])


@pytest.fixture
def core_scenarios() -> list[CoreScenario]:
    return SCENARIOS


# ---------------------------------------------------------------- broker helpers


def topic_and_key(record: Record) -> tuple[str, bytes]:
    """The topic and contract key a real component uses for this record."""
    if isinstance(record, FeedMetrics):
        return "ops.feed_metrics.v1", f"{record.exchange}:{record.stream}".encode()
    if isinstance(record, Bar):
        return f"md.bars.{record.interval}.v1", f"{record.exchange}:{record.symbol}".encode()
    if isinstance(record, Bbo):
        return "md.bbo.v1", f"{record.exchange}:{record.symbol}".encode()
    if isinstance(record, Anomaly):
        return "ops.anomalies.v1", record.series_id.encode()
    if isinstance(record, DeadLetter):
        return "ops.dlq.v1", record.source.encode()
    if isinstance(record, ConsumerLag):
        return "ops.consumer_lag.v1", f"{record.group}:{record.topic}".encode()
    if isinstance(record, ReferencePrice):
        return "md.reference.v1", record.asset.encode()
    raise TypeError(type(record))


async def produce(settings: Settings, records: list[Record]) -> None:
    from pipeline.kafka.clients import make_record_producer

    producer = make_record_producer(settings.kafka, settings.topic_prefix)
    await producer.start()
    try:
        for record in records:
            topic, key = topic_and_key(record)
            assert await producer.send(topic, key, record)
    finally:
        await producer.stop()


async def wait_for(settings: Settings, done: Callable[[list[Alert]], bool], wait_s: float = 90.0) -> list[Alert]:
    """Every record on ops.alerts.v1 (topic order per partition) once ``done`` holds for them."""
    from pipeline.alerting import control

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        alerts = await control.read_all(settings, control.ALERTS_TOPIC, Alert)
        if done(alerts) or loop.time() > deadline:
            return alerts
        await asyncio.sleep(0.5)


async def run_engine_until(
    settings: Settings, rules: RuleSet, options: RunnerOptions, done: Callable[[list[Alert]], bool]
) -> list[Alert]:
    """Run the rule engine (in this process, on the broker) until :func:`wait_for` ``done`` answers, then stop it;
    the alerts ``wait_for`` returned."""
    stop = asyncio.Event()
    task = asyncio.create_task(RuleEngineRunner(settings, rules, options).run(stop))
    try:
        return await wait_for(settings, done)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def engine_env(settings: Settings) -> dict[str, str]:
    return os.environ | {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix,
        "MARKETPRISM_METRICS_PORT": "0",
        "MARKETPRISM_STATE_DIR": str(settings.state_dir),
        "MARKETPRISM_LOG_LEVEL": "INFO",
    }


MARKETPRISM = str(Path(sys.executable).parent / "marketprism")


@pytest.fixture
def engine_process(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start ``marketprism alerts run`` as a real process; every process started is stopped by PID."""
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"engine-{len(started)}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [MARKETPRISM, "alerts", "run", *args], env=engine_env(settings), stdout=log, stderr=subprocess.STDOUT
        )
        started.append(proc)
        deadline = time.monotonic() + 120
        while b"rule engine ready" not in (tmp_path / f"engine-{len(started) - 1}.log").read_bytes():
            assert proc.poll() is None, (tmp_path / f"engine-{len(started) - 1}.log").read_text()
            assert time.monotonic() < deadline, "engine did not get ready"
            time.sleep(0.2)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def run_cli(settings: Settings, *args: str) -> str:
    """Run a ``marketprism`` command in-process (the root callback reads the settings from the environment)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    env = {k: v for k, v in engine_env(settings).items() if k.startswith("MARKETPRISM_")}
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.stdout


@pytest.fixture
def kafka_io() -> SimpleNamespace:
    """Broker helpers for test modules: produce records, wait for ops.alerts.v1, run the engine until alerts
    are there, run a CLI command."""
    return SimpleNamespace(produce=produce, wait_for=wait_for, run_engine_until=run_engine_until, run_cli=run_cli)
