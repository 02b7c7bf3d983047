"""The scoring queue, the same checks on the database queue (SQLite and PostgreSQL) and on the real Redis:
claim, complete, exclusive leases, lease expiry, coalescing, failure and give-up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from carecast.config import Settings
from carecast.scoring.queue import DatabaseQueue, RedisQueue, ScoreQueue, backoff_s, make_queue
from carecast.store import Store
from tests.unit.scoring import REDIS_URL, make_patients, redis_prefix

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
Check = Callable[[ScoreQueue, list[int]], None]


def check_enqueue_claim_complete(q: ScoreQueue, pids: list[int]) -> None:
    q.enqueue(pids[:3], T0)
    assert q.depth() == 3
    jobs = q.claim("w1", 10, 30)
    assert [j.patient_id for j in jobs] == pids[:3]  # oldest first
    assert all(j.data_time == T0 and j.attempts == 1 for j in jobs)
    assert q.claim("w2", 10, 30) == []
    assert q.depth() == 3  # leased jobs are still in the queue
    q.complete([jobs[0].id, jobs[1].id])
    assert q.depth() == 1
    q.complete([jobs[2].id, jobs[2].id])  # completing twice is harmless
    assert q.depth() == 0
    assert q.claim("w1", 10, 30) == []


def check_claimers_never_share_a_job(q: ScoreQueue, pids: list[int]) -> None:
    q.enqueue(pids, T0)
    first = q.claim("w1", 2, 30)
    second = q.claim("w2", 100, 30)
    assert len(first) == 2 and len(second) == len(pids) - 2
    assert not {j.id for j in first} & {j.id for j in second}
    assert {j.patient_id for j in first + second} == set(pids)
    assert q.claim("w3", 100, 30) == []


def check_concurrent_claimers(q: ScoreQueue, pids: list[int]) -> None:
    q.enqueue(pids, T0)
    got: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            jobs = q.claim(name, 1, 30)
            if not jobs:
                return
            with lock:
                got.extend(j.id for j in jobs)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == len(set(got)) == len(pids)


def check_an_expired_lease_returns_the_job(q: ScoreQueue, pids: list[int]) -> None:
    q.enqueue(pids[:1], T0)
    (job,) = q.claim("doomed-worker", 10, 0.3)
    assert q.claim("w2", 10, 30) == []
    time.sleep(0.5)  # the worker died: its lease runs out
    (again,) = q.claim("w2", 10, 30)
    assert (again.id, again.patient_id, again.attempts) == (job.id, job.patient_id, 2)
    q.complete([again.id])
    assert q.depth() == 0


def check_coalescing(q: ScoreQueue, pids: list[int]) -> None:
    a, b, c = pids[:3]
    q.enqueue([a, b], T0)
    q.enqueue([a, c], T0 + timedelta(minutes=1))
    q.enqueue([a], T0 - timedelta(hours=1))  # older news does not move the data time back
    q.enqueue([b, b], None)
    assert q.depth() == 3
    jobs = {j.patient_id: j for j in q.claim("w1", 10, 30)}
    assert set(jobs) == {a, b, c}
    assert jobs[a].data_time == T0 + timedelta(minutes=1)
    assert jobs[b].data_time == T0
    # new data while a's job is being scored: a second job, so the new data is scored too
    q.enqueue([a], T0 + timedelta(minutes=2))
    assert q.depth() == 4
    (later,) = q.claim("w2", 10, 30)
    assert later.patient_id == a and later.data_time == T0 + timedelta(minutes=2)


def check_failures_give_up_after_max_attempts(q: ScoreQueue, pids: list[int]) -> None:
    q.enqueue(pids[:2], T0)
    jobs = q.claim("w1", 10, 30)
    q.fail(jobs[0].id, "ValueError")
    assert q.depth() == 2  # one attempt of two: it waits for its backoff
    assert q.claim("w1", 10, 30) == []
    q.max_attempts = 1  # type: ignore[attr-defined]
    q.fail(jobs[1].id, "NotFoundError: unknown patient")
    assert q.depth() == 1
    assert q.failed() == [(jobs[1].id, 1, "NotFoundError: unknown patient")]  # type: ignore[attr-defined]


CHECKS: list[Check] = [check_enqueue_claim_complete, check_claimers_never_share_a_job, check_concurrent_claimers,
                       check_an_expired_lease_returns_the_job, check_coalescing,
                       check_failures_give_up_after_max_attempts]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_database_queue(store: Store, check: Check) -> None:
    check(DatabaseQueue(store.engine, max_attempts=2), make_patients(store, 8))


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from redis_prefix()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_redis_queue(prefix: str, check: Check) -> None:
    q = RedisQueue(REDIS_URL, prefix=prefix, max_attempts=2)
    try:
        check(q, list(range(101, 109)))
    finally:
        q.close()


def test_database_queue_retries_after_backoff_and_purges(store: Store) -> None:
    now = [T0]
    q = DatabaseQueue(store.engine, clock=lambda: now[0])
    (pid,) = make_patients(store, 1)
    q.enqueue([pid], T0)
    (job,) = q.claim("w1", 1, 30)
    q.fail(job.id, "ValueError")
    now[0] += timedelta(seconds=backoff_s(1) + 0.1)
    (again,) = q.claim("w1", 1, 30)
    assert again.id == job.id and again.attempts == 2
    q.complete([again.id])
    assert q.purge(timedelta(hours=1)) == 0  # finished rows are kept a while
    now[0] += timedelta(hours=2)
    assert q.purge(timedelta(hours=1)) == 1


def test_database_queue_polls_an_empty_queue_without_writing(store: Store) -> None:
    q = DatabaseQueue(store.engine)
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        (pid,) = make_patients(store, 1)
        assert q.claim("w1", 10, 30) == []  # empty
        q.enqueue([pid], T0)
        (job,) = q.claim("w1", 10, 30)
        assert q.claim("w2", 10, 30) == []  # all leased
        q.complete([job.id])
        assert q.claim("w2", 10, 30) == []  # all done
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    writes = [s for s in statements if s in {"UPDATE", "INSERT", "DELETE", "WITH"}]
    assert writes.count("UPDATE") + writes.count("WITH") == 2  # the one claim that found a job, the completion


def test_make_queue(store: Store) -> None:
    assert isinstance(make_queue(store.engine), DatabaseQueue)
    settings = Settings.from_env({"CARECAST_DATABASE_URL": "sqlite:///:memory:"})
    assert isinstance(make_queue(settings, engine=store.engine), DatabaseQueue)
    redis_queue = make_queue(REDIS_URL)
    assert isinstance(redis_queue, RedisQueue)
    redis_queue.close()
    assert isinstance(make_queue("sqlite:///:memory:"), DatabaseQueue)
    assert isinstance(redis_queue, ScoreQueue) and isinstance(DatabaseQueue(store.engine), ScoreQueue)
