"""What the routes do, without HTTP: query the live views (filter, group, page) and write operator commands
(``ops.alert_actions.v1``, ``ops.silences.v1``) with the actor of a verified principal.

Errors: :class:`BadRequest` names the request field that is wrong (the routes turn it into a 422 shaped like
FastAPI's validation errors); :class:`NotFound` names what is missing (404).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.api.models import AlertState, Severity
from pipeline.api.views import ACTIVE_STATES, LiveViews
from pipeline.clock import process_clock
from pipeline.contracts import encode
from pipeline.contracts.matchers import Matcher, all_match, parse_matcher
from pipeline.contracts.records import Alert, AlertAction, Anomaly, Record, Silence
from pipeline.contracts.topics import ALERT_ACTIONS, SILENCES
from pipeline.kafka import make_producer
from pipeline.settings import Settings

log = logging.getLogger(__name__)

MAX_SILENCE_US = 90 * 24 * 3600 * 1_000_000  # a silence may last at most 90 days
PAGE_CACHE = 256  # rendered alert pages kept per generation of the alerts view
# bounds of GET /api/v1/alerts, shared by the FastAPI route and the fast path (parse_alert_page)
MAX_OFFSET = 100_000
MAX_LIMIT = 500
DEFAULT_LIMIT = 100
MAX_VENUE_LEN = 50
MAX_RULE_LEN = 200
MAX_MATCHER_LEN = 500
MAX_MATCHERS = 20
MAX_TEXT_LEN = 200
_STATES = frozenset(get_args(AlertState))
_SEVERITIES = frozenset(get_args(Severity))
SEVERITY_ORDER = {"P1": 0, "P2": 1, "P3": 2, "P4": 3}


class BadRequest(ValueError):
    def __init__(self, field: str, message: str, where: str = "query"):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.where = where
        self.message = message


class NotFound(LookupError):
    pass


class Unavailable(RuntimeError):
    """A command could not be written (the broker is away): 503, the request may be repeated."""


def parse_matchers(texts: Iterable[str], field: str = "filter", where: str = "query") -> tuple[Matcher, ...]:
    out = []
    for text in texts:
        try:
            out.append(parse_matcher(text))
        except ValueError as exc:
            raise BadRequest(field, str(exc), where) from None
    return tuple(out)


def alert_labels(alert: Alert) -> dict[str, str]:
    """The labels matchers see: the alert's labels plus ``alertname`` and ``severity`` (as the engine adds)."""
    labels = alert.labels
    if "alertname" in labels and "severity" in labels:
        return labels
    return {"alertname": alert.rule, "severity": alert.severity} | labels


@dataclass(frozen=True)
class AlertQuery:
    states: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    venues: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    matchers: tuple[Matcher, ...] = ()
    text: str | None = None
    include_inactive: bool = False  # resolved and inactive alerts too (default: active ones only)

    def accepts(self, alert: Alert) -> bool:
        if self.states:
            if alert.state not in self.states:
                return False
        elif not self.include_inactive and alert.state not in ACTIVE_STATES:
            return False
        if self.severities and alert.severity not in self.severities:
            return False
        if self.venues and alert.labels.get("exchange") not in self.venues:
            return False
        if self.rules and alert.rule not in self.rules:
            return False
        if self.matchers and not all_match(self.matchers, alert_labels(alert)):
            return False
        if self.text:
            needle = self.text.lower()
            hay = [alert.rule, alert.fingerprint, *alert.labels.values(), *alert.annotations.values()]
            if not any(needle in h.lower() for h in hay):
                return False
        return True


def sort_key(alert: Alert) -> tuple[int, int, str]:
    return (SEVERITY_ORDER.get(alert.severity, 9), -alert.ts_event, alert.fingerprint)


class AlertIndex:
    """The alerts of the view sorted once per change (severity, newest first), reused by every request."""

    def __init__(self, views: LiveViews):
        self.views = views
        self._generation = -1
        self._sorted: list[Alert] = []
        self._cache: dict[str, bytes] = {}  # rendered pages of the current generation, by query string
        self._selected: dict[AlertQuery, list[Alert]] = {}  # selections of the current generation
        self._cache_generation = -1
        self._encoded: dict[str, tuple[Alert, bytes]] = {}  # each alert's JSON, kept while the alert is unchanged

    def sorted(self) -> list[Alert]:
        view = self.views.alerts
        if view.generation != self._generation:
            self._sorted = sorted(view.by_fingerprint.values(), key=sort_key)
            self._generation = view.generation
        return self._sorted

    def select(self, query: AlertQuery) -> list[Alert]:
        """The alerts ``query`` accepts, in list order; remembered per query until the alerts change (pages of one
        filtered list differ only by their slice)."""
        self._current()
        found = self._selected.get(query)
        if found is None:
            if len(self._selected) >= PAGE_CACHE:
                self._selected.clear()
            found = self._selected[query] = [a for a in self.sorted() if query.accepts(a)]
        return found

    def encoded(self, alerts: Sequence[Alert]) -> list[bytes]:
        """Each alert as JSON, encoded once per version of the alert (a page joins them)."""
        out = []
        for alert in alerts:
            known = self._encoded.get(alert.fingerprint)
            if known is None or known[0] is not alert:
                known = self._encoded[alert.fingerprint] = (alert, _page_encoder.encode(alert))
            out.append(known[1])
        if len(self._encoded) > 2 * len(self.views.alerts.by_fingerprint) + PAGE_CACHE:
            current = self.views.alerts.by_fingerprint
            self._encoded = {f: e for f, e in self._encoded.items() if f in current}
        return out

    def _current(self) -> None:
        if self._cache_generation != self.views.alerts.generation:
            self._cache.clear()
            self._selected.clear()
            self._cache_generation = self.views.alerts.generation

    def cached(self, key: str) -> bytes | None:
        """A rendered answer for ``key`` (a request's query string) made since the alerts last changed."""
        self._current()
        return self._cache.get(key)

    def remember(self, key: str, body: bytes) -> None:
        if len(self._cache) >= PAGE_CACHE:
            self._cache.clear()
        self._cache[key] = body


def render_alert_page(index: AlertIndex, key: str, query: AlertQuery, offset: int, limit: int) -> bytes:
    """One page of ``GET /api/v1/alerts`` as JSON, rendered once per query string ``key`` until the alerts
    change."""
    body = index.cached(key)
    if body is None:
        selected = index.select(query)
        following = offset + limit if offset + limit < len(selected) else None
        items = b",".join(index.encoded(selected[offset : offset + limit]))
        next_offset = "null" if following is None else following
        tail = f'],"total":{len(selected)},"offset":{offset},"limit":{limit},"next_offset":{next_offset}}}'
        body = b'{"items":[' + items + tail.encode()  # as msgspec encodes the same document, alerts cached
        index.remember(key, body)
    return body


_page_encoder = msgspec.json.Encoder()


def parse_alert_page(query_string: str) -> tuple[AlertQuery, int, int] | None:
    """The query of ``GET /api/v1/alerts`` read without FastAPI (its parameter machinery costs more than the
    page), for the plain requests dashboards send. ``None`` for anything else (an unknown, repeated, blank or
    invalid parameter): the FastAPI route then answers it, validation errors included, so both paths accept
    exactly the same requests and give the same bytes."""
    lists: dict[str, list[str]] = {"state": [], "severity": [], "venue": [], "rule": [], "filter": []}
    single: dict[str, str] = {}
    try:
        pairs = parse_qsl(query_string, keep_blank_values=True, strict_parsing=True, max_num_fields=64)
    except ValueError:
        return None
    for name, value in pairs:
        if not value:
            return None
        if name in lists:
            lists[name].append(value)
        elif name in ("q", "include_inactive", "offset", "limit") and name not in single:
            single[name] = value
        else:
            return None
    if not (
        _STATES.issuperset(lists["state"])
        and _SEVERITIES.issuperset(lists["severity"])
        and all(len(v) <= MAX_VENUE_LEN for v in lists["venue"])
        and all(len(r) <= MAX_RULE_LEN for r in lists["rule"])
        and len(lists["filter"]) <= MAX_MATCHERS
        and all(len(f) <= MAX_MATCHER_LEN for f in lists["filter"])
        and len(single.get("q", "")) <= MAX_TEXT_LEN
        and single.get("include_inactive", "false") in ("true", "false")
    ):
        return None
    offset_text, limit_text = single.get("offset", "0"), single.get("limit", str(DEFAULT_LIMIT))
    if not (offset_text.isascii() and offset_text.isdigit() and limit_text.isascii() and limit_text.isdigit()):
        return None
    offset, limit = int(offset_text), int(limit_text)
    if offset > MAX_OFFSET or not 1 <= limit <= MAX_LIMIT:
        return None
    try:
        matchers = parse_matchers(lists["filter"])
    except BadRequest:
        return None
    query = AlertQuery(
        states=tuple(lists["state"]),
        severities=tuple(lists["severity"]),
        venues=tuple(lists["venue"]),
        rules=tuple(lists["rule"]),
        matchers=matchers,
        text=single.get("q"),
        include_inactive=single.get("include_inactive") == "true",
    )
    return query, offset, limit


def group_alerts(alerts: Sequence[Alert], by: Sequence[str]) -> list[dict[str, Any]]:
    """Alerts grouped by the values of the labels ``by`` (a missing label groups as the empty string)."""
    groups: dict[tuple[str, ...], list[Alert]] = {}
    for alert in alerts:
        labels = alert_labels(alert)
        groups.setdefault(tuple(labels.get(name, "") for name in by), []).append(alert)
    return [
        {"labels": dict(zip(by, key, strict=True)), "count": len(members), "alerts": members}
        for key, members in sorted(groups.items())
    ]


def silence_status(silence: Silence, now: int) -> Literal["expired", "pending", "active"]:
    return "expired" if silence.ends_at <= now else ("pending" if silence.starts_at > now else "active")


def silencing(views: LiveViews, alert: Alert, now: int) -> list[str]:
    """Ids of the active silences whose matchers all match the alert."""
    labels = alert_labels(alert)
    out = []
    for silence in views.silences.by_id.values():
        if silence.starts_at <= now < silence.ends_at:
            try:
                matchers = [parse_matcher(m) for m in silence.matchers]
            except ValueError:
                continue
            if all_match(matchers, labels):
                out.append(silence.silence_id)
    return sorted(out)


def related_alerts(views: LiveViews, anomaly: Anomaly) -> list[Alert]:
    """Current alerts about the anomaly's series (same ``series_id`` label, or same exchange/symbol/metric)."""
    out = []
    for alert in views.alerts.by_fingerprint.values():
        if alert.state not in ACTIVE_STATES:
            continue
        labels = alert.labels
        same_place = anomaly.exchange is not None and labels.get("exchange") == anomaly.exchange
        same_market = anomaly.symbol is not None and labels.get("symbol") == anomaly.symbol
        same_stream = anomaly.stream is not None and labels.get("stream") == anomaly.stream
        if labels.get("series_id") == anomaly.series_id or (
            same_place and (same_market or same_stream) and labels.get("metric", anomaly.metric) == anomaly.metric
        ):
            out.append(alert)
    return sorted(out, key=sort_key)


def suggested_action(anomaly: Anomaly, related: Sequence[Alert]) -> str:
    """The runbook step for an anomaly: the related alert's runbook (docs/operations.md has one per rule)."""
    for alert in related:
        runbook = alert.annotations.get("runbook_url") or f"docs/operations.md#{alert.rule.lower()}"
        return f"{alert.rule}: {alert.annotations.get('summary', '')} (runbook: {runbook})".strip()
    if anomaly.kind == "forecast":
        return "forecast only: no alert yet; see docs/operations.md#capacitybreachpredicted"
    return "no alert fired for this series; see docs/operations.md#runbooks"


class Commands:
    """Writes operator commands to the topics the rule engine consumes; one producer for the process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        self._producer = make_producer(self.settings.kafka, linger_ms=0)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def _publish(self, topic: str, key: str, record: Record) -> None:
        """Send one command and wait until the broker stored it; :class:`Unavailable` when it cannot."""
        try:
            async with self._starting:  # an app made without the topic reader (tests, tools) starts it on first use
                if self._producer is None:
                    await self.start()
            assert self._producer is not None
            await self._producer.send_and_wait(self.settings.topic(topic), encode(record), key=key.encode())
        except (KafkaError, OSError) as exc:
            log.error("%s not written: %s", topic, type(exc).__name__)
            raise Unavailable(f"the broker did not store the command ({type(exc).__name__}); nothing changed") from None

    async def alert_action(self, fingerprint: str, action: str, actor: str, comment: str | None) -> AlertAction:
        record = AlertAction(
            action_id=uuid.uuid4().hex[:12],
            fingerprint=fingerprint,
            action=action,  # type: ignore[arg-type]
            actor=actor,
            ts=process_clock().now_us(),
            comment=comment,
        )
        await self._publish(ALERT_ACTIONS.name, fingerprint, record)
        log.info("alert %s: %s by %s", fingerprint, action, actor)
        return record

    async def add_silence(
        self,
        matchers: Sequence[str],
        starts_at: int,
        ends_at: int,
        author: str,
        comment: str,
        silence_id: str | None = None,
        created_at: int | None = None,
    ) -> Silence:
        silence = Silence(
            silence_id=silence_id or uuid.uuid4().hex,
            matchers=list(matchers),
            starts_at=starts_at,
            ends_at=ends_at,
            author=author,
            comment=comment,
            created_at=created_at if created_at is not None else process_clock().now_us(),
        )
        await self._publish(SILENCES.name, silence.silence_id, silence)
        log.info("silence %s %s by %s", silence.silence_id, " ".join(silence.matchers), author)
        return silence

    async def expire_silence(self, silence: Silence, actor: str) -> Silence:
        now = process_clock().now_us()
        expired = msgspec.structs.replace(silence, ends_at=max(silence.starts_at, min(silence.ends_at, now)))
        await self._publish(SILENCES.name, silence.silence_id, expired)
        log.info("silence %s expired by %s", silence.silence_id, actor)
        return expired


def check_silence(matchers: Sequence[str], starts_at: int, ends_at: int, where: str = "body") -> None:
    if not matchers:
        raise BadRequest("matchers", "at least one matcher is needed", where)
    parsed = parse_matchers(matchers, "matchers", where)
    if all((m.op in ("=~",) and m.value in (".*", "")) or (m.op == "!=" and m.value == "") for m in parsed):
        raise BadRequest("matchers", "a silence must not match every alert", where)
    if ends_at <= starts_at:
        raise BadRequest("endsAt" if where == "am" else "ends_at", "must be after the start", "body")
    if ends_at - starts_at > MAX_SILENCE_US:
        raise BadRequest("endsAt" if where == "am" else "ends_at", "a silence lasts at most 90 days", "body")
