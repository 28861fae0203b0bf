"""Online anomaly detection (River) and failure prediction.

Modules: ``detectors`` (raw River-contract scorers), ``ensemble`` (calibration, warm-up, drift,
refractory: one :class:`SeriesDetector` per series), ``runs`` (run-length surprise for frozen prices),
``registry`` (series and their features from Bar/FeedMetrics/ReferencePrice, per-metric policy),
``evaluate`` (recall and false anomalies against the simulator's labels), ``checkpoint`` (model state
in a Faust table), ``forecasting`` and ``health`` (time-to-threshold forecasts of pipeline health),
``agents`` (the Faust worker), ``nab`` and ``nab_scorer`` (the NAB harness and our implementation of
its scoring), ``bench`` and ``cli``.
"""
