"""``marketprism record``: live frames of one venue written in the capture line format.

The recorder drives the venue's connections with the same supervisor as the collector and hands
each inbound frame to the venue module only to learn which REST snapshots it asks for; it writes
``connect``, ``ws_out``, ``ws_in`` and ``rest`` lines in receipt order and produces nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TextIO
from urllib.parse import urlencode

from pipeline.collectors.base import CollectorError, ConnectionPlan, FrameResult, RestRequest, Venue
from pipeline.collectors.capture import CaptureLine
from pipeline.collectors.connection import ConnectionSupervisor, wall_us
from pipeline.collectors.rest import RestClient

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, venue: Venue, out: TextIO, *, max_frames: int | None = None, proxy: str | None = None):
        self.venue = venue
        self.out = out
        self.max_frames = max_frames
        self.frames = 0
        self.lines = 0
        self.done = asyncio.Event()
        self.rest = RestClient(venue.exchange, venue.rest_limit, self._on_rest, proxy=proxy)
        self.connections = [ConnectionSupervisor(plan, venue.keepalive, self, proxy=proxy) for plan in venue.plan()]

    def _write(self, line: CaptureLine) -> None:
        self.out.write(line.to_line())
        self.lines += 1

    def connected(self, plan: ConnectionPlan) -> None:
        now = wall_us()
        self._write(CaptureLine(now, "connect", plan.url, ""))
        for frame in plan.subscribe:
            self._write(CaptureLine(now, "ws_out", plan.url, frame))
        self.rest.submit(self.venue.on_connect(plan))

    def disconnected(self, plan: ConnectionPlan, reason: str) -> None:
        log.warning("%s disconnected while recording: %s", plan.name, reason)

    def frame(self, plan: ConnectionPlan, raw: str | bytes, ts_recv: int) -> FrameResult | None:
        if self.done.is_set():
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        self._write(CaptureLine(ts_recv, "ws_in", "-", text))
        self.frames += 1
        if self.max_frames is not None and self.frames >= self.max_frames:
            self.done.set()
        try:
            result = self.venue.on_frame(raw, ts_recv, plan)
        except CollectorError as exc:  # recorded as received; the recorder only needs the REST asks
            log.info("recorded a frame the venue rejects (%s)", exc)
            return None
        self.rest.submit(result.requests)
        return result

    def _on_rest(self, request: RestRequest, body: bytes, ts_recv: int) -> None:
        query = f"?{urlencode(request.params)}" if request.params else ""
        self._write(CaptureLine(ts_recv, "rest", request.url + query, body.decode("utf-8", "replace")))
        try:
            self.rest.submit(self.venue.on_rest(request, body, ts_recv).requests)
        except CollectorError as exc:
            log.info("recorded a REST body the venue rejects (%s)", exc)

    async def run(self, duration_s: float | None = None) -> int:
        """Record until ``max_frames`` frames, ``duration_s`` seconds or cancellation; returns lines written."""
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.rest.run())]
            tasks += [group.create_task(c.run()) for c in self.connections]
            try:
                async with asyncio.timeout(duration_s):
                    await self.done.wait()
            except TimeoutError:
                pass
            await self.rest.settle("snapshot")  # the snapshots asked for so far land in the file too
            for task in tasks:
                task.cancel()
        self.out.flush()
        return self.lines
