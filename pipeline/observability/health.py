"""Liveness and readiness of one process, served as ``/healthz`` and ``/readyz`` beside ``/metrics``.

- **live** (``/healthz``): the process's event loop runs a callback scheduled from the HTTP thread within
  ``timeout_s``. A loop blocked by CPU-bound work or a deadlock fails it; before the component attached its loop
  (start-up) it fails too, so orchestrators give start-up its own probe (deploy/k8s uses a ``startupProbe``).
- **ready** (``/readyz``): live, and every readiness check the component registered passes. The checks run *on* the
  event loop (no state is read across threads). The ones here cover the shapes the components have:
  :class:`GroupCatchUp` (an aiokafka consumer-group member: joined and caught up), :class:`FaustCatchUp` (the same
  for a Faust worker), :func:`flag` (an ``asyncio.Event`` the component sets once it is serving) and
  :func:`gauge_at_least` (a metric the component already exports, e.g. a connected websocket).

"Caught up enough" latches per group generation: after a (re)join the member becomes ready once its lag on the
assigned partitions is at most ``max_lag`` records, and stays ready under later load (the lag autoscaler handles
load; readiness gates rollouts and disruption budgets). A rebalance starts over.

One :data:`HEALTH` per process; :func:`pipeline.observability.metrics.serve_metrics` serves it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

READY_MAX_LAG = 1000  # records behind the assigned partitions' ends a member may be and still count as caught up


@dataclass(frozen=True)
class Status:
    ok: bool
    detail: str


Check = Callable[[], Status | Awaitable[Status]]


class Health:
    """The liveness probe (the attached event loop) and the named readiness checks of one process."""

    def __init__(self, timeout_s: float = 5.0):
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checks: dict[str, Check] = {}

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Probe this loop (default: the running one) for liveness; call it from the component's main coroutine."""
        self._loop = loop or asyncio.get_running_loop()

    def add(self, name: str, check: Check) -> None:
        """Register (or replace) a readiness check."""
        self._checks[name] = check

    def reset(self) -> None:
        self._loop = None
        self._checks.clear()

    def live(self) -> tuple[bool, dict[str, Any]]:
        loop = self._loop
        if loop is None:
            return False, {"live": False, "detail": "starting: no event loop attached yet"}
        answered: concurrent.futures.Future[None] = concurrent.futures.Future()
        try:
            loop.call_soon_threadsafe(answered.set_result, None)
            answered.result(self.timeout_s)
        except RuntimeError:  # the loop is closed: the process is stopping
            return False, {"live": False, "detail": "event loop closed"}
        except concurrent.futures.TimeoutError:
            return False, {"live": False, "detail": f"event loop did not answer within {self.timeout_s:g}s"}
        return True, {"live": True}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        live, doc = self.live()
        if not live or self._loop is None:
            return False, {"ready": False, "checks": {}, **doc}
        try:
            results = asyncio.run_coroutine_threadsafe(self._evaluate(), self._loop).result(self.timeout_s)
        except RuntimeError:
            return False, {"ready": False, "checks": {}, "detail": "event loop closed"}
        except concurrent.futures.TimeoutError:
            return False, {"ready": False, "checks": {}, "detail": f"checks took over {self.timeout_s:g}s"}
        ok = all(s.ok for s in results.values())
        return ok, {"ready": ok, "checks": {n: {"ok": s.ok, "detail": s.detail} for n, s in results.items()}}

    async def _evaluate(self) -> dict[str, Status]:
        results = {}
        for name, check in list(self._checks.items()):
            try:
                answer = check()
                results[name] = await answer if inspect.isawaitable(answer) else answer
            except Exception as exc:  # a failing check is "not ready", never a crashed probe
                results[name] = Status(False, f"check raised {type(exc).__name__}: {exc}")
        return results  # type: ignore[return-value]


HEALTH = Health()


def flag(event: asyncio.Event, waiting: str = "starting") -> Check:
    """Ready once ``event`` is set (a component's own "serving" signal)."""
    return lambda: Status(True, "serving") if event.is_set() else Status(False, waiting)


def gauge_at_least(name: str, minimum: float, registry: CollectorRegistry = REGISTRY, what: str = "") -> Check:
    """Ready while some sample of the metric family ``name`` (e.g. ``marketprism_collector_connected``) is at least
    ``minimum``: for components whose serving state is already a metric."""

    def check() -> Status:
        values = [s.value for m in registry.collect() if m.name == name for s in m.samples if s.name == name]
        best = max(values, default=None)
        if best is not None and best >= minimum:
            return Status(True, what or f"{name} = {best:g}")
        return Status(False, f"waiting for {what or name} (now {best})")

    return check


class _Latch:
    """Caught up once per generation: ``observe(generation, lag)`` says whether the member is ready."""

    def __init__(self, max_lag: int):
        self.max_lag = max_lag
        self._caught_up_in: object = None

    def observe(self, generation: object, lag: int | None) -> Status:
        if self._caught_up_in == generation and generation is not None:
            return Status(True, f"caught up (generation {generation}; lag now {lag})")
        if lag is not None and lag <= self.max_lag:
            self._caught_up_in = generation
            return Status(True, f"caught up (generation {generation}; lag {lag} <= {self.max_lag})")
        behind = "unknown (no fetch answered yet)" if lag is None else str(lag)
        return Status(False, f"joined (generation {generation}), catching up: lag {behind} > {self.max_lag}")


async def _lag(
    partitions: Iterable[Any], highwater: Callable[[Any], int | None], position: Callable[[Any], Awaitable[int | None]]
) -> int | None:
    """Records behind the high-water marks of ``partitions`` (None while one of them has no answer yet)."""
    total = 0
    for tp in partitions:
        high = highwater(tp)
        if high is None:
            return None
        try:
            at = await asyncio.wait_for(position(tp), 1.0)
        except TimeoutError:
            return None
        if at is None:
            return None
        total += max(0, high - at)
    return total


class GroupCatchUp:
    """An aiokafka consumer-group member: joined (a group generation) and caught up on its assignment.

    ``consumer`` returns the consumer (None before the component made it)."""

    def __init__(self, consumer: Callable[[], Any], max_lag: int = READY_MAX_LAG):
        self._consumer = consumer
        self._latch = _Latch(max_lag)

    async def __call__(self) -> Status:
        consumer = self._consumer()
        if consumer is None:
            return Status(False, "consumer not started")
        # aiokafka keeps the generation on its coordinator (-1 until a join completes); no public accessor
        generation = getattr(getattr(consumer, "_coordinator", None), "generation", -1)
        if generation is None or generation < 0:  # Tansu numbers generations from 0
            return Status(False, "not joined to its consumer group yet")
        lag = await _lag(consumer.assignment(), consumer.highwater, consumer.position)
        return self._latch.observe(generation, lag)


class FaustCatchUp:
    """A Faust worker: joined (a rebalance completed) and caught up on its assigned partitions of ``topics``
    (default: all but the tables' changelogs, which Faust reads only to recover)."""

    def __init__(self, app: Any, topics: Iterable[str] | None = None, max_lag: int = READY_MAX_LAG):
        self._app = app
        self._topics = None if topics is None else set(topics)
        self._latch = _Latch(max_lag)

    async def __call__(self) -> Status:
        app = self._app
        if app.rebalancing_count == 0 or app.rebalancing:
            return Status(False, "rebalancing" if app.rebalancing else "not joined to its consumer group yet")
        consumer = app.consumer

        def highwater(tp: Any) -> int | None:
            try:
                return consumer.highwater(tp)  # type: ignore[no-any-return]
            except (KeyError, AssertionError):
                return None

        skip = set(app.tables.changelog_topics)
        mine = [
            tp
            for tp in consumer.assignment()
            if (tp.topic in self._topics if self._topics is not None else tp.topic not in skip)
        ]
        lag = await _lag(mine, highwater, consumer.position)
        return self._latch.observe(app.rebalancing_count, lag)


def watch_faust(app: Any, topics: Iterable[str] | None = None, max_lag: int = READY_MAX_LAG) -> None:
    """Register a Faust worker: its loop for liveness (a start-up task attaches it) and :class:`FaustCatchUp` on
    ``topics`` (default: every assigned topic but the tables' changelogs) for readiness."""

    async def attach() -> None:
        HEALTH.attach()

    app.task(attach)
    HEALTH.add("consumer group", FaustCatchUp(app, topics, max_lag))
