"""Local infrastructure for development, tests and the demo: the Tansu broker and a ClickHouse server.

``marketprism infra up|down|status`` drives it. Every process is started detached with a PID file
in the state dir and stopped by that PID only (after checking the PID still runs our command), so
``down`` never touches a process it did not start. Production never needs this package.
"""

from pipeline.infra.scratch import scratch_broker, with_fresh_prefix
from pipeline.infra.services import (
    InfraError,
    ManagedProcess,
    ServiceStatus,
    broker_service,
    clickhouse_server_binary,
    clickhouse_service,
    cpu_seconds,
    free_port,
)

__all__ = [
    "InfraError",
    "ManagedProcess",
    "ServiceStatus",
    "broker_service",
    "clickhouse_server_binary",
    "clickhouse_service",
    "cpu_seconds",
    "free_port",
    "scratch_broker",
    "with_fresh_prefix",
]
