"""The shared contracts: typed records for every topic value and the topic registry.

This is the only module components share. Producers encode records with :func:`encode`, consumers
decode them with :func:`decoder_for`; the JSON Schemas in ``schemas/`` are generated from these
records (``marketprism topics schemas --write``) and a test keeps the two in agreement. Topics are
objects (:mod:`pipeline.contracts.topics`: ``TRADES``, ``DLQ``, ... and ``topic_for(Trade)``); no other
module spells a topic name.
"""

from pipeline.contracts.codec import DecodeError, decode, decoder_for, encode
from pipeline.contracts.labels import IncidentLabel, read_labels
from pipeline.contracts.records import (
    RECORD_TYPES,
    Alert,
    Anomaly,
    Bar,
    BatchTrade,
    Bbo,
    BookUpdate,
    DeadLetter,
    FeedMetrics,
    Funding,
    Liquidation,
    Notification,
    OpenInterest,
    Record,
    Trade,
    TradeBatch,
    market_key,
)
from pipeline.contracts.topics import REGISTRY, InternalTopic, Topic, TopicRegistry, load_registry, topic_for

__all__ = [
    "RECORD_TYPES",
    "REGISTRY",
    "Alert",
    "Anomaly",
    "Bar",
    "BatchTrade",
    "Bbo",
    "BookUpdate",
    "DeadLetter",
    "DecodeError",
    "FeedMetrics",
    "Funding",
    "IncidentLabel",
    "InternalTopic",
    "Liquidation",
    "Notification",
    "OpenInterest",
    "Record",
    "Topic",
    "TopicRegistry",
    "Trade",
    "TradeBatch",
    "decode",
    "decoder_for",
    "encode",
    "load_registry",
    "market_key",
    "read_labels",
    "topic_for",
]
