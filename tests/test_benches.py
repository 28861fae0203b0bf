"""Every ``marketprism bench ...`` command run in CI in a bounded form, so a benchmark cannot rot unnoticed.

Each test runs the real CLI as a subprocess (``python -m pipeline bench ...``) with the smallest parameters
that still go through its whole path (a few thousand rows/trades, one repeat, a few seconds), on the harness
broker where the bench takes broker settings (``MARKETPRISM_*`` pointing at it, a topic prefix of its own); the
notify benches start their own scratch broker. Each asserts a clean exit and parses the figures the command
promises (throughput > 0, the baseline row present and consistent), never only that it ran. The figures are
not judged here: targets live in docs/benchmarks.md. ``bench aggregate`` (mostly waiting: two Faust process
start-ups, a group-join wait, a live bar-latency stream) is started when the module starts and runs beside the
other benches, so the module costs little more than it. ``bench broker`` measures the local Tansu broker
itself (its own scratch broker). ``bench collect`` is covered by
tests/collectors/runtime/test_runtime_bench.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.settings import KafkaSettings, Settings
from tests.conftest import NAB_DIR

pytestmark = pytest.mark.slow  # benchmark-style runs, bounded

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NAB_FILES = ["artificialWithAnomaly/art_daily_jumpsup.csv", "realKnownCause/ec2_request_latency_system_failure.csv"]


class Bench:
    """One ``marketprism bench <args>`` child in a process group of its own (the bench's own children, e.g.
    Faust workers, stopped with it by its id); stdout/stderr to files in ``out_dir``. Wide columns so rich
    tables are not truncated; ``settings`` (when given) passed as ``MARKETPRISM_*``, no config file."""

    def __init__(self, out_dir: Path, *args: str, settings: Settings | None = None):
        env = os.environ | {"COLUMNS": "250", "MARKETPRISM_METRICS_PORT": "0"}
        env.pop("MARKETPRISM_CONFIG", None)
        if settings is not None:
            env |= {
                "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
                "MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix,
                "MARKETPRISM_STATE_DIR": str(settings.state_dir),
                "MARKETPRISM_CLICKHOUSE_URL": settings.clickhouse_url,
            }
        out_dir.mkdir(parents=True, exist_ok=True)
        self.stdout, self.stderr = out_dir / f"bench-{args[0]}.out", out_dir / f"bench-{args[0]}.err"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "bench", *args],
                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def result(self, timeout: float = 240) -> str:
        """Its stdout, after asserting a clean exit within ``timeout`` seconds."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        out = self.stdout.read_text()
        assert code == 0, f"exit {code}\nstdout:\n{out[-4000:]}\nstderr:\n{self.stderr.read_text()[-4000:]}"
        return out

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after 15 s (nothing to do once it has exited)."""
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


def _bench(tmp_path: Path, *args: str, settings: Settings | None = None) -> str:
    bench = Bench(tmp_path, *args, settings=settings)
    try:
        return bench.result()
    finally:
        bench.stop()


def _rows(out: str) -> dict[str, list[str]]:
    """The body rows of the rich tables in ``out``: first cell -> the other cells."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    return rows


def _num(text: str) -> float:
    """The first number in ``text`` (thousands separators allowed)."""
    found = re.search(r"-?\d[\d,]*(?:\.\d+)?", text)
    assert found, f"no number in {text!r}"
    return float(found.group().replace(",", ""))


def _positive(*values: float) -> None:
    assert all(math.isfinite(v) and v > 0 for v in values), values


@pytest.fixture(scope="module")
def aggregate_run(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:  # type: ignore[no-untyped-def]
    """``bench aggregate`` on the harness broker, started once for the module. The worker's trades/s is read
    from its counter between two readings >= 0.5 s apart (else NaN): over 6 symbols the batches held ~165 trades
    and the worker applied all 150k within 0.5 s (NaN, 2026-11-22); over 60 symbols (~17 trades a batch, as in
    docs/benchmarks.md) they take it ~2 s at ~80k trades/s; the slow naive agent is measured on 3000; the bar
    latency run is the shortest giving 1s bars past its 3 s warm-up (after the bench's fixed 8 s group-join
    wait)."""
    work = tmp_path_factory.mktemp("bench-aggregate")
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap),
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        state_dir=work / "state",
        clickhouse_url=f"chdb://{work / 'chdb'}",
        metrics_port=0,
    )
    bench = Bench(
        work, "aggregate", "--trades", "150000", "--symbols", "60", "--repeats", "1", "--naive-trades", "3000",
        "--rate", "2000", "--seconds", "6", settings=settings,
    )  # fmt: skip
    try:
        yield bench
    finally:
        bench.stop()


@pytest.fixture(scope="module", autouse=True)
def _aggregate_in_background(request: pytest.FixtureRequest) -> None:
    """Start ``bench aggregate`` with the module's first test when its test is selected."""
    if any(item.name == "test_bench_aggregate" for item in request.session.items):
        request.getfixturevalue("aggregate_run")


def test_bench_sink(settings: Settings, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """All four paths when clickhouse-server is installed (the harness's, via the settings' URL), else the
    three without it."""
    paths = {"raw chdb INSERT (baseline)", "sink -> chdb", "Kafka -> sink -> chdb (one process)"}
    try:
        server = request.getfixturevalue("clickhouse_server")
    except pytest.skip.Exception:
        args = ["--no-server"]
    else:
        settings = settings.model_copy(update={"clickhouse_url": server.url})
        args, paths = ["--server"], paths | {"sink -> clickhouse-server"}
    out = _bench(tmp_path, "sink", "--rows", "2000", "--repeats", "1", *args, settings=settings)
    # per path: rows/s, ratio vs the baseline's rows/s, rows per CPU-s, ratio vs the baseline's
    rows = {name: [_num(c) for c in (cells[0], cells[2], cells[3], cells[4])] for name, cells in _rows(out).items()}
    assert set(rows) == paths, out
    base_rate, _, base_cpu, _ = rows["raw chdb INSERT (baseline)"]
    for rate, ratio, per_cpu, cpu_ratio in rows.values():
        _positive(rate, per_cpu)
        assert ratio == pytest.approx(rate / base_rate, abs=0.01) and cpu_ratio == pytest.approx(
            per_cpu / base_cpu, abs=0.01
        )


def test_bench_notify(tmp_path: Path) -> None:
    out = _bench(tmp_path, "notify", "--alerts", "20", "--rate", "50", "--runs", "1")
    rows = _rows(out)
    assert set(rows) == {"1", "median"}, out
    received, *figures = rows["1"]
    assert received == "20/20"
    notifier_p50, notifier_p99, baseline_p50, baseline_p99, ratio = map(_num, figures)
    _positive(notifier_p50, baseline_p50, ratio)
    assert notifier_p50 <= notifier_p99 and baseline_p50 <= baseline_p99
    assert rows["median"][1:] == rows["1"][1:]  # one run: its medians are its figures


def test_bench_notify_from_metric(tmp_path: Path) -> None:
    out = _bench(tmp_path, "notify", "--from-metric", "--alerts", "5", "--rate", "20", "--for", "0.5", "--runs", "1")
    rows = _rows(out)
    assert set(rows) == {"1", "median"}, out
    notified, *figures = rows["1"]
    assert notified == "5/5"
    deadline_p50, deadline_p99, handoff_p50, handoff_p99, topic_p50, topic_p99 = map(float, figures)
    _positive(deadline_p50, handoff_p50, topic_p50)
    assert deadline_p50 <= deadline_p99 and handoff_p50 <= handoff_p99 and topic_p50 <= topic_p99


def test_bench_anomaly(tmp_path: Path) -> None:
    out = _bench(tmp_path, "anomaly", "--series", "5", "--points", "600", "--repeats", "1")
    rows = _rows(out)
    update = _num(rows["series detector update"][0])
    hst, hst_ratio = map(_num, rows["baseline HST(10 trees, h 8)"][:2])
    gauss, gauss_ratio = map(_num, rows["baseline GaussianScorer"][:2])
    _positive(update, hst, gauss, _num(rows["memory per series"][0]), _num(rows["checkpoint per series"][0]))
    assert hst_ratio == pytest.approx(update / hst, abs=0.06) and gauss_ratio == pytest.approx(update / gauss, rel=0.2)
    assert rows["workload"][0] == "5 series x 600 points"


def test_bench_alerting(tmp_path: Path) -> None:
    # 130 event-time seconds: long enough for the bench's spread blow-out (s % 120 > 90) to fire a core rule
    out = _bench(tmp_path, "alerting", "--seconds", "130", "--symbols", "2", "--repeat", "1")
    ((first, cells),) = _rows(out).items()
    records, transitions, engine, decode, ratio = _num(first), *map(_num, cells)
    assert records > 0 and transitions > 0
    _positive(engine, decode)
    assert ratio == pytest.approx(engine / decode, abs=0.01)


def test_bench_simulate(tmp_path: Path) -> None:
    out = _bench(tmp_path, "simulate", "--seconds", "2", "--runs", "1", "--symbols", "2")
    assert "4 venues x 2 symbols, 2 simulated s per run, 1 runs" in out, out
    figures = r"([\d,]+) frames/s wall, ([\d,]+) frames/CPU-s"
    baseline = re.search(r"baseline, same frames encoded without sockets: " + figures, out)
    served = re.search(r"served to websocket clients \(server process\): +" + figures, out)
    ratio = re.search(r"ratio served/baseline: ([\d.]+) wall, ([\d.]+) CPU", out)
    assert baseline and served and ratio, out
    (base_wall, base_cpu), (wall, cpu) = ([_num(g) for g in m.groups()] for m in (baseline, served))
    _positive(base_wall, base_cpu, wall, cpu)
    assert float(ratio.group(1)) == pytest.approx(wall / base_wall, abs=0.01)


def test_bench_broker(tmp_path: Path) -> None:
    out = _bench(tmp_path, "broker", "--levels", "50,1500", "--rounds", "20")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if re.match(r"\| \d", line)]
    assert [int(r[0]) for r in rows] == [50, 1500], out
    (_, base_cpu, base_wall, base_ratio), (_, cpu, wall, ratio) = ([c.strip() for c in r] for r in rows)
    _positive(float(base_wall), float(wall), float(cpu))  # the first level's CPU may round to 0 ticks
    assert base_ratio in ("1.0x", "n/a") and (ratio == "n/a" or _num(ratio) == pytest.approx(
        float(cpu) / float(base_cpu), rel=0.05, abs=0.06))  # fmt: skip


def test_bench_aggregate(aggregate_run: Bench) -> None:
    out = aggregate_run.result()
    found = re.findall(r"^(.+?)\s*: +(\S+) trades/s +(\S+) trades/CPU-s", out, re.MULTILINE)
    rates = {name: (float(per_s), float(per_cpu)) for name, per_s, per_cpu in found}
    assert set(rates) == {
        "raw aiokafka getmany+decode, md.trades.v1",
        "raw aiokafka getmany+decode, batches",
        "naive Faust per-event agent",
        "marketprism worker (batches)",
    }, out
    _positive(*(v for pair in rates.values() for v in pair))
    ratios = re.search(r"worker / naive = ([\d.]+)x .*, worker / raw = ([\d.]+)x", out)
    assert ratios, out
    worker = rates["marketprism worker (batches)"][0]
    naive = rates["naive Faust per-event agent"][0]
    raw = rates["raw aiokafka getmany+decode, md.trades.v1"][0]
    assert float(ratios.group(1)) == pytest.approx(worker / naive, abs=0.1)
    assert float(ratios.group(2)) == pytest.approx(worker / raw, abs=0.01)
    latency = re.search(
        r"bar latency at 2000 trades/s, worker defaults \((\d+) 1s bars.*: p50 (\d+) ms, p99 (\d+) ms", out
    )
    assert latency, out
    bars, p50, p99 = map(int, latency.groups())
    assert bars > 0 and 0 <= p50 <= p99


@pytest.mark.shared
def test_bench_nab(tmp_path: Path) -> None:
    results = tmp_path / "nab-results"
    files = [arg for relpath in NAB_FILES for arg in ("--file", relpath)]
    out = _bench(tmp_path, "nab", str(NAB_DIR), "--results", str(results), "--jobs", "1", *files)
    rows = _rows(out)
    assert list(rows) == ["standard", "reward_low_FP_rate", "reward_low_FN_rate"], out
    windows = json.loads((NAB_DIR / "labels" / "combined_windows.json").read_text())
    for score, threshold, tp, fp, fn, raw, null, perfect in rows.values():
        assert int(tp) + int(fn) == sum(len(windows[f]) for f in NAB_FILES)  # every labelled window counted
        assert float(null) < float(raw) <= float(perfect)  # between the null and the perfect detector
        assert 0.0 <= float(threshold) <= 1.0 and int(fp) >= 0 and math.isfinite(float(score))
    for relpath in NAB_FILES:  # NAB's result layout: every row of the data file scored
        category, name = relpath.split("/")
        with (results / "marketprism" / category / f"marketprism_{name}").open(newline="") as fh:
            scored = list(csv.DictReader(fh))
        with (NAB_DIR / "data" / relpath).open(newline="") as fh:
            assert len(scored) == sum(1 for _ in csv.DictReader(fh))
        assert all(0.0 <= float(row["anomaly_score"]) <= 1.0 for row in scored)
