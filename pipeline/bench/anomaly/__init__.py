"""Measuring tools of the anomaly component: ``evaluate`` (recall and false anomalies against the simulator's
labels), ``nab`` and ``nab_scorer`` (the NAB harness and our implementation of its scoring), ``nab_official``
(NAB's own scorer in a venv of its own), ``bench`` (update cost and memory) and ``cli`` (their commands)."""
