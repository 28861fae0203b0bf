"""``marketprism bench simulate``: frames per second of the simulator.

Baseline: the pure engine encoding the frames the clients subscribe to, no sockets. Measured: one simulator
process (its own OS process, running as fast as it can) serving 4 venues x N symbols to one
websocket client per venue subscribed to everything; frames counted by the clients. Median of runs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import aiohttp

from pipeline.simulator.engine import Engine
from pipeline.simulator.instruments import instrument
from pipeline.simulator.protocols import Connection
from pipeline.simulator.scenario import Scenario, scenario_from

ASSETS = ("BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "AVAX", "LINK", "DOT", "LTC", "BNB", "TRX", "ATOM", "NEAR")


def bench_scenario(seconds: float, symbols: int) -> Scenario:
    assets = ASSETS[:symbols]
    return scenario_from({
        "name": "bench",
        "duration_s": seconds,
        "symbols": {
            "binance": [f"{a}-USDT" for a in assets],
            "okx": [f"{a}-USDT" for a in assets],
            "coinbase": [f"{a}-USD" for a in assets],
            "kraken": [f"{a}-USD" for a in assets],
        },
    })  # fmt: skip


def subscribe_frames(scenario: Scenario) -> dict[str, tuple[str, list[str]]]:
    """Per venue of the scenario: a websocket path and the frames that subscribe to its main channels."""
    import orjson

    out: dict[str, tuple[str, list[str]]] = {}
    for venue, symbols in scenario.symbols.items():
        raws = [instrument(venue, symbol).raw for symbol in symbols]
        if venue in ("binance", "binance_usdm"):
            channels = ("depth@100ms", "bookTicker") + (("trade",) if venue == "binance" else ())
            streams = [f"{raw.lower()}@{c}" for raw in raws for c in channels]
            route = "/public" if venue == "binance_usdm" else ""
            out[venue] = (f"{route}/stream?streams=" + "/".join(streams), [])
        elif venue == "okx":
            args = [{"channel": c, "instId": raw} for raw in raws for c in ("books", "trades", "tickers")]
            out[venue] = ("/ws/v5/public", [orjson.dumps({"op": "subscribe", "args": args}).decode()])
        elif venue == "coinbase":
            out[venue] = ("", [
                orjson.dumps({"type": "subscribe", "product_ids": raws, "channel": c}).decode()
                for c in ("level2", "market_trades", "ticker", "heartbeats")
            ])  # fmt: skip
        else:
            out[venue] = ("/v2", [
                orjson.dumps({"method": "subscribe", "params": {"channel": c, "symbol": raws}}).decode()
                for c in ("book", "trade", "ticker")
            ])  # fmt: skip
    return out


async def collect(port: int, scenario: Scenario) -> tuple[dict[str, list[str]], float]:
    """One client per venue subscribed to its main channels, then ``POST /sim/start``: every text each
    received until the server closed it, and the ``perf_counter`` time of the start."""
    received: dict[str, list[str]] = {}
    async with aiohttp.ClientSession() as session:
        sockets = {}
        for venue, (path, frames) in subscribe_frames(scenario).items():
            ws = await session.ws_connect(f"ws://127.0.0.1:{port}/{venue}{path}", max_msg_size=0)
            for frame in frames:
                await ws.send_str(frame)
            sockets[venue] = ws
        await asyncio.sleep(0.5)  # acks and snapshots before the clock starts
        started = time.perf_counter()
        await session.post(f"http://127.0.0.1:{port}/sim/start")

        async def drain(venue: str, ws: aiohttp.ClientWebSocketResponse) -> None:
            received[venue] = [msg.data async for msg in ws if msg.type == aiohttp.WSMsgType.TEXT]

        await asyncio.gather(*(drain(venue, ws) for venue, ws in sockets.items()))
    return received, started


def subscribed_keys(engine: Engine, scenario: Scenario) -> dict[str, set[str]]:
    """The keys the bench clients subscribe to, per venue (as the server would record them)."""
    keys: dict[str, set[str]] = {}
    for venue, (path, frames) in subscribe_frames(scenario).items():
        proto = engine.protocols[venue]
        url = urlsplit(path)
        conn = Connection(0, path=url.path)
        proto.open(conn, dict(parse_qsl(url.query)), engine.now_us)
        for frame in frames:
            proto.message(conn, frame, engine.now_us)
        keys[venue] = set(conn.keys)
    return keys


def encode_rate(scenario: Scenario) -> float:
    """Baseline: the same frames the clients subscribe to, encoded by the engine with no sockets."""
    engine = Engine(scenario)
    keys = subscribed_keys(engine, scenario)
    for venue, proto in engine.protocols.items():
        proto.want = lambda key, wanted=keys[venue]: key in wanted  # type: ignore[misc]
    started = time.perf_counter()
    frames = sum(1 for frame in engine.run() if frame.key in keys[frame.venue])
    return frames / (time.perf_counter() - started)


def _serve(scenario_json: str, port_queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from pipeline.simulator.server import SimulatorServer

    scenario = Scenario.model_validate_json(scenario_json)

    async def main() -> None:
        async with SimulatorServer(scenario, speed=0.0, hold=True) as server:
            port_queue.put(server.port)
            await server.run()

    asyncio.run(main())


async def _clients(port: int, scenario: Scenario) -> tuple[int, float]:
    received, started = await collect(port, scenario)
    return sum(len(texts) for texts in received.values()), time.perf_counter() - started


def serve_rate(scenario: Scenario) -> float:
    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    proc = ctx.Process(target=_serve, args=(scenario.model_dump_json(), ports), daemon=True)
    proc.start()
    try:
        port = ports.get(timeout=60)
        frames, elapsed = asyncio.run(_clients(port, scenario))
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
            proc.join()
    return frames / elapsed


@dataclass
class BenchResult:
    venues: int
    symbols: int
    seconds: float
    encode: list[float]
    served: list[float]

    def lines(self) -> list[str]:
        enc, srv = statistics.median(self.encode), statistics.median(self.served)
        return [
            f"simulate: {self.venues} venues x {self.symbols} symbols, {self.seconds:g} simulated s per run, "
            f"{len(self.served)} runs",
            f"baseline raw encoding (no sockets): median {enc:,.0f} frames/s  runs {[round(x) for x in self.encode]}",
            f"served over websockets:             median {srv:,.0f} frames/s  runs {[round(x) for x in self.served]}",
            f"ratio served/encoding: {srv / enc:.2f}",
        ]


def run_bench(seconds: float, runs: int, symbols: int) -> BenchResult:
    scenario = bench_scenario(seconds, symbols)
    encode = [encode_rate(scenario) for _ in range(runs)]
    served = [serve_rate(scenario) for _ in range(runs)]
    return BenchResult(len(scenario.symbols), symbols, seconds, encode, served)
