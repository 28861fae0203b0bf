"""The root of the aggregation package's errors.

Hierarchy::

    AggregationError
    └── PartitioningError   the worker's inputs are not co-partitioned (registry)   [also ValueError]

Bad input records are not errors: they go to ``ops.dlq.v1`` and are counted (:mod:`pipeline.aggregation.worker`).
"""

from __future__ import annotations


class AggregationError(Exception):
    """Root of the aggregation errors."""


class PartitioningError(AggregationError, ValueError):
    """The trade batches and BBO topics do not have the same partition count (they must be co-partitioned)."""
