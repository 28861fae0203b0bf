"""Stream aggregation: trades and BBOs into event-time bars, feed health and cross-venue references.

Modules: ``windows`` (window sizes, watermark, lateness policy), ``bars`` (OHLCV aggregation),
``book`` (book metrics per window), ``engine`` (one partition's deterministic window state),
``health`` (feed health and its 0-100 score), ``reference`` (cross-venue reference price),
``summaries`` (the compact per-partition partials shipped between agents), ``worker`` (the glue
between Faust events and the engine), ``app`` (the Faust app and its agents), ``bench`` and ``cli``.
"""
