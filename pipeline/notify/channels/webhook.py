"""Generic webhook: POSTs Alertmanager's webhook JSON (``version`` "4": ``groupKey``,
``truncatedAlerts``, ``status``, ``receiver``, ``groupLabels``, ``commonLabels``,
``commonAnnotations``, ``externalURL``, ``alerts[]`` with ``status, labels, annotations, startsAt,
endsAt, generatorURL, fingerprint``), so any Alertmanager webhook receiver works unchanged. Extra
fields a receiver may use: ``idempotencyKey`` (also the ``Idempotency-Key`` header), ``redelivery``
(also the ``X-MarketPrism-Redelivery`` header: sent again after a crash, same key), ``escalation``
and, per alert, ``state``, ``severity``, ``rule``, ``value``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from pipeline.notify.base import Batch
from pipeline.notify.channels.base import ChannelConfigBase, HttpChannel, Result
from pipeline.notify.templates import alert_view

ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt for an alert still firing


class WebhookConfig(ChannelConfigBase):
    type: Literal["webhook"]
    url: SecretStr
    max_alerts: int = Field(default=0, ge=0)  # 0: send every alert of the group
    external_url: str = ""


def payload(batch: Batch, max_alerts: int = 0, external_url: str = "") -> dict[str, Any]:
    views = [alert_view(a) for a in batch.alerts]
    kept = views[:max_alerts] if max_alerts else views
    return {
        "version": "4",
        "groupKey": batch.group_key,
        "truncatedAlerts": len(views) - len(kept),
        "status": batch.status,
        "receiver": batch.receiver,
        "groupLabels": dict(batch.group_labels),
        "commonLabels": batch.common_labels(),
        "commonAnnotations": batch.common_annotations(),
        "externalURL": external_url,
        "alerts": [
            {
                "status": v["status"],
                "labels": v["labels"] | {"alertname": v["rule"], "severity": v["severity"]},
                "annotations": v["annotations"],
                "startsAt": v["fired_at"],
                "endsAt": v["resolved_at"] or ZERO_TIME,
                "generatorURL": "",
                "fingerprint": v["fingerprint"],
                "state": v["state"],
                "severity": v["severity"],
                "rule": v["rule"],
                "value": v["value"],
            }
            for v in kept
        ],
        "idempotencyKey": batch.idempotency_key,
        "escalation": batch.escalation,
        "redelivery": batch.redelivery,
    }


class WebhookChannel(HttpChannel):
    kind: ClassVar[str] = "webhook"
    config: WebhookConfig

    async def notify(self, batch: Batch) -> Result:
        body = payload(batch, self.config.max_alerts, self.config.external_url)
        result, _ = await self.post_json(self.config.url.get_secret_value(), body, batch)
        return result
