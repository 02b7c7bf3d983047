"""The scoring worker over a real store and queue: every queued patient scored exactly once, failures
recorded without patient data, nothing new stored on a second run; and ingestion -> queue -> worker -> bus
end to end with the writer's hook, on the database queue and on Redis."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from carecast.jobs import worker as W
from carecast.scoring.events import InProcessBus, RedisBus, RiskEvent
from carecast.scoring.predictor import Predictor
from carecast.scoring.queue import DatabaseQueue, RedisQueue, ScoreQueue
from carecast.store import Store
from carecast.store import schema as S
from tests.unit.scoring import (
    REDIS_URL,
    TASK,
    TrainedModels,
    ingest,
    patient_ids,
    redis_prefix,
    registry_copy,
    small_hospital,
)


@pytest.fixture
def predictor(models: TrainedModels, tmp_path: Path) -> Predictor:
    return Predictor(registry_copy(models, tmp_path / "models"))


def _predictions_per_patient(store: Store) -> Counter[int]:
    with store.engine.connect() as conn:
        return Counter(int(p) for p in conn.execute(select(S.Prediction.patient_id)).scalars())


def _drain(bus_sub: object) -> list[RiskEvent]:
    out = []
    while (e := bus_sub.get(0.5)) is not None:  # type: ignore[attr-defined]
        out.append(e)
    return out


def test_worker_scores_every_queued_patient_once(store: Store, predictor: Predictor,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    ingest(store, small_hospital(tmp_path_factory))
    pids = patient_ids(store)
    queue = DatabaseQueue(store.engine)
    bus = InProcessBus()
    sub = bus.subscribe()
    queue.enqueue(pids, datetime.now(UTC))
    queue.enqueue(pids[:3], None)  # coalesced into the waiting jobs
    version = predictor.versions()[TASK]
    live = {"task": TASK, "model_version": version, "source": "live"}
    counted = REGISTRY.get_sample_value("carecast_predictions_total", live) or 0.0
    lags = REGISTRY.get_sample_value("carecast_ingest_to_score_seconds_count") or 0.0
    stats = W.run_worker(store, predictor, queue, bus, worker_id="w1", batch=3, stop=threading.Event(),
                         exit_when_idle=True)
    assert queue.depth() == 0
    n = len(pids)
    assert (stats.claimed, stats.completed, stats.failed, stats.stored) == (n, n, 0, n)
    # metrics: one live prediction per stored row, one ingest-to-score latency per completed job
    assert REGISTRY.get_sample_value("carecast_predictions_total", live) == counted + n
    assert REGISTRY.get_sample_value("carecast_ingest_to_score_seconds_count") == lags + n
    assert _predictions_per_patient(store) == Counter(dict.fromkeys(pids, 1))
    events = _drain(sub)
    with store.engine.connect() as conn:
        uids = set(conn.execute(select(S.Patient.uid)).scalars())
    assert sorted(e.patient_uid for e in events) == sorted(uids)
    assert all(e.task == TASK and e.model_version == predictor.versions()[TASK] for e in events)

    # the same data again: scored, nothing new stored, nothing new to tell
    queue.enqueue(pids, None)
    again = W.run_worker(store, predictor, queue, bus, worker_id="w2", stop=threading.Event(), max_jobs=len(pids))
    assert (again.completed, again.stored, again.published) == (n, 0, 0)
    assert _predictions_per_patient(store) == Counter(dict.fromkeys(pids, 1))
    assert sub.get(0.05) is None


def test_a_job_retried_after_a_crash_is_published_even_if_already_stored(
        store: Store, predictor: Predictor, tmp_path_factory: pytest.TempPathFactory) -> None:
    ingest(store, small_hospital(tmp_path_factory))
    pid = patient_ids(store)[0]
    W.score_patient(store, predictor, pid)  # a worker stored the score, then died before publishing
    queue = DatabaseQueue(store.engine)
    queue.enqueue([pid], None)
    assert queue.claim("died", 1, 0.05)
    threading.Event().wait(0.1)  # its lease runs out
    bus = InProcessBus()
    sub = bus.subscribe()
    stats = W.run_worker(store, predictor, queue, bus, worker_id="w2", stop=threading.Event(), exit_when_idle=True)
    assert (stats.completed, stats.stored, stats.published) == (1, 0, 1)
    assert sub.get(1) is not None


@pytest.mark.parametrize("failure", ["in the batch", "batch down, one by one"])
def test_a_failing_patient_is_recorded_without_its_data_and_the_rest_go_on(
        store: Store, predictor: Predictor, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    ingest(store, small_hospital(tmp_path_factory))
    pids = patient_ids(store)
    bad = pids[1]
    secret = ValueError("lactate 9.7 for MRN-7731-QX")  # the kind of message that must not be kept
    real_one, real_batch = W.score_patient, W.score_patients

    def flaky(store_: Store, predictor_: Predictor, patient_id: int, **kw: object) -> object:
        if patient_id == bad:
            raise secret
        return real_one(store_, predictor_, patient_id, **kw)  # type: ignore[arg-type]

    def batch(store_: Store, predictor_: Predictor, ids: list[int], **kw: object) -> object:
        if failure != "in the batch":
            raise ConnectionError("the batch's transaction failed")
        found = real_batch(store_, predictor_, [i for i in ids if i != bad], **kw)  # type: ignore[arg-type]
        return {**found, **({bad: secret} if bad in ids else {})}

    monkeypatch.setattr(W, "score_patient", flaky)
    monkeypatch.setattr(W, "score_patients", batch)
    queue = DatabaseQueue(store.engine, max_attempts=1)
    queue.enqueue(pids, None)
    stats = W.run_worker(store, predictor, queue, None, worker_id="w1", stop=threading.Event(), exit_when_idle=True)
    assert (stats.completed, stats.failed) == (len(pids) - 1, 1)
    assert queue.failed() == [(queue.failed()[0][0], 1, "ValueError")]
    assert stats.errors == {"ValueError": 1}
    assert bad not in _predictions_per_patient(store)


def test_without_a_model_jobs_wait(store: Store, models: TrainedModels, tmp_path: Path,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    ingest(store, small_hospital(tmp_path_factory))
    queue = DatabaseQueue(store.engine)
    queue.enqueue(patient_ids(store), None)
    predictor = Predictor(registry_copy(models, tmp_path / "models"), tasks=("readmission_30d",))
    stats = W.run_worker(store, predictor, queue, None, worker_id="w1", stop=threading.Event(), exit_when_idle=True)
    assert stats.claimed == 0 and queue.depth() == len(patient_ids(store))


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from redis_prefix()


@pytest.mark.parametrize("kind", ["database", "redis"])
def test_new_readings_flow_from_ingestion_to_live_views(store: Store, predictor: Predictor, kind: str,
                                                        prefix: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two workers, as on two hosts, share the queue the ingestion hook fills; the Redis variant also
    carries the events over Redis to a subscriber of another bus."""
    queue: ScoreQueue
    if kind == "redis":
        queue = RedisQueue(REDIS_URL, prefix=prefix)
        publisher, listener = RedisBus(REDIS_URL, channel=prefix + "risk"), RedisBus(REDIS_URL, channel=prefix + "risk")
    else:
        queue = DatabaseQueue(store.engine)
        publisher = listener = InProcessBus()  # type: ignore[assignment]
    sub = listener.subscribe()
    try:
        ingest(store, small_hospital(tmp_path_factory), hook=queue.enqueue)
        pids = patient_ids(store)
        assert queue.depth() == len(pids)
        workers = [W.WorkerThread(store, predictor, queue, publisher, worker_id=f"host{i}", batch=2, poll_s=0.05)
                   .start() for i in range(2)]
        events = [sub.get(30) for _ in pids]
        for w in workers:
            w.stop()
        assert all(e is not None for e in events)
        assert queue.depth() == 0
        assert _predictions_per_patient(store) == Counter(dict.fromkeys(pids, 1))
        assert sum(w.stats.completed for w in workers if w.stats) == len(pids)
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(S.Prediction)).scalar_one() == len(pids)
    finally:
        publisher.close()
        listener.close()
        if isinstance(queue, RedisQueue):
            queue.close()
