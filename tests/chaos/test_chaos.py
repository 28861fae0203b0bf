"""The bounded chaos suite: seeded rounds of a real capture through the collector into the worker while the
worker is SIGKILLed, SIGSTOPped, restarted and cut off the broker; every bar equals the independent
computation, nothing crashed, every dead letter has a reason (``marketprism bench chaos`` runs the long form;
docs/operations.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.bench.chaos import relayed_broker, run_chaos, schedule
from pipeline.settings import Settings

FIRST_SEED, ROUNDS = 5, 5  # seeds 5..9: both captures; SIGKILL, SIGSTOP, SIGTERM and connection drops
# shorter group timeouts than the defaults (10 s / 5 s): a killed member leaves the group sooner, so a round takes
# ~25 s instead of ~40 s (more rebalances per second of data, not fewer)
FAST_GROUPS = {"MARKETPRISM_KAFKA__SESSION_TIMEOUT_MS": "6000", "MARKETPRISM_KAFKA__REBALANCE_TIMEOUT_MS": "3000"}


def test_a_seed_gives_the_same_schedule() -> None:
    assert schedule(1234, "chaos", drops=True) == schedule(1234, "chaos", drops=True)
    assert {str(schedule(seed, "kill")[0]) for seed in range(3)} == {"kill@0.25", "kill@0.33", "kill@0.50"}
    kinds = {a.kind for seed in range(FIRST_SEED, FIRST_SEED + ROUNDS) for a in schedule(seed, "chaos", drops=True)}
    assert kinds == {"kill", "stop", "term", "drop"}


@pytest.mark.shared
@pytest.mark.timeout(600)  # ~2-3 min; five rounds of a busy shared machine can take longer than the default 300 s
async def test_seeded_chaos_rounds_lose_nothing(settings: Settings, replay_dir: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    async with relayed_broker(settings) as (local, relay):  # a broker of its own, behind the relay that drops
        results = await run_chaos(local, ROUNDS, FIRST_SEED, "chaos", replay_dir, tmp_path, echo=lines.append,
                                  relay=relay, worker_env=FAST_GROUPS)  # fmt: skip
    assert all(r.clean for r in results), "\n".join(lines)  # a failing line names its seed: --seed S replays it
    assert all(r.expected > 0 for r in results)
    assert relay.drops >= 1
