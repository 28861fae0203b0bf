"""The change feed behind the Server-Sent Events stream: a bounded ring of recent events and a set of
subscribers, each with a bounded queue.

Event ids are ``<epoch>-<seq>``: ``epoch`` names this process's feed (it changes at every start), ``seq``
grows by one per event. A client resuming with ``Last-Event-ID`` gets the events after it from the ring when
the id is this feed's and still in the ring; otherwise it gets one ``reset`` event (re-read the lists, the
feed cannot fill the gap). A subscriber whose queue is full is dropped: its queue is emptied (the memory
is freed at once) and it receives a single ``dropped`` event, so a slow client never holds memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pipeline.observability.metrics import counter, gauge

SUBSCRIBERS = gauge("api_stream_subscribers", "Connected event-stream clients")
DROPPED = counter("api_stream_dropped_total", "Event-stream clients dropped because their queue was full")
EVENTS = counter("api_stream_events_total", "Events published on the change feed", ["kind"])

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: str
    seq: int
    kind: str  # alert | anomaly | silence | health | reset | dropped
    data: bytes  # the JSON document of the event
    record: Any = None  # the record it came from (filters read it), None for synthetic events
    frame: bytes = b""  # the event as an SSE frame, made once for every subscriber

    @classmethod
    def make(cls, id: str, seq: int, kind: str, data: bytes, record: Any = None) -> StreamEvent:
        frame = b"id: " + id.encode() + b"\nevent: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        return cls(id, seq, kind, data, record, frame)


Filter = Callable[[StreamEvent], bool]


@dataclass(eq=False)
class Subscriber:
    accepts: Filter
    queue: asyncio.Queue[StreamEvent]
    dropped: bool = False


@dataclass
class EventBus:
    ring_size: int = 10_000
    queue_size: int = 1_000
    epoch: str = field(default_factory=lambda: format(time.time_ns() // 1000, "x"))
    _seq: int = 0
    _ring: deque[StreamEvent] = field(default_factory=deque)
    _subscribers: set[Subscriber] = field(default_factory=set)

    def publish(self, kind: str, record: Any, data: bytes | None = None) -> StreamEvent:
        self._seq += 1
        payload = data if data is not None else _encoder.encode(record)
        event = StreamEvent.make(f"{self.epoch}-{self._seq}", self._seq, kind, payload, record)
        self._ring.append(event)
        if len(self._ring) > self.ring_size:
            self._ring.popleft()
        EVENTS.labels(kind=kind).inc()
        for sub in list(self._subscribers):
            if sub.accepts(event):
                try:
                    sub.queue.put_nowait(event)
                except asyncio.QueueFull:
                    self._drop(sub)
        return event

    def _drop(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        sub.dropped = True
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(self._synthetic("dropped", {"reason": "client too slow: queue full"}))
        DROPPED.inc()
        SUBSCRIBERS.set(len(self._subscribers))

    def _synthetic(self, kind: str, doc: dict[str, Any]) -> StreamEvent:
        return StreamEvent.make(f"{self.epoch}-{self._seq}", self._seq, kind, _encoder.encode(doc))

    def subscribe(self, accepts: Filter, last_event_id: str | None = None) -> Subscriber:
        """A new subscriber; with ``last_event_id`` its queue starts with what it missed (or a ``reset``)."""
        sub = Subscriber(accepts, asyncio.Queue(self.queue_size))
        if last_event_id:
            for event in self.missed(last_event_id):
                if event.kind == "reset" or accepts(event):
                    try:
                        sub.queue.put_nowait(event)
                    except asyncio.QueueFull:
                        self._drop(sub)
                        return sub
        self._subscribers.add(sub)
        SUBSCRIBERS.set(len(self._subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        SUBSCRIBERS.set(len(self._subscribers))

    def missed(self, last_event_id: str) -> list[StreamEvent]:
        epoch, _, seq_text = last_event_id.partition("-")
        if epoch == self.epoch and seq_text.isdigit():
            seq = int(seq_text)
            oldest = self._ring[0].seq if self._ring else self._seq + 1
            if seq >= oldest - 1 and seq <= self._seq:
                return [e for e in self._ring if e.seq > seq]
        return [self._synthetic("reset", {"reason": "unknown or too old Last-Event-ID: re-read the lists"})]

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
