"""Through an HTTP proxy (websocket via CONNECT, REST via the proxy) and a real SOCKS5 proxy (pproxy), and the
subscription-ack check."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from pipeline.contracts import Trade
from pipeline.replay.server import ReplayServer
from pipeline.settings import Settings, VenueSettings


class HttpProxy:
    """A small forwarding HTTP proxy for the test: CONNECT tunnels and absolute-form requests."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(task := asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.requests.append(f"{method} {target}")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:  # absolute-form: http://host:port/path
                hostport = target.split("/", 3)[2]
                host, port = hostport.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                up_writer.write(head)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)  # type: ignore[arg-type]

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()


async def test_websocket_and_rest_go_through_the_configured_proxy(
    topics: Settings, tmp_path: Path, run_collector, toy
) -> None:
    frames = [toy.trade_frame(0), '{"op":"snap","s":"BTC-USD"}', toy.trade_frame(1)]
    capture = toy.write_capture(
        tmp_path / "toy.txt",
        frames,
        rest={
            f"{toy.ToyVenue.rest_url}/depth?symbol=BTC-USD": '{"b":"99.5","a":"100.5"}',
        },
    )
    server = ReplayServer([capture])
    await server.start()
    proxy = HttpProxy()
    proxy_port = await proxy.start()
    settings = topics.model_copy(
        update={"venues": {"kraken": VenueSettings(symbols=["BTC-USD"], proxy=f"http://127.0.0.1:{proxy_port}")}}
    )
    venue = toy.ToyVenue(["BTC-USD"], ws_url=server.url_for(toy.TOY_WS), rest_url=server.url_for(toy.ToyVenue.rest_url))
    try:
        async with run_collector(settings, [venue]) as running:
            runtime = running.collector.runtimes[0]
            await toy.wait_for(lambda: runtime.rest.completed >= 1 and running.collector.frames >= 4)
    finally:
        await server.stop()
        await proxy.stop()
    assert f"CONNECT 127.0.0.1:{server.port}" in proxy.requests  # the websocket tunnel
    assert any(r.startswith(f"GET http://127.0.0.1:{server.port}/api.toy.example/depth") for r in proxy.requests)
    assert runtime.dead_letters == 0


async def test_no_ack_and_no_data_after_subscribing_reconnects(
    topics: Settings, tmp_path: Path, run_collector, toy
) -> None:
    """A venue that accepts the connection but never confirms the subscription is reconnected to."""
    capture = toy.write_capture(tmp_path / "toy.txt", [])
    capture.write_text("".join(line for line in capture.read_text().splitlines(True) if '"ack"' not in line))
    server = ReplayServer([capture])
    await server.start()
    venue = toy.ToyVenue(["BTC-USD"], ws_url=server.url_for(toy.TOY_WS))
    try:
        async with run_collector(topics, [venue], ack_timeout_s=0.5) as running:
            supervisor = running.collector.runtimes[0].connections[0]
            await toy.wait_for(lambda: supervisor.sessions >= 2)
    finally:
        await server.stop()
    assert supervisor.reasons["AckTimeout"] >= 1


async def test_websocket_and_rest_go_through_a_socks5_proxy(
    topics: Settings, tmp_path: Path, run_collector, toy
) -> None:
    """A real SOCKS5 server (pproxy) on loopback in front of the replay server: the collector's frames
    and its REST snapshot flow through it, and the trades reach the topic."""
    import pproxy

    frames = [toy.trade_frame(0), '{"op":"snap","s":"BTC-USD"}', toy.trade_frame(1), toy.trade_frame(2)]
    capture = toy.write_capture(
        tmp_path / "toy.txt",
        frames,
        rest={
            f"{toy.ToyVenue.rest_url}/depth?symbol=BTC-USD": '{"b":"99.5","a":"100.5"}',
        },
    )
    server = ReplayServer([capture])
    await server.start()
    relayed: list[str] = []  # pproxy logs each tunnel it opens: "socks5 client -> host:port"
    socks = await pproxy.Server("socks5://127.0.0.1:0").start_server({"rserver": [], "verbose": relayed.append})
    socks_port = socks.sockets[0].getsockname()[1]
    settings = topics.model_copy(
        update={"venues": {"kraken": VenueSettings(symbols=["BTC-USD"], proxy=f"socks5://127.0.0.1:{socks_port}")}}
    )
    venue = toy.ToyVenue(["BTC-USD"], ws_url=server.url_for(toy.TOY_WS), rest_url=server.url_for(toy.ToyVenue.rest_url))
    try:
        async with run_collector(settings, [venue]) as running:
            runtime = running.collector.runtimes[0]
            await toy.wait_for(lambda: runtime.rest.completed >= 1 and running.collector.frames >= 5)
    finally:
        await server.stop()
        socks.close()
        await socks.wait_closed()
    tunnels = [line for line in relayed if line.startswith("socks5 ")]
    assert len(tunnels) >= 2  # the websocket and the REST request
    assert all(line.endswith(f"-> 127.0.0.1:{server.port}") for line in tunnels)
    assert runtime.connections[0].sessions == 1 and runtime.dead_letters == 0
    trades = [t for _, t in await toy.read_topic(topics, "md.trades.v1", Trade)]
    assert sorted(t.trade_id for t in trades) == ["0", "1", "2"]
