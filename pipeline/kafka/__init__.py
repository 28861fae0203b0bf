"""Kafka plumbing every component shares: aiokafka client options from settings, a keyed producer
of contract records, the dead-letter publisher, topic administration and the Faust app factory."""

from pipeline.kafka.clients import (
    client_options,
    consumer_options,
    make_consumer,
    make_producer,
    make_record_producer,
)
from pipeline.kafka.dlq import DeadLetterPublisher
from pipeline.kafka.errors import KafkaPlumbingError
from pipeline.kafka.producer import RecordProducer

__all__ = [
    "DeadLetterPublisher",
    "KafkaPlumbingError",
    "RecordProducer",
    "client_options",
    "consumer_options",
    "make_consumer",
    "make_producer",
    "make_record_producer",
]
