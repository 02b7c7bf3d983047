"""The scoring worker: claim jobs from the scoring queue, score each patient, store, publish, complete.

Run one per process (`run_worker` in a thread of the API for the embedded default, or a process of its
own); several workers on several hosts share one queue safely. A failure for one patient is recorded on
its job (error type only: never patient data) and the loop carries on; the queue retries it with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from carecast.errors import CareCastError
from carecast.monitoring.metrics import observe_prediction, observe_score_lag, observe_scoring_failure
from carecast.scoring.events import EventBus, RiskEvent
from carecast.scoring.predictor import Predictor
from carecast.scoring.queue import Job, ScoreQueue, new_worker_id
from carecast.scoring.scorer import StoredPrediction, score_patient, score_patients
from carecast.store import Store

log = logging.getLogger(__name__)

PURGE_EVERY_S = 60.0


@dataclass
class WorkerStats:
    """What a worker did: jobs claimed, completed and failed, predictions newly stored, events sent."""

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    stored: int = 0
    published: int = 0
    loops: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def describe_error(exc: BaseException) -> str:
    """A failure as it may be recorded: a CareCastError's public message (written to be safe), otherwise
    only the exception type, since other messages may quote the data that caused them."""
    if isinstance(exc, CareCastError):
        return f"{type(exc).__name__}: {exc.public_message}"[:255]
    return type(exc).__name__


def _publish(bus: EventBus | None, predictions: list[StoredPrediction], retried: bool, stats: WorkerStats) -> None:
    if bus is None:
        return
    for p in predictions:
        # A new row is news. So is an already-stored row in a retried job: its first run may have died
        # between storing and publishing. Otherwise (the same data scored again) the views already know.
        if p.shadow or p.patient_uid is None or not (p.created or retried):
            continue
        try:
            bus.publish(RiskEvent.from_prediction(p))
            stats.published += 1
        except Exception as exc:  # live updates are best effort; the prediction is stored
            log.warning("could not publish a risk event (%s)", type(exc).__name__)


def _observe(predictions: list[StoredPrediction], jobs: list[Job]) -> None:
    """Metrics of a scored patient: new (non-shadow) predictions, alerts, and the time since its jobs were
    queued (the ingest-to-score latency)."""
    created = [p for p in predictions if p.created and not p.shadow]
    for p in created:
        observe_prediction(p.task, p.model_version, p.risk, source="live", alert=p.band == "high")
    if created:
        now = datetime.now(UTC)
        for job in jobs:
            if job.enqueued_at is not None:
                queued = job.enqueued_at if job.enqueued_at.tzinfo else job.enqueued_at.replace(tzinfo=UTC)
                observe_score_lag((now - queued).total_seconds())


def process_jobs(store: Store, predictor: Predictor, queue: ScoreQueue, bus: EventBus | None, jobs: list[Job],
                 stats: WorkerStats, *, shadow_challenger: bool = False) -> None:
    """Score the patients of claimed jobs (each patient once, however many of its jobs were claimed)."""
    by_patient: dict[int, list[Job]] = {}
    for job in jobs:
        by_patient.setdefault(job.patient_id, []).append(job)
    done: list[str] = []
    try:  # the whole claim in one pass (one read, one feature build, one transaction)
        batch = score_patients(store, predictor, list(by_patient), shadow_challenger=shadow_challenger)
    except Exception as exc:  # the batch failed as a whole: each patient alone, so only a bad one fails
        log.warning("batch scoring failed (%s); scoring patients one by one", type(exc).__name__)
        batch = {}
    for patient_id, patient_jobs in by_patient.items():
        try:
            found = batch.get(patient_id)
            if isinstance(found, Exception):
                raise found
            predictions = found if found is not None else score_patient(store, predictor, patient_id,
                                                                        shadow_challenger=shadow_challenger)
        except Exception as exc:
            reason = describe_error(exc)
            stats.failed += len(patient_jobs)
            observe_scoring_failure(len(patient_jobs))
            stats.errors[reason] = stats.errors.get(reason, 0) + 1
            log.warning("scoring job %s failed (%s)", patient_jobs[0].id, reason)
            for job in patient_jobs:
                try:
                    queue.fail(job.id, reason)
                except Exception as fail_exc:  # the lease will run out and the job come back
                    log.warning("could not record the failure of job %s (%s)", job.id, type(fail_exc).__name__)
            continue
        stats.stored += sum(1 for p in predictions if p.created)
        _observe(predictions, patient_jobs)
        _publish(bus, predictions, any(job.attempts > 1 for job in patient_jobs), stats)
        done.extend(job.id for job in patient_jobs)
    if done:
        queue.complete(done)
        stats.completed += len(done)


def run_worker(store: Store, predictor: Predictor, queue: ScoreQueue, bus: EventBus | None, *,
               worker_id: str | None = None, batch: int = 50, lease_s: float = 30.0, poll_s: float = 0.1,
               stop: threading.Event, max_jobs: int | None = None, exit_when_idle: bool = False,
               shadow_challenger: bool = False) -> WorkerStats:
    """Loop until `stop` is set (or `max_jobs` jobs were handled, or, with `exit_when_idle`, the queue
    has nothing to claim): refresh the models if promoted, claim, score, publish, complete.

    While no champion model is loaded nothing is claimed, so jobs wait for a model instead of being
    completed unscored. Errors of the queue or store (a database restart) are logged and retried."""
    worker = worker_id or new_worker_id()
    stats = WorkerStats()
    last_purge = time.monotonic()
    while not stop.is_set():
        stats.loops += 1
        predictor.maybe_refresh()
        if not predictor.ready:
            if exit_when_idle:
                break
            stop.wait(poll_s)
            continue
        want = batch if max_jobs is None else min(batch, max_jobs - stats.claimed)
        try:
            jobs = queue.claim(worker, want, lease_s)
        except Exception as exc:
            log.warning("scoring worker %s could not claim jobs (%s); retrying", worker, type(exc).__name__)
            stop.wait(max(poll_s, 1.0))
            continue
        if not jobs:
            if exit_when_idle:
                break
            stop.wait(poll_s)
            continue
        stats.claimed += len(jobs)
        try:
            process_jobs(store, predictor, queue, bus, jobs, stats, shadow_challenger=shadow_challenger)
        except Exception as exc:  # completing failed: the leases run out and the jobs come back
            log.warning("scoring worker %s could not complete jobs (%s)", worker, type(exc).__name__)
        if max_jobs is not None and stats.claimed >= max_jobs:
            break
        if time.monotonic() - last_purge > PURGE_EVERY_S:
            last_purge = time.monotonic()
            try:
                queue.purge()
            except Exception as exc:
                log.warning("could not purge finished scoring jobs (%s)", type(exc).__name__)
    return stats


class WorkerThread:
    """`run_worker` in a daemon thread (the embedded default runs one inside the API process)."""

    def __init__(self, store: Store, predictor: Predictor, queue: ScoreQueue, bus: EventBus | None, *,
                 worker_id: str | None = None, **options: object) -> None:
        self.stop_event = threading.Event()
        self.stats: WorkerStats | None = None
        self.worker_id = worker_id or new_worker_id()

        def target() -> None:
            self.stats = run_worker(store, predictor, queue, bus, worker_id=self.worker_id, stop=self.stop_event,
                                    **options)  # type: ignore[arg-type]

        self.thread = threading.Thread(target=target, name=f"carecast-scoring-{self.worker_id}", daemon=True)

    def start(self) -> WorkerThread:
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
