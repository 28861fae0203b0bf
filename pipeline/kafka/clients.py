"""aiokafka client construction from :class:`~pipeline.settings.KafkaSettings` (plain, TLS, SASL)."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context

from pipeline.kafka.producer import KeyHashPartitioner, RecordProducer
from pipeline.settings import KafkaSettings


def ssl_context_for(kafka: KafkaSettings) -> ssl.SSLContext | None:
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return create_ssl_context(
        cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
        certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
        keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
    )


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security options common to producers, consumers and admin clients."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    if (context := ssl_context_for(kafka)) is not None:
        options["ssl_context"] = context
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return options


def make_producer(kafka: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """A batching, compressing producer (not idempotent: Tansu rejects InitProducerId)."""
    options = client_options(kafka) | {
        "acks": "all",
        "linger_ms": kafka.linger_ms,
        "max_batch_size": kafka.max_batch_size,
        "compression_type": kafka.compression_type,
        "enable_idempotence": False,
        "partitioner": KeyHashPartitioner(),  # the default partitioning, key hashes memoised
    }
    return AIOKafkaProducer(**(options | overrides))


def make_record_producer(
    kafka: KafkaSettings, topic_prefix: str = "", max_in_flight: int = 100_000, **overrides: Any
) -> RecordProducer:
    """A :class:`RecordProducer` on :func:`make_producer` (``overrides``: its options), handed the producer's
    partitioner so it picks keyed records' partitions itself (the same ones aiokafka would)."""
    partitioner = KeyHashPartitioner()
    producer = make_producer(kafka, partitioner=partitioner, **overrides)
    return RecordProducer(producer, topic_prefix, max_in_flight, partitioner=partitioner)


def consumer_options(kafka: KafkaSettings, group_id: str | None) -> dict[str, Any]:
    return client_options(kafka) | {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "rebalance_timeout_ms": kafka.rebalance_timeout_ms,
    }


def make_consumer(kafka: KafkaSettings, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer with manual commits (commit after the work is durable)."""
    return AIOKafkaConsumer(*topics, **(consumer_options(kafka, group_id) | overrides))
