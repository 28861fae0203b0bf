"""Online anomaly detection (River) and failure prediction.

Modules: ``detectors`` (raw River-contract scorers), ``ensemble`` (calibration, warm-up, drift,
refractory: one :class:`SeriesDetector` per series), ``runs`` (run-length surprise for frozen prices),
``registry`` (series and their features from Bar/FeedMetrics/ReferencePrice, per-metric policy),
``checkpoint`` (model state in a Faust table), ``forecasting`` and ``health`` (time-to-threshold
forecasts of pipeline health), ``agents`` (the Faust worker) and ``cli``. Its measuring tools (simulator
evaluation, the NAB harness and scorer, the cost benchmark) live in :mod:`pipeline.bench.anomaly`.
"""
