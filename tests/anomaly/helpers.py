"""Test helpers: synthetic closed bars (quiet random walk, injected spikes) and the worker process."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from pipeline.contracts import Anomaly, Bar, decoder_for
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000_000
CENT = Decimal("0.01")


def bars(
    exchange: str, symbol: str, n: int, seed: int, spikes: frozenset[int] = frozenset(), start: int = 0
) -> list[Bar]:
    """``n`` consecutive 1s bars from bar ``start`` on; a bar index in ``spikes`` jumps price +3%
    (back the next bar) with 25x volume and 15x trades."""
    rng = random.Random(seed)
    price = Decimal("30000.00")
    out = []
    for i in range(start + n):
        price = (price * Decimal(str(1 + rng.gauss(0, 0.0002)))).quantize(CENT)
        volume = Decimal(str(round(abs(rng.gauss(2.0, 0.3)) + 0.1, 4)))
        trades = max(1, int(rng.gauss(20, 3)))
        spread = abs(rng.gauss(1.0, 0.1))
        close = price
        if i in spikes:
            close = (price * Decimal("1.03")).quantize(CENT)
            volume *= 25
            trades *= 15
        if i < start:
            continue
        ws = T0 + i * 1_000_000
        out.append(
            Bar(
                exchange=exchange,
                symbol=symbol,
                interval="1s",
                window_start=ws,
                window_end=ws + 1_000_000,  # type: ignore[arg-type]
                open=str(price),
                high=str(max(price, close)),
                low=str(min(price, close)),
                close=str(close),
                volume=str(volume),
                quote_volume=str((volume * close).quantize(CENT)),
                vwap=str(close),
                trade_count=trades,
                buy_volume=str(volume),
                sell_volume="0",
                first_trade_id=str(i * 100),
                last_trade_id=str(i * 100 + trades),
                spread_mean_bps=spread,
                spread_max_bps=spread * 2,
            )
        )
    return out


@contextmanager
def worker_process(settings: Settings, log_path: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``marketprism anomaly`` as a real process on the test's broker and prefix; stopped by PID."""
    env = os.environ | {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix,
        "MARKETPRISM_STATE_DIR": str(settings.state_dir),
        "MARKETPRISM_METRICS_PORT": "0",
        "MARKETPRISM_LOG_LEVEL": "INFO",
    }
    exe = Path(sys.executable).parent / "marketprism"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([str(exe), "anomaly", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def collect(consumer: AIOKafkaConsumer, until: object, timeout_s: float) -> list[Anomaly]:
    """Anomalies read until ``until(records)`` is true or the timeout passes."""
    decode = decoder_for(Anomaly).decode
    seen: list[Anomaly] = []
    try:
        async with asyncio.timeout(timeout_s):
            while not until(seen):  # type: ignore[operator]
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    seen += [decode(m.value) for m in messages]
    except TimeoutError:
        pass
    return seen
