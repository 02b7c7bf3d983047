"""Live risk updates over Server-Sent Events: `GET /api/v1/stream`, filtered to what the caller may see.

Each stored prediction is one `risk-updated` event whose `id` is the prediction's row id, so a client that
reconnects with `Last-Event-ID` is replayed what it missed from the `predictions` table. Events come from
the app's bus (`carecast.scoring.events`): a `DatabaseBus` delivers rows with their ids; after an event
without an id (the in-process or Redis bus), or when this client's buffer overflowed, the stream reads the
table from its last id, so it neither skips nor repeats a row.

A stream holds no database connection while it waits, re-checks its token, units and break-glass grants
every `RECHECK_S` seconds, sends a heartbeat comment every `HEARTBEAT_S` seconds, and ends within a second
of `StreamHub.stop` (server shutdown). The connection is audited once ("prediction:stream", no patient).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from sqlalchemy import select

from carecast.scoring.events import DatabaseBus, EventBus, RiskEvent, StoredRiskEvent, Subscription
from carecast.security.permissions import Permission, Principal
from carecast.security.tokens import resolve_token
from carecast.serving.auth import audit, requires
from carecast.serving.context import Services, principal, services
from carecast.serving.errors import ServiceUnavailable
from carecast.serving.openapi import Operations
from carecast.store import schema as S

bp = Blueprint("stream", __name__)
ops = Operations(bp)

STREAM_ACTION = "prediction:stream"
EVENT_STREAM = "text/event-stream"
HUB_EXTENSION = "carecast.stream"
HEARTBEAT_S = 15.0
RECHECK_S = 30.0
STOP_CHECK_S = 1.0  # the longest a stream waits before it looks at the stop flag
RETRY_MS = 3000  # how long a client waits before reconnecting
MAX_STREAMS = 8  # per process: each open stream holds one of the server's request threads
MAX_REPLAY = 1000  # events replayed after a reconnection before the client is told to reload instead
READ_BATCH = 500
_MAX_EVENT_ID = 2**62

_EVENT_SCHEMA = {
    "type": "object",
    "properties": {"patient_uid": {"type": "string"}, "unit": {"type": ["string", "null"]},
                   "task": {"type": "string"}, "risk": {"type": "number"}, "band": {"type": "string"},
                   "model_version": {"type": "string"}, "data_time": {"type": "string", "format": "date-time"},
                   "news2": {"type": ["integer", "null"]}},
}


class StreamHub:
    """The open streams of one app: how many, their subscriptions, and the stop flag of server shutdown."""

    def __init__(self, log: DatabaseBus, live: EventBus, *, owns_log: bool = False) -> None:
        self.log = log  # the predictions table, read for replay and catch-up
        self.live = live  # where new events come from (the same DatabaseBus in the embedded default)
        self.owns_log = owns_log  # the log is not the app's bus: the hub closes it
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._subs: set[Subscription] = set()
        self._active = 0

    @property
    def active(self) -> int:
        with self._lock:
            return self._active

    def open(self) -> Subscription | None:
        """A subscription for a starting stream; None once the hub is stopping."""
        sub = self.live.subscribe()
        with self._lock:
            if self.stopping.is_set():
                sub.close()
                return None
            self._subs.add(sub)
            self._active += 1
        return sub

    def release(self, sub: Subscription) -> None:
        sub.close()
        with self._lock:
            if sub in self._subs:
                self._subs.discard(sub)
                self._active -= 1

    def stop(self) -> None:
        """End every stream now (server shutdown): they notice at once and return."""
        self.stopping.set()
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()

    def close(self) -> None:
        """Stop, and close what the hub made for itself (the app closes its own bus)."""
        self.stop()
        if self.owns_log:
            self.log.close()


def init_app(app: Flask, svc: Services) -> StreamHub:
    """Attach the stream hub: live events from the app's bus when it can be subscribed to, else from the
    predictions table."""
    log = svc.bus if isinstance(svc.bus, DatabaseBus) else DatabaseBus(svc.store.engine)
    live: EventBus = svc.bus if isinstance(svc.bus, EventBus) else log
    hub = StreamHub(log, live, owns_log=log is not svc.bus)
    app.extensions[HUB_EXTENSION] = hub
    return hub


def hub_of(app: Flask) -> StreamHub | None:
    """The app's stream hub (None if the app was built without one)."""
    found: StreamHub | None = app.extensions.get(HUB_EXTENSION)
    return found


# -- who may see what -----------------------------------------------------------------------------------------

@dataclass
class _Visibility:
    """What a unit-restricted caller may see: its units, and patients under an active break-glass grant."""

    restricted: bool
    units: frozenset[str] = frozenset()
    granted: dict[str, datetime] = field(default_factory=dict)  # patient uid -> grant expiry

    def allows(self, event: RiskEvent, now: datetime) -> bool:
        if not self.restricted or (event.unit is not None and event.unit in self.units):
            return True
        expires = self.granted.get(event.patient_uid)
        return expires is not None and expires > now


def _visibility(svc: Services, who: Principal) -> _Visibility:
    if not who.unit_restricted:
        return _Visibility(restricted=False)
    now = datetime.now(UTC)
    bg = S.BreakGlass
    with svc.store.engine.connect() as conn:
        rows = conn.execute(select(S.Patient.uid, bg.expires_at).join(S.Patient, S.Patient.id == bg.patient_id)
                            .where(bg.user_id == who.user_id, bg.expires_at > now)).all()
    granted: dict[str, datetime] = {}
    for r in rows:
        granted[r.uid] = max(granted.get(r.uid, r.expires_at), r.expires_at)
    return _Visibility(restricted=True, units=who.units, granted=granted)


# -- the wire format ------------------------------------------------------------------------------------------

def _frame(event: StoredRiskEvent) -> bytes:
    data = orjson.dumps(event.to_dict())
    return b"event: " + RiskEvent.kind.encode() + b"\nid: " + str(event.prediction_id).encode() + b"\ndata: " \
        + data + b"\n\n"


def _last_event_id() -> int | None:
    """The client's Last-Event-ID (header, or `last_event_id` for clients that cannot set headers); None if
    absent or not one of ours."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or ""
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 18:
        return None
    value = int(raw)
    return value if 0 <= value < _MAX_EVENT_ID else None


# -- one stream -----------------------------------------------------------------------------------------------

class _Stream:
    """The body of one SSE response. Runs after the view returned, outside the request context: it holds
    the services, the caller's token and its filter, never a database connection between reads."""

    def __init__(self, svc: Services, hub: StreamHub, token: str, who: Principal, start_id: int,
                 replay: bool) -> None:
        self.svc = svc
        self.hub = hub
        self.token = token
        self.who = who
        self.last_id = start_id
        self.replay = replay
        self.visibility = _visibility(svc, who)

    def __iter__(self) -> Iterator[bytes]:
        sub = self.hub.open()
        if sub is None:
            return
        try:
            yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
            yield from self._catch_up(limit=MAX_REPLAY if self.replay else None)
            yield from self._follow(sub)
        finally:
            self.hub.release(sub)

    def _follow(self, sub: Subscription) -> Iterator[bytes]:
        dropped = sub.dropped
        now = time.monotonic()
        next_beat, next_check = now + HEARTBEAT_S, now + RECHECK_S
        while not self.hub.stopping.is_set():
            wait = min(STOP_CHECK_S, next_beat - now, next_check - now)
            event = sub.get(timeout=max(wait, 0.0))
            if self.hub.stopping.is_set() or sub.closed:
                return
            sent = False
            if event is not None:
                if not isinstance(event, StoredRiskEvent) or sub.dropped != dropped:
                    # An event without a row id, or events lost to a full buffer: the table says what is new.
                    dropped = sub.dropped
                    while sub.get(timeout=0) is not None:
                        pass
                    for chunk in self._catch_up(limit=None):
                        sent = True
                        yield chunk
                elif event.prediction_id > self.last_id:
                    self.last_id = event.prediction_id
                    if self.visibility.allows(event, datetime.now(UTC)):
                        sent = True
                        yield _frame(event)
            now = time.monotonic()
            if now >= next_check:
                if not self._recheck():
                    return
                next_check = now + RECHECK_S
            if sent:
                next_beat = now + HEARTBEAT_S
            elif now >= next_beat:
                yield b": heartbeat\n\n"
                next_beat = now + HEARTBEAT_S

    def _catch_up(self, limit: int | None) -> Iterator[bytes]:
        """Rows after `last_id` the caller may see. With a `limit` (a replay after reconnection), past that
        many events the client gets `resync` (reload the lists) and the stream goes on from the newest row."""
        sent = 0
        while not self.hub.stopping.is_set():
            events = self.hub.log.read_since(self.last_id, READ_BATCH)
            now = datetime.now(UTC)
            for event in events:
                if limit is not None and sent >= limit:
                    self.last_id = self.hub.log.head()
                    yield b"event: resync\ndata: {}\n\n"
                    return
                self.last_id = max(self.last_id, event.prediction_id)
                if self.visibility.allows(event, now):
                    sent += 1
                    yield _frame(event)
            if len(events) < READ_BATCH:
                return

    def _recheck(self) -> bool:
        """Is the token still good? Refresh the caller's units and break-glass grants; False ends the stream."""
        try:
            who = resolve_token(self.svc.store.engine, self.token, fresh=True)
            if who is None or not who.can(Permission.PREDICTION_READ):
                return False
            self.who = who
            self.visibility = _visibility(self.svc, who)
        except Exception:  # the database is away for a moment: keep the last known filter, try again later
            return True
        return True


# -- the endpoint ---------------------------------------------------------------------------------------------

@ops.get("/stream", summary="Live risk updates (Server-Sent Events)", tag="predictions",
         response_type=EVENT_STREAM, response=_EVENT_SCHEMA, errors=(503,),
         description="A `text/event-stream` of `risk-updated` events, one per stored prediction the caller may "
                     "see (clinicians and nurses: their units, and patients under an active break-glass grant). "
                     "Each event's `id` is the prediction's id; reconnect with `Last-Event-ID` to be sent what "
                     f"was missed (at most {MAX_REPLAY} events, then a `resync` event: reload the lists). A "
                     f"comment line is sent every {HEARTBEAT_S:g} s. The data of an event is the JSON object "
                     "described here.")
@requires(Permission.PREDICTION_READ)
def stream_events() -> Response:
    svc, who = services(), principal()
    token = request.headers.get("Authorization", "").partition(" ")[2].strip()  # checked by @requires
    return open_event_stream(lambda hub, start, replay: _Stream(svc, hub, token, who, start, replay))


def open_event_stream(make_body: Callable[[StreamHub, int, bool], _Stream], *, label: str | None = None) -> Response:
    """What the API's stream and the web UI's share: 503 when live updates are off or `MAX_STREAMS` are open;
    the start (the log's head, or the `Last-Event-ID` to resume after); one audit row (`label`, and the resume
    point); the response around `make_body(hub, start_id, replay)`."""
    hub: StreamHub | None = current_app.extensions.get(HUB_EXTENSION)
    if hub is None or hub.stopping.is_set():
        raise ServiceUnavailable("live updates are not available")
    if hub.active >= MAX_STREAMS:
        raise ServiceUnavailable("too many live streams are open; try again shortly")
    resume = _last_event_id()
    head = hub.log.head()
    start = head if resume is None else min(resume, head)
    detail = ", ".join(part for part in (label, None if resume is None else f"resume after {start}") if part)
    audit(STREAM_ACTION, detail=detail or None)
    response = Response(iter(make_body(hub, start, resume is not None)), mimetype=EVENT_STREAM)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # proxies must pass events on at once
    return response
