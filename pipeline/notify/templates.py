"""Message templates: Jinja2 (sandboxed) rendering of a batch, with each channel's defaults.

A template sees ``status`` (firing/resolved), ``receiver``, ``group_key``, ``group_labels``,
``common_labels``, ``common_annotations``, ``alerts``/``firing``/``resolved`` (lists of dicts with
``fingerprint, rule, state, status, severity, labels, annotations, value, fired_at, resolved_at``;
times as ISO-8601 UTC), ``escalation`` (0: first route, n: n-th escalation step) and
``idempotency_key``. A template that fails to render is a non-retryable channel error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from pipeline.notify.base import Batch, ChannelError, GroupAlert

DEFAULT_TITLE = (
    "[{{ status|upper }}{% if status == 'firing' %}:{{ firing|length }}{% endif %}] "
    "{{ common_labels.get('rule') or (alerts[0].rule if alerts else '') }}"
    "{% if escalation %} (escalation {{ escalation }}){% endif %}"
)

DEFAULT_TEXT = (
    "{% for a in firing %}- [{{ a.severity }}] {{ a.rule }}{% if a.state != 'firing' %} ({{ a.state }}){% endif %}: "
    "{{ a.annotations.get('summary', '') }}{% if a.value is not none %} (value {{ a.value }}){% endif %}\n"
    "  labels: {% for k, v in a.labels|dictsort %}{{ k }}={{ v }} {% endfor %}\n"
    "{% endfor %}{% for a in resolved %}- RESOLVED [{{ a.severity }}] {{ a.rule }}: "
    "{{ a.annotations.get('summary', '') }}\n"
    "  labels: {% for k, v in a.labels|dictsort %}{{ k }}={{ v }} {% endfor %}\n"
    "{% endfor %}"
)


@cache
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(autoescape=False, keep_trailing_newline=False, undefined=jinja2.StrictUndefined)


@cache
def compile_template(source: str) -> jinja2.Template:
    """Compile once; raises :class:`jinja2.TemplateSyntaxError` on a bad template (checked at config load)."""
    return _environment().from_string(source)


def _iso(micros: int | None) -> str | None:
    if micros is None:
        return None
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC).isoformat().replace("+00:00", "Z")


def alert_view(item: GroupAlert) -> dict[str, Any]:
    a = item.alert
    return {
        "fingerprint": a.fingerprint,
        "rule": a.rule,
        "state": a.state,
        "status": "resolved" if item.status == "resolved" else "firing",
        "severity": a.severity,
        "labels": dict(a.labels),
        "annotations": dict(a.annotations),
        "value": a.value,
        "fired_at": _iso(a.fired_at or a.active_since or a.ts_event),
        "resolved_at": _iso(a.resolved_at),
    }


def context(batch: Batch) -> dict[str, Any]:
    return {
        "status": batch.status,
        "receiver": batch.receiver,
        "group_key": batch.group_key,
        "group_labels": dict(batch.group_labels),
        "common_labels": batch.common_labels() | {"rule": _common_rule(batch)},
        "common_annotations": batch.common_annotations(),
        "alerts": [alert_view(a) for a in batch.alerts],
        "firing": [alert_view(a) for a in batch.firing],
        "resolved": [alert_view(a) for a in batch.resolved],
        "escalation": batch.escalation,
        "idempotency_key": batch.idempotency_key,
    }


def _common_rule(batch: Batch) -> str:
    rules = {a.alert.rule for a in batch.alerts}
    return rules.pop() if len(rules) == 1 else ""


def render(source: str, batch: Batch) -> str:
    """Render ``source`` against ``batch``."""
    try:
        return compile_template(source).render(context(batch)).strip()
    except jinja2.TemplateError as exc:
        raise ChannelError(f"template failed: {exc}", retryable=False) from exc
