"""Run-length surprise: the detector of the frozen-price series.

A frozen price is not an unusual value but an unusual *absence of change*: a venue whose book stops
moving and whose trades all print at the last price produces bars with ``high == low == close ==``
the previous close. The series value is the length of the current run of such bars. The detector
learns the probability ``p`` that a bar is flat and unchanged (exponentially decayed counts plus a
Beta prior; a run is learned when it ends, anomalous runs never) and scores a run of ``k`` bars by its surprise
``s = -k * log10(p)`` (how many decades less likely than one chance in ten it is under independence),
mapped to ``s / (s + half)`` in ``[0, 1)``. A run is reported once, when it first crosses the floor.

Same ``update(value, t_s) -> Scored`` interface as :class:`~pipeline.anomaly.ensemble.SeriesDetector`,
so the registry, the checkpoints and the worker treat both alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.anomaly.ensemble import Scored


@dataclass(frozen=True)
class RunConfig:
    prior_hits: float = 1.0  # Beta prior: one flat bar in ...
    prior_bars: float = 50.0  # ... fifty (p = 0.02 before any data)
    span: int = 3600  # decay of the counts (bars)
    half: float = 6.5  # surprise mapped to score 0.5; 6 decades -> 0.48 (the default floor is 0.475)
    warmup: int = 60  # bars seen before a run can be reported
    report_floor: float = 0.475


class RunLengthDetector:
    """Scores the length of a run of 'no change' bars against the learned chance of one such bar."""

    def __init__(self, config: RunConfig | None = None):
        self.config = config or RunConfig()
        self.hits = 0.0  # decayed count of flat bars (the prior is added when estimating p)
        self.bars = 0.0
        self.seen = 0
        self.reported = False  # the current run was already reported
        self.pending = 0  # flat bars of the current run, learned when it ends

    @property
    def warm(self) -> bool:
        return self.seen >= self.config.warmup

    @property
    def p(self) -> float:
        c = self.config
        return min(0.5, (self.hits + c.prior_hits) / (self.bars + c.prior_bars))

    def surprise(self, run: int) -> float:
        return run * -math.log10(self.p) if run > 0 else 0.0

    def update(self, value: float, t_s: float | None = None) -> Scored:
        c = self.config
        run = max(0, int(value))
        s = self.surprise(run)
        score = s / (s + c.half) if self.warm else 0.0
        floor_s = c.half * c.report_floor / (1.0 - c.report_floor)
        upper = float(math.floor(floor_s / -math.log10(self.p)))  # the longest run not reported
        if score >= c.report_floor:
            if self.reported:
                score = 0.0  # one report per run
            self.reported = True
        decay = 1.0 - 1.0 / c.span
        self.hits *= decay
        self.bars = self.bars * decay + 1.0
        if run == 0:
            # a run is learned when it ends, and only when it was not anomalous, so the first flat bars of a
            # freeze do not raise p before the run is judged
            if self.pending and not self.reported:
                self.hits += self.pending
            self.pending = 0
            self.reported = False
        else:
            self.pending = run
        self.seen += 1
        return Scored(float(run), score, "run_length", 0.0, 0.0, upper)
