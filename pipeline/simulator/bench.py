"""``marketprism bench simulate``: frames per second of the simulator.

Baseline: the pure engine encoding frames for every channel, no sockets. Measured: one simulator
process (its own OS process, running as fast as it can) serving 4 venues x N symbols to one
websocket client per venue subscribed to everything; frames counted by the clients. Median of runs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from dataclasses import dataclass

import aiohttp

from pipeline.simulator.engine import Engine
from pipeline.simulator.scenario import Scenario

ASSETS = ("BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "AVAX", "LINK", "DOT", "LTC", "BNB", "TRX", "ATOM", "NEAR")


def bench_scenario(seconds: float, symbols: int) -> Scenario:
    assets = ASSETS[:symbols]
    return Scenario(
        name="bench",
        duration_s=seconds,
        symbols={
            "binance": [f"{a}-USDT" for a in assets],
            "okx": [f"{a}-USDT" for a in assets],
            "coinbase": [f"{a}-USD" for a in assets],
            "kraken": [f"{a}-USD" for a in assets],
        },
    )


def subscribe_frames(scenario: Scenario) -> dict[str, tuple[str, list[str]]]:
    """Per venue: the websocket path and the frames that subscribe to every simulated channel."""
    import orjson

    s = scenario.symbols
    bn = [raw.replace("-", "").lower() for raw in s["binance"]]
    streams = [f"{r}@{c}" for r in bn for c in ("depth@100ms", "bookTicker", "trade")]
    okx_args = [{"channel": c, "instId": sym} for sym in s["okx"] for c in ("books", "trades", "tickers")]
    kraken = [sym.replace("-", "/") for sym in s["kraken"]]
    return {
        "binance": ("/stream?streams=" + "/".join(streams), []),
        "okx": ("/ws/v5/public", [orjson.dumps({"op": "subscribe", "args": okx_args}).decode()]),
        "coinbase": ("", [
            orjson.dumps({"type": "subscribe", "product_ids": s["coinbase"], "channel": c}).decode()
            for c in ("level2", "market_trades", "ticker", "heartbeats")
        ]),
        "kraken": ("/v2", [
            orjson.dumps({"method": "subscribe", "params": {"channel": c, "symbol": kraken}}).decode()
            for c in ("book", "trade", "ticker")
        ]),
    }  # fmt: skip


def encode_rate(scenario: Scenario) -> float:
    engine = Engine(scenario)
    started = time.perf_counter()
    frames = sum(1 for _ in engine.run())
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
    counts = 0
    async with aiohttp.ClientSession() as session:
        sockets = []
        for venue, (path, frames) in subscribe_frames(scenario).items():
            ws = await session.ws_connect(f"ws://127.0.0.1:{port}/{venue}{path}", max_msg_size=0)
            for frame in frames:
                await ws.send_str(frame)
            sockets.append(ws)
        await asyncio.sleep(0.5)  # acks and snapshots
        await session.post(f"http://127.0.0.1:{port}/sim/start")
        started = time.perf_counter()

        async def drain(ws: aiohttp.ClientWebSocketResponse) -> int:
            n = 0
            async for _ in ws:
                n += 1
            return n

        counts = sum(await asyncio.gather(*(drain(ws) for ws in sockets)))
        return counts, time.perf_counter() - started


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
