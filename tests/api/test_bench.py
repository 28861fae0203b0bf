"""`marketprism bench api` in a bounded form: it runs end to end (server child, load from another process,
static baseline, stream clients on a scratch broker) and reports every figure. No timing assertions: the
figures go to docs/benchmarks.md."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from pipeline.cli import app


def test_bench_api_runs_and_reports_every_figure() -> None:
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "api",
            "--alerts",
            "200",
            "--page",
            "20",
            "--connections",
            "4",
            "--seconds",
            "1",
            "--subscribers",
            "5",
        ],
        env={"MARKETPRISM_METRICS_PORT": "0"},
    )
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    out = result.stdout
    for run in ("one query (cached)", "offsets (rendered)", "same size, same auth", "same size, no auth"):
        row = next(line for line in out.splitlines() if run in line)
        rate, errors = float(row.split()[-6].replace(",", "")), int(row.split()[-3])
        assert rate > 0 and errors == 0, row
    assert re.search(r"5 subscribers, 100 deliveries: p50 [\d.]+ ms, p99 [\d.]+ ms", out), out
