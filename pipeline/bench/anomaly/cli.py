"""Commands of the anomaly measuring tools: ``marketprism anomaly evaluate`` (recall and false anomalies against
the simulator's labels), ``marketprism bench nab DIR [--official NAB]`` and ``marketprism bench anomaly``;
``pipeline/cli.py`` registers them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.anomaly.ensemble import DetectorConfig

log = logging.getLogger(__name__)
console = Console()


def bench_nab(
    nab_dir: Annotated[Path, typer.Argument(help="NAB checkout (data/, labels/, profiles.json)")],
    results: Annotated[Path, typer.Option(help="where results/<detector>/<category>/... are written")] = Path(
        ".marketprism/nab-results"
    ),
    jobs: Annotated[int, typer.Option(help="processes")] = 2,
    file: Annotated[list[str] | None, typer.Option(help="only these <category>/<file>.csv (repeatable)")] = None,
    official: Annotated[
        Path | None,
        typer.Option(help="also score with NAB's own run.py from this numenta/NAB checkout (all files only)"),
    ] = None,
    official_venv: Annotated[Path, typer.Option(help="venv for NAB's scorer (made on first use)")] = Path(
        ".marketprism/nab-venv"
    ),
    official_python: Annotated[
        str, typer.Option(help="interpreter the venv is made from (3.7: NAB's exact pins; later: pandas 1.5.3)")
    ] = "python3",
    cv: Annotated[
        bool, typer.Option(help="instead: the 2-fold cross-validation of docs/anomaly.md over nab_cv.GRID")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a DetectorConfig field for every file: NAME=VALUE (repeatable)"),
    ] = None,
) -> None:
    """Stream every NAB file through the detector, write NAB's result layout and score all profiles (with
    ``--official NAB``: also by NAB's own scorer, which must agree with ours to 0.01)."""
    import time

    from pipeline.anomaly.ensemble import DetectorConfig
    from pipeline.bench.anomaly.nab import run_benchmark

    config = _config(DetectorConfig(), set_ or [])
    started = time.perf_counter()
    if cv:
        _cross_validate(nab_dir, config, jobs, file)
        console.print(f"{time.perf_counter() - started:.1f}s")
        return
    scores = run_benchmark(nab_dir, results, config, files=file, jobs=jobs)
    table = Table("profile", "score", "threshold", "TP windows", "FP rows", "FN windows", "raw", "null", "perfect")
    for r in scores:
        table.add_row(
            r.profile,
            f"{r.score:.2f}",
            f"{r.threshold:.4f}",
            str(r.tp),
            str(r.fp),
            str(r.fn),
            f"{r.raw:.2f}",
            f"{r.null:.1f}",
            f"{r.perfect:.1f}",
        )
    console.print(table)
    console.print(f"config: {config}")
    console.print(f"results in {results}; {time.perf_counter() - started:.1f}s")
    if official is not None:
        _official(official, results, official_venv, official_python, jobs, {r.profile: r.score for r in scores}, file)


def _config(base: DetectorConfig, overrides: list[str]) -> DetectorConfig:
    """``base`` with ``NAME=VALUE`` overrides, each value parsed as the field's current type."""
    import dataclasses

    changes: dict[str, object] = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        current = getattr(base, name, None)
        if not sep or name not in {f.name for f in dataclasses.fields(base)} or isinstance(current, tuple):
            raise typer.BadParameter(
                f"expected a scalar DetectorConfig field NAME=VALUE, got {item!r}", param_hint="--set"
            )
        try:
            if isinstance(current, bool):
                changes[name] = text.lower() in ("1", "true", "yes")
            elif current is None:
                changes[name] = None if text.lower() == "none" else float(text)
            else:
                changes[name] = type(current)(text)
        except ValueError as exc:
            raise typer.BadParameter(f"{name}: {exc}", param_hint="--set") from exc
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _cross_validate(nab_dir: Path, config: DetectorConfig, jobs: int, files: list[str] | None) -> None:
    from pipeline.bench.anomaly.nab_cv import run_cv

    result = run_cv(nab_dir, base=config, jobs=jobs, files=files, progress=lambda line: console.print(line))
    table = Table("tuned on", "parameters", "tuning standard", "scored on", "standard", "low FP", "low FN", "threshold")
    for f in result.folds:
        for how, scores in (("re-optimised", f.scores), ("carried", f.carried)):
            table.add_row(
                f.tuned_on,
                str(f.params),
                f"{f.tuning_score:.2f}",
                f.scored_on,
                f"{scores['standard']:.2f}",
                f"{scores['reward_low_FP_rate']:.2f}",
                f"{scores['reward_low_FN_rate']:.2f}",
                how,
            )
    console.print(table, width=max(console.width, 160))
    full = ", ".join(f"{k} {v:.2f}" for k, v in result.full.items())
    console.print(f"final parameters (picked on all files): {result.final_params}; full corpus: {full}")


AGREEMENT = 0.01  # NAB's scorer and ours must agree to this (normalised score points)


def _official(
    nab: Path, results: Path, venv: Path, python: str, jobs: int, ours: dict[str, float], files: list[str] | None
) -> None:
    from pipeline.bench.anomaly.nab import DETECTOR_NAME
    from pipeline.bench.anomaly.nab_official import OfficialScorerError, check_checkout, ensure_venv, run_official

    if files:
        raise typer.BadParameter("NAB's scorer scores the whole corpus: drop --file", param_hint="--official")
    try:
        check_checkout(nab)
        run = run_official(nab, results, DETECTOR_NAME, ensure_venv(venv, python), jobs)
    except OfficialScorerError as exc:
        console.print(f"official scorer: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from exc
    table = Table("profile", "NAB run.py", "ours", "difference")
    worst = 0.0
    for profile, score in run.scores.items():
        diff = ours.get(profile, float("nan")) - score
        worst = max(worst, abs(diff)) if diff == diff else float("inf")
        table.add_row(profile, f"{score:.2f}", f"{ours.get(profile, float('nan')):.2f}", f"{diff:+.4f}")
    console.print(table)
    console.print(f"NAB's scorer ran on Python {run.python} with {run.packages}", markup=False, highlight=False)
    if worst > AGREEMENT:
        console.print(f"scorers disagree by {worst:.4f} (> {AGREEMENT})", markup=False, highlight=False)
        raise typer.Exit(1)
    console.print(f"scorers agree within {AGREEMENT} (largest difference {worst:.4f})", markup=False, highlight=False)


def bench_anomaly(
    series: Annotated[int, typer.Option(help="series to update")] = 50,
    points: Annotated[int, typer.Option(help="points per series")] = 2000,
    repeats: Annotated[int, typer.Option(help="runs (the median is reported)")] = 3,
) -> None:
    """Mean update cost and memory per series, with River baselines measured in the same run."""
    from pipeline.bench.anomaly.bench import run_bench

    result = run_bench(series, points, repeats)
    table = Table("measure", "median", "note")
    for name, value, note in result.rows():
        table.add_row(name, value, note)
    console.print(table)


def evaluate_cmd(
    ctx: typer.Context,
    labels: Annotated[Path, typer.Option(help="the simulator's labels JSONL (marketprism simulate --labels)")],
    dump_in: Annotated[
        Path | None, typer.Option("--from-dump", help="evaluate a directory written by --dump instead of the broker")
    ] = None,
    dump: Annotated[Path | None, typer.Option(help="write what was read (anomalies.jsonl, series.txt) here")] = None,
    inputs: Annotated[
        Path | None, typer.Option(help="also record the worker's input topics here (for --replay)")
    ] = None,
    replay_dir: Annotated[
        Path | None,
        typer.Option("--replay", help="score a recording made with --inputs through the detectors instead"),
    ] = None,
    report_floor: Annotated[float, typer.Option(help="--replay: the worker's --report-floor")] = 0.475,
    warmup: Annotated[int, typer.Option(help="--replay: the worker's --warmup")] = 150,
    policy: Annotated[str, typer.Option(help="--replay: per-metric policy, 'current' or 'v1' (docs/anomaly.md)")] = (
        "current"
    ),
    follow: Annotated[bool, typer.Option(help="keep reading until Ctrl-C/SIGTERM or the broker stops")] = False,
    within: Annotated[float, typer.Option(help="detected when an anomaly comes at most this many s after start")] = 5.0,
    slack: Annotated[float, typer.Option(help="s after an incident's end whose anomalies are not false")] = 60.0,
    lead: Annotated[float, typer.Option(help="the span starts this many s before the first incident")] = 300.0,
    from_us: Annotated[int | None, typer.Option(help="evaluate from this simulated time (epoch us)")] = None,
    to_us: Annotated[int | None, typer.Option(help="... up to this one (e.g. where a worker stopped)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the evaluation as JSON")] = None,
    series_file: Annotated[
        Path | None, typer.Option("--series", help="also count these series ids (one a line, e.g. a dump's series.txt)")
    ] = None,
) -> None:
    """Recall and latency per simulator incident, and false anomalies per series-hour (docs/anomaly.md)."""
    import asyncio

    import orjson

    from pipeline.anomaly.ensemble import DetectorConfig
    from pipeline.bench.anomaly.evaluate import Capture, Options, capture, evaluate, read_labels, replay

    settings: Settings = ctx.obj
    if replay_dir is not None:
        config = DetectorConfig(warmup=warmup, report_floor=report_floor)
        from pipeline.anomaly.registry import METRIC_POLICY, POLICY_V1

        if policy not in ("current", "v1"):
            raise typer.BadParameter("expected current or v1", param_hint="--policy")
        captured = replay(replay_dir, config, report_floor, METRIC_POLICY if policy == "current" else POLICY_V1)
        console.print(f"replayed {replay_dir} through the detectors: {config}", markup=False, highlight=False)
        if dump is not None:
            captured.dump(dump)
    elif dump_in is not None:
        captured = Capture.load(dump_in)
    else:
        captured = asyncio.run(capture(settings, follow=follow, dump=dump, inputs=inputs))
    if series_file is not None:  # a worker that ran briefly has not checkpointed (so not named) every series
        captured.series |= set(series_file.read_text().split())
    ev = evaluate(
        read_labels(labels),
        captured.anomalies,
        captured.series,
        Options(within_s=within, slack_s=slack, lead_s=lead, from_us=from_us, to_us=to_us),
    )
    table = Table("incident", "kind", "venue", "symbol", f"<= {within:g} s", "latency s", "series", "detector")
    for r in ev.incidents:
        if r.scored:
            table.add_row(
                r.label.id,
                r.label.kind,
                r.label.venue,
                r.label.symbol or "*",
                "yes" if r.detected else "no",
                "" if r.latency_s is None else f"{r.latency_s:.1f}",
                r.series_id or "",
                r.detector or "",
            )
    console.print(table, width=max(console.width, 160))
    from pipeline.bench.anomaly.evaluate import report_lines

    for line in report_lines(ev):
        console.print(line, markup=False, highlight=False)
    if json_out is not None:
        json_out.write_bytes(orjson.dumps(ev.as_dict(), option=orjson.OPT_INDENT_2))
