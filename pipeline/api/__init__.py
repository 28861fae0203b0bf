"""The operations API (``marketprism api``): live views of alerts, silences, anomalies, forecasts, feed health
and market state built from the topics, history from ClickHouse, operator commands written to
``ops.alert_actions.v1`` and ``ops.silences.v1``, a Server-Sent Events stream and Alertmanager API v2
compatibility; bearer-token authentication with roles. docs/api.md describes it."""
