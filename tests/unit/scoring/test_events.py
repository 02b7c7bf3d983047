"""The risk-updated bus: fan-out in process, bounded buffers that drop the oldest, and Redis pub/sub seen by
subscribers of two separate buses (as two API processes would be)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from carecast.scoring.events import EventBus, InProcessBus, RedisBus, RiskEvent, make_bus
from tests.unit.scoring import REDIS_URL, redis_prefix


def event(i: int = 0, uid: str = "5f0c6f1e-0000-4000-8000-000000000001") -> RiskEvent:
    return RiskEvent(patient_uid=uid, unit="Medical Ward 4W", task="deterioration_24h", risk=0.1 + i / 100,
                     band="low", model_version="v1", data_time=datetime(2026, 1, 5, 9, i % 60, tzinfo=UTC), news2=3)


def test_event_round_trip_holds_no_identifiers() -> None:
    e = event(7)
    assert RiskEvent.from_json(e.to_json()) == e
    assert RiskEvent.from_dict(e.to_dict()) == e
    assert set(e.to_dict()) == {"patient_uid", "unit", "task", "risk", "band", "model_version", "data_time", "news2"}


def test_in_process_fan_out() -> None:
    bus = InProcessBus()
    a, b = bus.subscribe(), bus.subscribe()
    bus.publish(event(1))
    bus.publish(event(2).to_dict())  # a plain mapping is accepted too
    assert [a.get(1), a.get(1)] == [event(1), event(2)]
    assert [b.get(1), b.get(1)] == [event(1), event(2)]
    assert a.get(0.01) is None
    a.close()
    assert bus.subscribers == 1
    bus.publish(event(3))
    assert b.get(1) == event(3) and a.get(0) is None


def test_a_slow_subscriber_loses_its_oldest_events_and_never_blocks_publishers() -> None:
    bus = InProcessBus()
    slow = bus.subscribe(maxsize=3)
    publisher = threading.Thread(target=lambda: [bus.publish(event(i)) for i in range(10)])
    publisher.start()
    publisher.join(timeout=30)
    assert not publisher.is_alive()  # a blocking publisher would still be waiting on the full buffer
    assert [slow.get(0) for _ in range(3)] == [event(7), event(8), event(9)]
    assert slow.dropped == 7


def test_iteration_ends_when_the_subscription_closes() -> None:
    bus = InProcessBus()
    sub = bus.subscribe()
    seen: list[RiskEvent] = []
    reader = threading.Thread(target=lambda: seen.extend(sub))
    reader.start()
    bus.publish(event(1))
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    sub.close()
    reader.join(5)
    assert not reader.is_alive() and seen == [event(1)]


@pytest.fixture
def channel() -> Iterator[str]:
    yield from (prefix + "risk" for prefix in redis_prefix())


def test_redis_bus_reaches_subscribers_of_every_process(channel: str) -> None:
    here, there = RedisBus(REDIS_URL, channel=channel), RedisBus(REDIS_URL, channel=channel)
    try:
        mine, theirs, also_theirs = here.subscribe(), there.subscribe(), there.subscribe()
        here.publish(event(1))
        there.publish(event(2))
        for sub in (mine, theirs, also_theirs):
            assert [sub.get(5), sub.get(5)] == [event(1), event(2)]
            assert sub.get(0.05) is None  # each event once
    finally:
        here.close()
        there.close()


def test_make_bus() -> None:
    assert isinstance(make_bus(None), InProcessBus)
    redis_bus = make_bus(REDIS_URL, channel="cc-test-unused")
    assert isinstance(redis_bus, RedisBus) and isinstance(redis_bus, EventBus)
    redis_bus.close()
