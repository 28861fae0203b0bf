"""The Faust app factory: one configuration that works on Tansu (dev, tests) and on Apache Kafka.

Values travel as raw bytes and are decoded with the contracts' msgspec decoders inside agents
(faster than Faust's codecs and validated). Group timings come from the settings so a worker joins
in a few seconds on Tansu. No ``exactly_once``: Tansu rejects InitProducerId, and effectively-once
comes from deterministic outputs, idempotent sinks and fingerprinted alerts instead.

Internal topics (table changelogs, repartition topics) get the replication factor of the registry's environment
(settings ``environment``: prod 3, local 1); tables pass :func:`table_topic_configs` so their changelogs also get
its ``min.insync.replicas``.
"""

from __future__ import annotations

from typing import Any

import faust

from pipeline.contracts import load_registry
from pipeline.kafka.clients import ssl_context_for
from pipeline.settings import KafkaSettings, Settings


def table_topic_configs(settings: Settings) -> dict[str, str]:
    """Topic configs of a Faust table's changelog: ``min.insync.replicas`` of the environment."""
    return {"min.insync.replicas": str(load_registry().replication(settings.environment).min_insync_replicas)}


def _credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
    ssl_context = ssl_context_for(kafka)
    if kafka.sasl_mechanism == "PLAIN":
        return faust.SASLCredentials(username=kafka.sasl_username or "", password=password, ssl_context=ssl_context)
    if kafka.sasl_mechanism is not None:
        return faust.SASLCredentials(
            username=kafka.sasl_username or "",
            password=password,
            ssl_context=ssl_context,
            mechanism=kafka.sasl_mechanism,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


def create_app(settings: Settings, app_id: str, **overrides: Any) -> faust.App:
    """A Faust app for component ``app_id`` (also its consumer group id)."""
    kafka = settings.kafka
    datadir = settings.state_dir / "faust" / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    servers = ";".join(f"kafka://{s.strip()}" for s in kafka.bootstrap_servers.split(","))
    options: dict[str, Any] = {
        "broker": servers,
        "broker_credentials": _credentials(kafka),
        "key_serializer": "raw",
        "value_serializer": "raw",
        "store": "memory://",
        "web_enabled": False,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": kafka.session_timeout_ms / 1000,
        "broker_heartbeat_interval": kafka.heartbeat_interval_ms / 1000,
        "broker_rebalance_timeout": kafka.rebalance_timeout_ms / 1000,
        "producer_compression_type": kafka.compression_type,
        "producer_linger_ms": kafka.linger_ms,
        "topic_replication_factor": load_registry().replication(settings.environment).replication_factor,
        "datadir": str(datadir),
    }
    return faust.App(f"{settings.topic_prefix}{app_id}", **(options | overrides))
