"""ClickHouse sinks: every registry topic into its own table, effectively once.

Modules: ``base`` (the sink protocol, batching, errors), ``schema`` (tables derived from the records),
``migrations`` (versioned DDL, ``db migrate|status``), ``clickhouse`` (what both backends share:
validation, dedup tokens, retries, recovery), ``chdb_backend`` (embedded), ``driver_backend``
(clickhouse-driver, server), ``factory`` (backend from the URL), ``runner`` (the consumer loop),
``metrics``, ``grafana`` (the dashboards' macro expansion), ``bench`` and ``cli``.
"""
