"""The replay server: capture files served as local venue endpoints (websocket + REST on one port).

URL rule: a recorded ``wss://HOST[:PORT]/PATH?Q`` (or ``https://...``) is served at
``ws://LOCAL/HOST[:PORT]/PATH?Q`` (``http://LOCAL/...``), see :func:`local_url`. Point a venue's
``ws_url``/``rest_url`` override at ``local_url(<the venue's default URL>)`` and the collector runs
unmodified.

Websocket rule: a connection belongs to the file whose recorded ``connect`` host is the first path
segment (or to the only file with websocket frames). Per file, one connection at a time is the
*feeder*: it receives every ``ws_in`` frame of the file, in file order (recorded frames carry no
connection id, so a file's frames are never split across connections); further concurrent
connections to the same file stay open and idle. When the feeder closes, the next connection
becomes the feeder and the file plays again from the start, as a fresh venue connection would (new
snapshots, trades possibly repeated). If the file recorded ``ws_out`` frames, the feeder first waits
for the client's first frame (its subscribe). Timing: ``speed=0`` sends as fast as possible,
otherwise the recorded gaps between frames divided by ``speed``. After the last frame the
connection stays open.

REST rule: ``GET /HOST/PATH?Q`` answers the body recorded for that endpoint (query compared as a
set of parameters; the host may differ when the path and query match exactly one recording),
else 404 listing what is recorded.

Faults for tests: ``drop_after=N`` closes the first ``drops`` feeder sessions after N frames;
:meth:`ReplayServer.freeze` leaves open connections up but silent (no pongs, no frames);
``hold_at`` / :meth:`ReplayServer.release` pause and resume the feed at a frame number.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from pipeline.collectors.capture import CaptureLine, read_capture

log = logging.getLogger(__name__)

RestKey = tuple[str, tuple[tuple[str, str], ...]]


def local_url(recorded: str, base: str) -> str:
    """``wss://host:port/path?q`` -> ``ws://<base>/host:port/path?q`` (``https`` -> ``http``)."""
    parts = urlsplit(recorded)
    scheme = "ws" if parts.scheme in ("ws", "wss") else "http"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{base}/{parts.netloc}{parts.path}{query}"


def _rest_key(path: str, query: str) -> RestKey:
    return path, tuple(sorted(parse_qsl(query, keep_blank_values=True)))


@dataclass
class ReplayFile:
    path: Path
    frames: list[CaptureLine] = field(default_factory=list)
    connects: list[str] = field(default_factory=list)
    has_ws_out: bool = False
    rest: dict[tuple[str, RestKey], str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ReplayFile:
        loaded = cls(path)
        for line in read_capture(path):
            if line.kind == "ws_in":
                loaded.frames.append(line)
            elif line.kind == "connect":
                loaded.connects.append(line.endpoint)
            elif line.kind == "ws_out":
                loaded.has_ws_out = True
            else:
                parts = urlsplit(line.endpoint)
                loaded.rest[(parts.netloc, _rest_key(parts.path, parts.query))] = line.payload
        return loaded

    @property
    def hosts(self) -> set[str]:
        return {urlsplit(url).netloc for url in self.connects}


@dataclass
class _FileState:
    feeder: web.WebSocketResponse | None = None
    sessions: int = 0
    frames_sent: int = 0  # by the current/last feeder
    completed: int = 0  # feeder sessions that sent every frame


class ReplayServer:
    def __init__(
        self,
        files: Sequence[Path],
        *,
        speed: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        drop_after: int | None = None,
        drops: int = 1,
    ):
        self.files = [ReplayFile.load(Path(p)) for p in files]
        self.speed = speed
        self.host = host
        self.port = port
        self.drop_after = drop_after
        self.drops = drops
        self.state = {f.path: _FileState() for f in self.files}
        self.received: list[str] = []  # client frames (subscribes, pings)
        self.rest_hits: list[str] = []
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._transports: dict[web.WebSocketResponse, asyncio.Transport | None] = {}
        self.hold_at: int | None = None  # feeders pause before sending frame number hold_at + 1
        self._released = asyncio.Event()

    @property
    def base(self) -> str:
        return f"{self.host}:{self.port}"

    def url_for(self, recorded: str) -> str:
        return local_url(recorded, self.base)

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, shutdown_timeout=2.0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("replay server on %s serving %s", self.base, ", ".join(f.path.name for f in self.files))
        return self.port

    async def stop(self) -> None:
        await self.drop_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def drop_all(self) -> None:
        """Close every open websocket (the clients should reconnect)."""
        sockets = list(self._sockets)
        if sockets:
            await asyncio.wait(
                [asyncio.ensure_future(ws.close(code=WSCloseCode.GOING_AWAY)) for ws in sockets], timeout=5
            )

    def release(self, hold_at: int | None = None) -> None:
        """Let paused feeders go on, up to ``hold_at`` frames per session (None: to the end)."""
        self.hold_at = hold_at
        self._released.set()

    def freeze(self) -> int:
        """Stop reading from (and so stop answering pings on) every open websocket, without closing it:
        a connection that is up but dead. New connections are served normally. Returns how many froze."""
        frozen = 0
        for ws, transport in list(self._transports.items()):
            if transport is not None:
                transport.pause_reading()
                frozen += 1
            self._sockets.discard(ws)
            for state in self.state.values():
                if state.feeder is ws:
                    state.feeder = None
        self._transports.clear()
        return frozen

    def _file_for(self, host: str) -> ReplayFile | None:
        for replay in self.files:
            if host in replay.hosts:
                return replay
        with_ws = [f for f in self.files if f.frames]
        return with_ws[0] if len(with_ws) == 1 else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        host, _, rest = request.path.lstrip("/").partition("/")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            replay = self._file_for(host)
            if replay is None:
                raise web.HTTPNotFound(text=f"no capture recorded a websocket on {host!r}")
            return await self._websocket(request, replay)
        return self._rest(host, "/" + rest, request.query_string)

    def _rest(self, host: str, path: str, query: str) -> web.Response:
        key = _rest_key(path, query)
        self.rest_hits.append(f"{host}{path}?{query}")
        for replay in self.files:
            if (body := replay.rest.get((host, key))) is not None:
                return web.Response(text=body, content_type="application/json")
        matches = [body for f in self.files for (_, k), body in f.rest.items() if k == key]
        if len(matches) == 1:
            return web.Response(text=matches[0], content_type="application/json")
        recorded = sorted(f"{h}{p}?{'&'.join('='.join(kv) for kv in q)}" for f in self.files for h, (p, q) in f.rest)
        raise web.HTTPNotFound(text=f"not recorded: {host}{path}?{query}; recorded: {recorded}")

    async def _websocket(self, request: web.Request, replay: ReplayFile) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        self._transports[ws] = request.transport
        state = self.state[replay.path]
        first_frame = asyncio.Event()
        reader = asyncio.create_task(self._read_client(ws, first_frame))
        try:
            if state.feeder is None or state.feeder.closed:
                state.feeder = ws
                state.sessions += 1
                if replay.has_ws_out:
                    try:
                        async with asyncio.timeout(10):
                            await first_frame.wait()
                    except TimeoutError:
                        log.warning("%s: client sent no subscribe within 10s; streaming anyway", replay.path.name)
                await self._feed(ws, replay, state)
            await reader
        finally:
            reader.cancel()
            self._sockets.discard(ws)
            self._transports.pop(ws, None)
            if state.feeder is ws:
                state.feeder = None
        return ws

    async def _read_client(self, ws: web.WebSocketResponse, first_frame: asyncio.Event) -> None:
        async for message in ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self.received.append(message.data if message.type == WSMsgType.TEXT else message.data.decode())
                first_frame.set()

    async def _feed(self, ws: web.WebSocketResponse, replay: ReplayFile, state: _FileState) -> None:
        drop = self.drop_after is not None and state.sessions <= self.drops
        state.frames_sent = 0
        previous: int | None = None
        for line in replay.frames:
            while self.hold_at is not None and state.frames_sent >= self.hold_at:
                self._released.clear()
                await self._released.wait()
            if self.speed > 0 and previous is not None and line.ts_recv_us > previous:
                await asyncio.sleep((line.ts_recv_us - previous) / 1e6 / self.speed)
            previous = line.ts_recv_us
            if ws.closed:
                return
            await ws.send_str(line.payload)
            state.frames_sent += 1
            if drop and state.frames_sent >= self.drop_after:  # type: ignore[operator]
                log.info("%s: dropping the connection after %d frames", replay.path.name, state.frames_sent)
                await ws.close(code=WSCloseCode.GOING_AWAY)
                return
        state.completed += 1
        log.info("%s: all %d frames sent", replay.path.name, state.frames_sent)
