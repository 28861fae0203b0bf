"""The root of :mod:`pipeline.kafka`'s own errors (aiokafka's are its own: ``aiokafka.errors.KafkaError``).

Hierarchy::

    KafkaPlumbingError
    ├── TopicApplyError   (admin.py) the broker could not be made to match the registry   [also RuntimeError]
    └── SealError         (sealed.py) a sealed record was refused                          [also ValueError]
"""

from __future__ import annotations


class KafkaPlumbingError(Exception):
    """Root of the errors :mod:`pipeline.kafka` raises."""
