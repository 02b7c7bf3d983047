"""The "patient risk updated" bus: workers publish, live views (Server-Sent Events) subscribe.

Two implementations of one Protocol, `EventBus`:

- `InProcessBus` fans out to subscribers in this process (the embedded default, and tests).
- `RedisBus` publishes on a Redis pub/sub channel, so a client connected to any API process or host sees
  updates scored anywhere. One listener thread per process feeds that process's local subscribers.
- `DatabaseBus` needs no Redis: the `predictions` table is the log. One poller thread per process reads
  the rows stored since it last looked (by any process) and feeds that process's local subscribers.

Publishing never blocks on a subscriber: each subscriber has a bounded buffer that drops its oldest event
when a slow client falls behind (the stored predictions stay the truth; a client that missed events
re-reads them). Pub/sub is at-most-once: events published while Redis is unreachable are not replayed.

An event holds the public patient uid, unit, task, risk, band, NEWS2, model version and data time: no name,
no record number, no other identifier.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

from sqlalchemy import Engine, Select, func, or_, select

from carecast.store import schema as S

log = logging.getLogger(__name__)

DEFAULT_BUFFER = 256
DEFAULT_CHANNEL = "carecast:risk-updated"


@dataclass(frozen=True, slots=True)
class RiskEvent:
    """A patient's risk for a task was (re)computed."""

    patient_uid: str
    unit: str | None
    task: str
    risk: float
    band: str
    model_version: str
    data_time: datetime
    news2: int | None = None

    kind: ClassVar[str] = "risk-updated"  # the Server-Sent Events event name

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["data_time"] = self.data_time.isoformat()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RiskEvent:
        when = data["data_time"]
        return cls(patient_uid=str(data["patient_uid"]), unit=data.get("unit"), task=str(data["task"]),
                   risk=float(data["risk"]), band=str(data["band"]), model_version=str(data["model_version"]),
                   data_time=when if isinstance(when, datetime) else datetime.fromisoformat(str(when)),
                   news2=None if data.get("news2") is None else int(data["news2"]))

    @classmethod
    def from_json(cls, text: str | bytes) -> RiskEvent:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_prediction(cls, prediction: Any) -> RiskEvent:
        """From a carecast.scoring.scorer.StoredPrediction (it must know its patient's uid)."""
        return cls(patient_uid=str(prediction.patient_uid), unit=prediction.unit, task=prediction.task,
                   risk=float(prediction.risk), band=prediction.band, model_version=prediction.model_version,
                   data_time=prediction.data_time, news2=prediction.news2)


@runtime_checkable
class Subscription(Protocol):
    def get(self, timeout: float | None = None) -> RiskEvent | None:
        """The next event, waiting up to `timeout` seconds (None: until one comes or the subscription
        closes); None on timeout or when closed."""

    def close(self) -> None: ...

    def __iter__(self) -> Iterator[RiskEvent]: ...

    @property
    def closed(self) -> bool: ...

    @property
    def dropped(self) -> int:
        """Events discarded because this subscriber fell behind."""


@runtime_checkable
class EventBus(Protocol):
    def publish(self, event: RiskEvent | Mapping[str, Any]) -> None: ...

    def subscribe(self, maxsize: int = DEFAULT_BUFFER) -> Subscription: ...

    def close(self) -> None: ...


class LocalSubscription:
    """A bounded buffer of events for one subscriber; iterate it, or `get` with a timeout."""

    def __init__(self, maxsize: int, on_close: Any = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._events: deque[RiskEvent] = deque(maxlen=maxsize)
        self._cond = threading.Condition()
        self._closed = False
        self._dropped = 0
        self._on_close = on_close

    def offer(self, event: RiskEvent) -> None:
        """Add an event without ever blocking: a full buffer drops its oldest event."""
        with self._cond:
            if self._closed:
                return
            if len(self._events) == self._events.maxlen:
                self._dropped += 1
            self._events.append(event)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> RiskEvent | None:
        with self._cond:
            if not self._events and not self._closed:
                self._cond.wait_for(lambda: bool(self._events) or self._closed, timeout)
            return self._events.popleft() if self._events else None

    def __iter__(self) -> Iterator[RiskEvent]:
        while True:
            event = self.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._events.clear()
            self._cond.notify_all()
        if self._on_close is not None:
            self._on_close(self)

    def __enter__(self) -> LocalSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dropped(self) -> int:
        return self._dropped


def _event(event: RiskEvent | Mapping[str, Any]) -> RiskEvent:
    return event if isinstance(event, RiskEvent) else RiskEvent.from_dict(event)


class InProcessBus:
    """Fan-out to the subscribers of this process. Thread-safe; publishing never blocks on a subscriber."""

    def __init__(self) -> None:
        self._subs: set[LocalSubscription] = set()
        self._lock = threading.Lock()

    def publish(self, event: RiskEvent | Mapping[str, Any]) -> None:
        ev = _event(event)
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.offer(ev)

    def subscribe(self, maxsize: int = DEFAULT_BUFFER) -> LocalSubscription:
        sub = LocalSubscription(maxsize, on_close=self._remove)
        with self._lock:
            self._subs.add(sub)
        return sub

    def _remove(self, sub: LocalSubscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def close(self) -> None:
        with self._lock:
            subs, self._subs = list(self._subs), set()
        for sub in subs:
            sub.close()


class RedisBus:
    """Events over a Redis pub/sub channel. `publish` sends to Redis (every process hears it, this one
    included); `subscribe` starts, on first use, one listener thread that hands what it hears to this
    process's subscribers."""

    def __init__(self, url: str, *, channel: str = DEFAULT_CHANNEL, client: Any | None = None,
                 ready_timeout_s: float = 5.0) -> None:
        import redis

        self.client = client if client is not None else redis.Redis.from_url(url)
        self.channel = channel
        self.ready_timeout_s = ready_timeout_s
        self._local = InProcessBus()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._listening = threading.Event()

    def publish(self, event: RiskEvent | Mapping[str, Any]) -> None:
        self.client.publish(self.channel, _event(event).to_json())

    def subscribe(self, maxsize: int = DEFAULT_BUFFER) -> LocalSubscription:
        """A subscription that receives every event published after this call returns."""
        self._ensure_listener()
        return self._local.subscribe(maxsize)

    def _ensure_listener(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._listening.clear()
                self._thread = threading.Thread(target=self._listen, name="carecast-risk-events", daemon=True)
                self._thread.start()
        if not self._listening.wait(self.ready_timeout_s):
            log.warning("risk event listener not subscribed after %.1f s; live updates may be missed",
                        self.ready_timeout_s)

    def _listen(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=False)
            try:
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._listening.set()
                        delay = 0.5
                    elif message["type"] == "message":
                        self._deliver(message["data"])
            except Exception as exc:  # Redis unreachable: retry with backoff; the thread must not die
                self._listening.clear()
                if not self._stop.is_set():
                    log.warning("risk event listener lost Redis (%s); retrying in %.1f s", type(exc).__name__, delay)
                    self._stop.wait(delay)
                    delay = min(delay * 2, 10.0)
            finally:
                pubsub.close()

    def _deliver(self, data: bytes | str) -> None:
        try:
            event = RiskEvent.from_json(data)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed risk event on %s", self.channel)  # its content is not logged
            return
        self._local.publish(event)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        self._local.close()
        self.client.close()


@dataclass(frozen=True, slots=True)
class StoredRiskEvent(RiskEvent):
    """A RiskEvent read back from the `predictions` table, with the row's id (the Server-Sent Events id)."""

    prediction_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The same fields as any RiskEvent: the row id travels beside the data, not in it."""
        out = RiskEvent.to_dict(self)
        del out["prediction_id"]
        return out


class DatabaseBus:
    """Risk events read from the `predictions` table: no Redis, and still every process sees every update.

    `publish` does nothing (the stored row is the event). `subscribe` starts, on first use, one poller
    thread per bus that every `poll_s` seconds reads the rows stored since the last read, by this process
    or any other, and hands each non-shadow row, with its patient's public uid and its encounter's unit,
    to this process's subscribers. Nothing is read while no one subscribes.

    PostgreSQL hands out ids before commit, so a row may become visible after a higher id was read: an id
    skipped over is looked for again for `gap_wait_s` seconds before it is given up (a rolled-back insert
    leaves such a gap for good). A shadow score later counted as the champion's (an update, not a new row)
    is not announced; readers of the table see it.
    """

    def __init__(self, engine: Engine, *, poll_s: float = 0.1, batch: int = 500, gap_wait_s: float = 10.0,
                 max_gaps: int = 1000) -> None:
        self.engine = engine
        self.poll_s = poll_s
        self.batch = batch
        self.gap_wait_s = gap_wait_s
        self.max_gaps = max_gaps
        self._local = InProcessBus()
        self._lock = threading.Lock()  # guards the read position and the poller's start
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._high: int | None = None  # the highest id read; None: unknown (nobody listening)
        self._gaps: dict[int, float] = {}  # ids skipped over -> monotonic deadline

    def publish(self, event: RiskEvent | Mapping[str, Any]) -> None:
        """Nothing to do: the worker stored the prediction, and that row is the event."""

    def subscribe(self, maxsize: int = DEFAULT_BUFFER) -> LocalSubscription:
        """A subscription that receives every prediction committed after this call returns."""
        with self._lock:
            if self._high is None:
                self._high = self.head()
                self._gaps.clear()
            sub = self._local.subscribe(maxsize)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._poll_loop, name="carecast-risk-poller", daemon=True)
                self._thread.start()
        return sub

    # -- reading the table --------------------------------------------------------------------------------------

    def head(self) -> int:
        """The highest prediction id stored (0 when there is none)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(S.table(S.Prediction).c.id))).scalar() or 0)

    def read_since(self, after_id: int, limit: int = 500) -> list[StoredRiskEvent]:
        """Non-shadow predictions with an id above `after_id`, oldest first, at most `limit` of them."""
        P = S.table(S.Prediction)
        with self.engine.connect() as conn:
            rows = conn.execute(_event_rows().where(P.c.id > after_id, P.c.shadow.is_(False))
                                .order_by(P.c.id).limit(limit)).all()
        return [_stored_event(r) for r in rows]

    def _poll_loop(self) -> None:
        delay = self.poll_s
        while not self._stop.is_set():
            try:
                more = self.poll()
                delay = self.poll_s
            except Exception as exc:  # the database restarting: retry with backoff; the thread must not die
                more = False
                log.warning("risk event poller could not read predictions (%s); retrying in %.1f s",
                            type(exc).__name__, delay)
                delay = min(max(delay, self.poll_s) * 2, 10.0)
            if not more:
                self._stop.wait(delay)

    def poll(self) -> bool:
        """Read once and deliver what is new; True when a full batch was read (more may be waiting)."""
        with self._lock:
            if self._local.subscribers == 0:
                self._high = None  # nobody listens: start afresh from the head at the next subscribe
                return False
            high = self._high if self._high is not None else self.head()
            now = time.monotonic()
            for gap in [g for g, deadline in self._gaps.items() if deadline <= now]:
                del self._gaps[gap]
            P = S.table(S.Prediction)
            wanted = P.c.id > high
            if self._gaps:
                wanted = or_(wanted, P.c.id.in_(sorted(self._gaps)))
            with self.engine.connect() as conn:
                rows = conn.execute(_event_rows().where(wanted).order_by(P.c.id).limit(self.batch)).all()
            events = []
            for r in rows:
                rid = int(r.id)
                if rid > high:
                    skipped = rid - high - 1
                    if skipped > 0 and len(self._gaps) + skipped <= self.max_gaps:
                        deadline = now + self.gap_wait_s
                        self._gaps.update(dict.fromkeys(range(high + 1, rid), deadline))
                    high = rid
                elif self._gaps.pop(rid, None) is None:
                    continue  # already delivered
                if not r.shadow:
                    events.append(_stored_event(r))
            self._high = high
        for event in events:
            self._local.publish(event)
        return len(rows) >= self.batch

    @property
    def subscribers(self) -> int:
        return self._local.subscribers

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._local.close()


def _event_rows() -> Select[Any]:
    """Predictions with what an event shows: the patient's public uid and the unit of the scored stay."""
    P = S.table(S.Prediction)
    return (select(P.c.id, P.c.shadow, P.c.task, P.c.risk, P.c.band, P.c.model_version, P.c.data_time, P.c.news2,
                   S.Patient.uid.label("patient_uid"), S.Encounter.unit.label("unit"))
            .join_from(P, S.Patient, S.Patient.id == P.c.patient_id)
            .outerjoin(S.Encounter, S.Encounter.id == P.c.encounter_id))


def _stored_event(row: Any) -> StoredRiskEvent:
    when: datetime = row.data_time
    if when.tzinfo is None:  # pragma: no cover - the store's UTCDateTime always answers aware times
        when = when.replace(tzinfo=UTC)
    return StoredRiskEvent(patient_uid=str(row.patient_uid), unit=row.unit, task=row.task, risk=float(row.risk),
                           band=row.band, model_version=row.model_version, data_time=when,
                           news2=None if row.news2 is None else int(row.news2), prediction_id=int(row.id))


def make_bus(url: str | None = None, *, engine: Engine | None = None, **kwargs: Any) -> EventBus:
    """A RedisBus for a redis:// URL; else a DatabaseBus over `engine` when one is given (every process
    sees every update through the predictions table); else the in-process bus."""
    if url and url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBus(url, **kwargs)
    if engine is not None:
        return DatabaseBus(engine, **kwargs)
    return InProcessBus()
