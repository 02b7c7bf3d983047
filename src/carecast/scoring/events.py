"""The "patient risk updated" bus: workers publish, live views (Server-Sent Events) subscribe.

Two implementations of one Protocol, `EventBus`:

- `InProcessBus` fans out to subscribers in this process (the embedded default, and tests).
- `RedisBus` publishes on a Redis pub/sub channel, so a client connected to any API process or host sees
  updates scored anywhere. One listener thread per process feeds that process's local subscribers.

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
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

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


def make_bus(url: str | None = None, **kwargs: Any) -> EventBus:
    """A RedisBus for a redis:// URL, else the in-process bus."""
    if url and url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBus(url, **kwargs)
    return InProcessBus()
