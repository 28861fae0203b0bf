"""The loopback server: every venue's websocket and REST endpoints on one aiohttp port, paced by
the engine's simulated clock.

URLs (``<venue>`` is ``binance``, ``binance_usdm``, ``okx``, ``coinbase`` or ``kraken``)::

    ws://HOST:PORT/<venue><the venue's own path>     websocket (any path; Binance paths are parsed)
    http://HOST:PORT/<venue><the venue's REST path>  REST (depth snapshots, open interest, ...)
    GET  http://HOST:PORT/sim/status                 clock, connections, trades delivered
    POST http://HOST:PORT/sim/start                  start the clock (with ``hold=True``)

Simulated time advances at ``speed`` times wall time from the moment the clock starts (``speed``
0: as fast as possible). Engine steps and fan-out run without awaiting, and each connection has
its own outbound queue, so a snapshot sent on subscribe is always consistent with the deltas that
follow it. When the scenario ends every connection is closed (unless ``close_at_end`` is off) and
:meth:`SimulatorServer.run` returns. ``trades`` holds the id of every trade delivered to at least
one connection, per venue: what a collector must publish exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from pipeline.clock import ScaledClock
from pipeline.observability.metrics import counter, gauge
from pipeline.simulator.base import Frame
from pipeline.simulator.engine import Engine
from pipeline.simulator.labels import Label
from pipeline.simulator.protocols import Connection
from pipeline.simulator.scenario import Scenario

log = logging.getLogger(__name__)

FRAMES = counter("simulator_frames_total", "Frames queued to simulator clients", ["venue"])
CONNECTIONS = gauge("simulator_connections", "Open simulator websocket connections", ["venue"])
DISCONNECTS = counter(
    "simulator_disconnects_total", "Connections the simulator dropped (storms, slow clients)", ["venue"]
)
MAX_QUEUE = 200_000  # frames queued for one client before the venue drops it as too slow
CLOSE = object()


@dataclass(eq=False)
class Client:
    venue: str
    conn: Connection
    ws: web.WebSocketResponse
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    closing: bool = False

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.queue.put_nowait(CLOSE)


class SimulatorServer:
    """One engine served to any number of clients."""

    def __init__(
        self,
        scenario: Scenario,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        hold: bool = False,
        on_label: Callable[[Label], None] | None = None,
        close_at_end: bool = True,
    ):
        self.engine = Engine(scenario, on_label=on_label)
        self.host, self.port, self.speed = host, port, speed
        # the pipeline's shared clock (pipeline/clock.py), set before run(); None: one that starts when run() does
        self.clock: ScaledClock | None = None
        self.close_at_end = close_at_end
        self.clients: dict[str, set[Client]] = {venue: set() for venue in self.engine.protocols}
        self.counts: dict[str, Counter[str]] = {venue: Counter() for venue in self.engine.protocols}
        self.trades: dict[str, set[str]] = {venue: set() for venue in self.engine.protocols}
        self.frames_sent = 0
        self._frames = {venue: FRAMES.labels(venue) for venue in self.engine.protocols}
        self._ids = 0
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self._gone = asyncio.Event()  # set when the last client left after the end
        if not hold:
            self.started.set()
        for venue, proto in self.engine.protocols.items():
            counts = self.counts[venue]
            proto.want = lambda key, counts=counts: counts[key] > 0  # type: ignore[misc]
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/sim/status", self._status)
        app.router.add_post("/sim/start", self._start)
        app.router.add_route("*", "/{venue}{tail:.*}", self._endpoint)
        return app

    async def __aenter__(self) -> SimulatorServer:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        log.info("simulator on http://%s:%d (speed %s)", self.host, self.port, self.speed or "max")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for clients in self.clients.values():
            for client in list(clients):
                await client.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def urls(self) -> dict[str, tuple[str, str]]:
        """``venue -> (ws_url, rest_url)`` to put in the collectors' settings."""
        base = f"{self.host}:{self.port}"
        return {venue: (f"ws://{base}/{venue}", f"http://{base}/{venue}") for venue in self.engine.protocols}

    def start(self) -> None:
        self.started.set()

    async def run(self) -> None:
        """Play the scenario to its end against the (shared or own) clock, then close every connection (or, with
        ``close_at_end=False``, leave them open and silent until the server exits)."""
        await self.started.wait()
        engine = self.engine
        clock = self.clock or ScaledClock.starting_now(self.speed or 1.0, engine.start_us)
        steps = 0
        while (t := engine.next_time()) is not None:
            if self.speed > 0:
                delay = (t - clock.now_us()) / 1_000_000  # simulated seconds
                if delay > 0.001 * self.speed:
                    await clock.sleep(delay)
                    steps = 0
            for frame in engine.step():
                self._dispatch(frame)
            steps += 1
            if steps >= 50:  # let readers and writers run when the clock is behind
                await asyncio.sleep(0)
                steps = 0
        log.info("scenario over at %d; %d frames sent", engine.now_us, self.frames_sent)
        if not self.close_at_end:
            self.finished.set()
            return
        for clients in self.clients.values():
            for client in clients:
                client.close()
        self.finished.set()
        if any(self.clients.values()):
            await self._gone.wait()

    # -- fan-out ------------------------------------------------------------------------------------
    def _dispatch(self, frame: Frame) -> None:
        clients = self.clients[frame.venue]
        if not clients:
            return
        if frame.kind == "disconnect":
            open_ = [client for client in clients if not client.closing]
            for client in open_:
                client.close()
            DISCONNECTS.labels(frame.venue).inc(len(open_))
            return
        key = frame.key
        if frame.kind == "skip":
            for client in clients:
                if key in client.conn.keys:
                    client.conn.seq += 1
            return
        proto = self.engine.protocols[frame.venue]
        delivered = False
        for client in clients:
            if key in client.conn.keys and not client.closing:
                self._put(client, proto.render(client.conn, key, frame.text))
                delivered = True
        if delivered and frame.trade_id is not None:
            self.trades[frame.venue].add(frame.trade_id)

    def _put(self, client: Client, text: str) -> None:
        if client.queue.qsize() >= MAX_QUEUE:
            log.warning("%s connection %d too slow: dropping it", client.venue, client.conn.id)
            DISCONNECTS.labels(client.venue).inc()
            client.close()
            return
        client.queue.put_nowait(text)
        self.frames_sent += 1
        self._frames[client.venue].inc()

    # -- endpoints ----------------------------------------------------------------------------------
    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({
            "started": self.started.is_set(),
            "finished": self.finished.is_set(),
            "now_us": self.engine.now_us,
            "end_us": self.engine.end_us,
            "frames_sent": self.frames_sent,
            "connections": {venue: len(clients) for venue, clients in self.clients.items()},
            "trades_delivered": {venue: len(ids) for venue, ids in self.trades.items()},
            "labels": len(self.engine.labels),
        })  # fmt: skip

    async def _start(self, request: web.Request) -> web.Response:
        self.start()
        return web.json_response({"started": True})

    async def _endpoint(self, request: web.Request) -> web.StreamResponse:
        venue = request.match_info["venue"]
        proto = self.engine.protocols.get(venue)
        if proto is None:
            raise web.HTTPNotFound(text=f"no simulated venue {venue!r}; known: {sorted(self.engine.protocols)}")
        tail = request.match_info["tail"]
        ws = web.WebSocketResponse(autoping=True, heartbeat=20.0, max_msg_size=1 << 22, compress=False)
        if not ws.can_prepare(request).ok:
            status, body = proto.rest(tail, request.query, self.engine.now_us)
            return web.Response(status=status, text=body, content_type="application/json")
        await ws.prepare(request)
        self._ids += 1
        client = Client(venue, Connection(self._ids, path=tail), ws)
        self.clients[venue].add(client)
        CONNECTIONS.labels(venue).inc()
        writer = asyncio.create_task(self._writer(client))
        try:
            self._replies(client, proto.open(client.conn, request.query, self.engine.now_us), set())
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    before = set(client.conn.keys)
                    self._replies(client, proto.message(client.conn, msg.data, self.engine.now_us), before)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.clients[venue].discard(client)
            CONNECTIONS.labels(venue).dec()
            if self.finished.is_set() and not any(self.clients.values()):
                self._gone.set()
            self.counts[venue].subtract(client.conn.keys.keys())
            client.close()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return ws

    def _replies(self, client: Client, replies: list[str], before: set[str]) -> None:
        after = set(client.conn.keys)
        counts = self.counts[client.venue]
        counts.update(after - before)
        counts.subtract(before - after)
        proto = self.engine.protocols[client.venue]
        for text in replies:
            self._put(client, proto.render(client.conn, None, text))

    async def _writer(self, client: Client) -> None:
        ws = client.ws
        while True:
            item = await client.queue.get()
            if item is CLOSE or ws.closed:
                break
            try:
                await ws.send_str(item)  # type: ignore[arg-type]
            except ConnectionError:
                break
        await ws.close()
