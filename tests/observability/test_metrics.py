"""The metrics helper serves Prometheus text on its own port, with the shared families."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry, Counter

from pipeline.infra import free_port
from pipeline.observability.metrics import DEAD_LETTERS, serve_metrics


def test_serves_metrics_on_a_port() -> None:
    registry = CollectorRegistry()
    seen = Counter("marketprism_test_events_total", "test events", ["kind"], registry=registry)
    seen.labels(kind="trade").inc(3)
    port = serve_metrics(free_port(), registry=registry, addr="127.0.0.1")
    assert port is not None
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'marketprism_test_events_total{kind="trade"} 3.0' in body


def test_disabled_with_port_zero() -> None:
    assert serve_metrics(0) is None


def test_shared_dead_letter_family_is_labelled() -> None:
    before = DEAD_LETTERS.labels(source="unit", reason="bad_json")._value.get()
    DEAD_LETTERS.labels(source="unit", reason="bad_json").inc()
    assert DEAD_LETTERS.labels(source="unit", reason="bad_json")._value.get() == before + 1


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port`` (Linux /proc/net/tcp and tcp6, hex)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in list(handle)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def test_metrics_listen_on_loopback_unless_configured() -> None:
    from pipeline.settings import Settings

    assert Settings(metrics_port=0).metrics_host == "127.0.0.1"
    port = serve_metrics(free_port(), registry=CollectorRegistry())  # the default address
    assert port is not None
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0 (00000000)
