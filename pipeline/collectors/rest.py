"""REST calls a venue asks for (depth snapshots, polls), under the venue's weight budget.

Every request first takes its ``weight`` from one leaky-bucket limiter per venue (aiolimiter), so
a reconnect that asks for 100 snapshots spreads them over the budget instead of causing a 429
storm; identical requests already waiting are coalesced. 429/418 answers wait ``Retry-After`` (at most
``retry_after_max_s``: a peer does not get to park a worker for a day); errors retry with capped jittered backoff.
A body is read up to ``max_body_bytes`` after decompression (a gzip bomb or an endless body is cut off and the
request given up, outcome ``too_large``). Proxies: ``http://`` natively, ``socks4/5://`` through
aiohttp-socks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from aiohttp_socks import ProxyConnector
from aiolimiter import AsyncLimiter

from pipeline.backoff import Backoff
from pipeline.collectors.base import RateLimit, RestRequest
from pipeline.collectors.metrics import REST_REQUESTS

log = logging.getLogger(__name__)

OnBody = Callable[[RestRequest, bytes, int], object]
RETRY_STATUSES = frozenset({418, 429, 500, 502, 503, 504})


def _wall_us() -> int:
    return time.time_ns() // 1000


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The (decompressed) body, or None once it exceeds ``limit`` bytes (the rest is not read)."""
    if response.content_length is not None and response.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class RestClient:
    """One venue's REST worker pool; ``on_body(request, body, ts_recv_us)`` gets each successful body."""

    def __init__(
        self,
        exchange: str,
        limit: RateLimit,
        on_body: OnBody,
        *,
        proxy: str | None = None,
        concurrency: int = 4,
        attempts: int = 6,
        backoff: Callable[[], Backoff] = lambda: Backoff(0.5, 30.0),
        timeout_s: float = 30.0,
        wall_us: Callable[[], int] = _wall_us,
        max_body_bytes: int = 32 * 1024 * 1024,
        retry_after_max_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.exchange = exchange
        self.limiter = AsyncLimiter(limit.weight, limit.period_s)
        self._on_body = on_body
        self._proxy = proxy
        self._concurrency = concurrency
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._wall_us = wall_us
        self.max_body_bytes = max_body_bytes
        self.retry_after_max_s = retry_after_max_s
        self._sleep = sleep
        self._queue: asyncio.Queue[RestRequest] = asyncio.Queue()
        self._waiting: set[RestRequest] = set()
        self.completed = 0
        self.failed = 0
        self._finished = asyncio.Event()  # set whenever a request finishes

    def submit(self, requests: list[RestRequest]) -> None:
        for request in requests:
            if request in self._waiting:
                continue
            if request.weight > self.limiter.max_rate:
                log.error(
                    "%s: request weight %d exceeds the whole budget; sending at budget", self.exchange, request.weight
                )
            self._waiting.add(request)
            self._queue.put_nowait(request)

    def waiting(self, kind: str | None = None) -> int:
        """Requests queued or in flight (of one ``kind``, or all)."""
        return sum(1 for r in self._waiting if kind is None or r.kind == kind)

    def requested(self) -> list[RestRequest]:
        """The requests queued or in flight."""
        return list(self._waiting)

    async def settle(self, kind: str | None = None) -> None:
        """Wait until no request (of ``kind``) is queued or in flight."""
        while self.waiting(kind):
            self._finished.clear()
            await self._finished.wait()

    def _session(self) -> aiohttp.ClientSession:
        connector = None
        if self._proxy and self._proxy.startswith("socks"):
            connector = ProxyConnector.from_url(self._proxy)
        return aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def run(self, polls: Sequence[tuple[RestRequest, float]] = ()) -> None:
        async with self._session() as session, asyncio.TaskGroup() as group:
            for _ in range(self._concurrency):
                group.create_task(self._worker(session))
            for request, every in polls:
                group.create_task(self._poll(request, every))

    async def _poll(self, request: RestRequest, every: float) -> None:
        while True:
            self.submit([request])
            await asyncio.sleep(every)

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while True:
            request = await self._queue.get()
            try:
                await self._fetch(session, request)
            finally:
                self._waiting.discard(request)
                self._finished.set()

    async def _fetch(self, session: aiohttp.ClientSession, request: RestRequest) -> None:
        backoff = self._backoff()
        http_proxy = self._proxy if self._proxy and self._proxy.startswith("http") else None
        for attempt in range(1, self._attempts + 1):
            await self.limiter.acquire(min(request.weight, int(self.limiter.max_rate)))
            delay: float | None = None
            try:
                async with session.get(request.url, params=list(request.params), proxy=http_proxy) as response:
                    body = await _read_bounded(response, self.max_body_bytes)
                    if body is None:
                        REST_REQUESTS.labels(self.exchange, request.kind, "too_large").inc()
                        log.error(
                            "%s %s: body larger than %d bytes; giving up",
                            self.exchange,
                            request.url,
                            self.max_body_bytes,
                        )
                        break
                    if response.status == 200:
                        REST_REQUESTS.labels(self.exchange, request.kind, "ok").inc()
                        self.completed += 1
                        self._on_body(request, body, self._wall_us())
                        return
                    REST_REQUESTS.labels(self.exchange, request.kind, str(response.status)).inc()
                    if response.status not in RETRY_STATUSES:
                        log.error("%s %s: HTTP %d %s", self.exchange, request.url, response.status, body[:200])
                        break
                    retry_after = response.headers.get("Retry-After", "")
                    if retry_after.isdigit():
                        delay = min(float(retry_after), self.retry_after_max_s)
                    log.warning("%s %s: HTTP %d (attempt %d)", self.exchange, request.url, response.status, attempt)
            except (aiohttp.ClientError, TimeoutError) as exc:
                REST_REQUESTS.labels(self.exchange, request.kind, "error").inc()
                log.warning("%s %s failed (attempt %d): %s", self.exchange, request.url, attempt, exc)
            await self._sleep(backoff.next_delay() if delay is None else delay)
        self.failed += 1
        log.error("%s: giving up on %s %s for %s", self.exchange, request.kind, request.url, request.symbol)
