"""Prometheus metrics of the rule engine."""

from __future__ import annotations

from pipeline.observability.metrics import counter, gauge

INPUTS = counter("alerting_input_records_total", "Input records the rule engine evaluated", ["source"])
BAD_INPUTS = counter("alerting_bad_inputs_total", "Inputs and commands the rule engine dead-lettered", ["reason"])
TRANSITIONS = counter("alerting_transitions_total", "Alert records published on ops.alerts.v1", ["rule", "state"])
REPLAYED = counter(
    "alerting_replayed_transitions_total", "Transitions regenerated after a restart and not published again"
)
CHECKPOINTS = counter("alerting_checkpoints_total", "Engine checkpoints written")
CHECKPOINTS_REFUSED = counter(
    "alerting_checkpoints_refused_total", "Checkpoints refused at start (forged, unsealed, unreadable)", ["reason"]
)
EVENT_TIME = gauge("alerting_event_time_seconds", "The rule engine's event-time watermark")
ACTIVE = gauge("alerting_active_alerts", "Pending and firing alerts")
