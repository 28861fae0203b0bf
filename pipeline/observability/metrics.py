"""Prometheus metrics helper: shared metric families and one ``/metrics`` HTTP server per process.

Every metric is named ``marketprism_<what>_<unit>``. Components define their own families next to
their code with :func:`counter` / :func:`gauge` / :func:`histogram` so names stay consistent; the
families below are the ones more than one component increments.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

NAMESPACE = "marketprism"


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
    return Counter(name, doc, labelnames=list(labels), namespace=NAMESPACE)


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
    return Gauge(name, doc, labelnames=list(labels), namespace=NAMESPACE)


def histogram(name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = ()) -> Histogram:
    if buckets:
        return Histogram(name, doc, labelnames=list(labels), namespace=NAMESPACE, buckets=list(buckets))
    return Histogram(name, doc, labelnames=list(labels), namespace=NAMESPACE)


PRODUCED = counter("produced_records_total", "Records acknowledged by the broker", ["topic"])
PRODUCE_ERRORS = counter(
    "produce_errors_total", "Records not produced (overflow, broker error, failed delivery)", ["topic", "reason"]
)
DEAD_LETTERS = counter("dead_letters_total", "Inputs sent to ops.dlq.v1", ["source", "reason"])


def serve_metrics(port: int, registry: CollectorRegistry = REGISTRY, addr: str = "127.0.0.1") -> int | None:
    """Start the ``/metrics`` endpoint on ``addr:port`` (0 disables it); returns the port or None.

    Loopback by default (settings ``metrics_host``): metric labels name markets, topics and consumer groups, and
    the endpoint has no authentication. A container that Prometheus scrapes sets ``MARKETPRISM_METRICS_HOST=0.0.0.0``
    on its private network without publishing the port."""
    if port == 0:
        return None
    start_http_server(port, addr=addr, registry=registry)
    log.info("metrics on http://%s:%d/metrics", addr, port)
    return port
