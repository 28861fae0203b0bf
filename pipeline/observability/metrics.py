"""Prometheus metrics helper: shared metric families and one HTTP server per process serving ``/metrics`` and the
process's ``/healthz`` and ``/readyz`` (:mod:`pipeline.observability.health`).

Every metric is named ``marketprism_<what>_<unit>``. Components define their own families next to
their code with :func:`counter` / :func:`gauge` / :func:`histogram` so names stay consistent; the
families below are the ones more than one component increments.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from pipeline.observability.health import HEALTH, Health

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


class _Server(ThreadingWSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def health_wsgi_app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    """``/healthz`` and ``/readyz`` (JSON, 200 or 503) from ``health``; every other path is Prometheus's app."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok, doc = health.live() if path == "/healthz" else health.ready()
            body = json.dumps(doc).encode()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    return app


def serve_metrics(
    port: int, registry: CollectorRegistry = REGISTRY, addr: str = "127.0.0.1", health: Health = HEALTH
) -> int | None:
    """Start the ``/metrics``, ``/healthz`` and ``/readyz`` endpoint on ``addr:port`` (0 disables it); returns the
    port or None.

    Loopback by default (settings ``metrics_host``): metric labels name markets, topics and consumer groups, and
    the endpoint has no authentication. A container that Prometheus scrapes sets ``MARKETPRISM_METRICS_HOST=0.0.0.0``
    on its private network without publishing the port (the kubelet's probes need it too)."""
    if port == 0:
        return None
    server_class = _Server6 if ":" in addr else _Server
    httpd = make_server(addr, port, health_wsgi_app(registry, health), server_class, handler_class=_SilentHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)", addr, port)
    return port
