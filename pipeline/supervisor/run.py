"""Runs the components against the configured (live) venues, Kafka and ClickHouse as child processes,
restarting a component that exits with capped, jittered backoff, until SIGINT/SIGTERM.

This is for a single host (a laptop, a VM). In production each component runs as its own service
(docker-compose.yml, one container per component) and the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.backoff import Backoff
from pipeline.supervisor.children import Child, ChildGroup

log = logging.getLogger(__name__)

COMPONENTS: dict[str, tuple[str, ...]] = {
    "sink": ("sink",),
    "worker": ("worker",),
    "anomaly": ("anomaly",),
    "alerts": ("alerts", "run"),
    "notify": ("notify",),
    "collect": ("collect",),
}


RESTART_BACKOFF = Backoff(base_s=1.0, cap_s=60.0)  # restarts of a component that keeps exiting (full jitter)


def _prepare(config: Path | None) -> None:
    """Make the broker and the database match the registry and migrations before anything starts."""
    base = [sys.executable, "-m", "pipeline", *(("--config", str(config)) if config else ())]
    for step in (("topics", "apply"), ("db", "migrate")):
        result = subprocess.run([*base, *step], capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv built by this module, no shell
        if result.returncode != 0:
            raise RuntimeError(f"`marketprism {' '.join(step)}` failed:\n{result.stdout}{result.stderr}")
        log.info("%s: ok", " ".join(step))


async def supervise(
    config: Path | None,
    components: Sequence[str],
    log_dir: Path,
    notify_routes: Path | None = None,
    metrics_port: int = 0,
    backoff: Backoff = RESTART_BACKOFF,
    stable_s: float = 300.0,
) -> None:
    """Start the components and keep them running until a termination signal (``config`` is absolute)."""
    await asyncio.to_thread(_prepare, config)
    env = {"MARKETPRISM_CONFIG": str(config)} if config else {}
    group = ChildGroup(log_dir, env=env)
    rng = random.Random()  # noqa: S311 - simulation/jitter randomness, not security
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def args_of(name: str) -> list[str]:
        args = list(COMPONENTS[name])
        if name == "notify" and notify_routes is not None:
            args += ["--routes", str(notify_routes)]
        return args

    # One host, one /metrics port per component: the configured port, then the next ones in `components` order.
    ports = {name: str(metrics_port + i) if metrics_port else "0" for i, name in enumerate(components)}
    for name, port in ports.items():
        log.info("%s serves /metrics on port %s", name, port)

    def start(name: str) -> Child:
        return group.start(name, args_of(name), {"MARKETPRISM_METRICS_PORT": ports[name]})

    running: dict[str, tuple[Child, float, int]] = {}
    for name in components:
        running[name] = (start(name), time.monotonic(), 0)
    try:
        while not stop.is_set():
            for name, (child, started, attempts) in list(running.items()):
                if child.alive:
                    continue
                attempts = 0 if time.monotonic() - started > stable_s else attempts + 1
                delay = backoff.delay(attempts, rng.uniform)
                log.error(
                    "%s exited with %s; restarting in %.1fs (log: %s)",
                    name,
                    child.process.returncode,
                    delay,
                    child.log_path,
                )
                group.children.remove(child)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    running[name] = (start(name), time.monotonic(), attempts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        killed = group.stop()
        if killed:
            log.warning("had to SIGKILL: %s", ", ".join(killed))
