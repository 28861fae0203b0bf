"""``marketprism bench collect`` in a bounded form (one round, one pass, the three smaller captures) on
the harness broker: the pipeline and the baseline send the same records, and the counts add up."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.bench.collectors import run_rounds, summary
from pipeline.settings import Settings


@pytest.mark.shared
@pytest.mark.slow
async def test_bench_collect_one_round(topics: Settings, replay_dir: Path) -> None:
    names = ["binance.txt", "okx.txt", "binance_futures.txt"]
    (passes,) = await run_rounds(topics, rounds=1, repeat=1, replay_dir=replay_dir, names=names)
    assert [p.capture for p in passes] == names
    for done in passes:
        assert done.records == done.baseline_records > 0  # the baseline sends the very records the pipeline sent
        assert done.frames > 0 and done.events >= done.records
        assert 0 < done.feed_cpu_s < done.cpu_s and done.baseline_cpu_s > 0
    rows = summary([passes])
    assert rows["all"]["records"] == sum(p.records for p in passes)
    ws_in = sum(1 for line in (replay_dir / "okx.txt").read_text().splitlines() if line.split("\t")[1] == "ws_in")
    assert rows["okx.txt"]["frames"] == ws_in
