"""The synthetic hospital streaming live: its feed written into the store as its simulated time comes.

`stream_hospital` runs `Hospital(config).events()` against a clock that starts at `start_at` and runs
`speed` times faster than real time. About once a second, every event whose time has come is decoded with
the ingestion decoders (`decode_resource` for FHIR resources, `decode_reading` for wearable lines) into one
unit of work and written as one ingest batch with the store's rules (`ingest_units`: idempotent, bad records
quarantined with their reason); the patients whose readings changed are then queued for scoring.

`run` (what `make run` starts) streams a hospital that follows the history it ingested: `HISTORY` is the
simulated past (ingested from files, used for training), and `live_config(HISTORY)` the same wards' next
days, a new cohort admitted from the end of the history on, with another seed (the simulator plans a whole
window at once, so a longer window is a different hospital, not the same one continued). Patients still
in hospital when the history ends keep their last state. A second `run` resumes where the first stopped
(`resume_point`) instead of writing the same hours again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import orjson
from sqlalchemy import func, select

from carecast.domain.records import UnitOfWork
from carecast.ingest.common import FieldProblem
from carecast.ingest.fhir import add_resource
from carecast.ingest.wearable import decode_reading
from carecast.monitoring.metrics import observe_ingest
from carecast.scoring.queue import DatabaseQueue, ScoreQueue
from carecast.simulate import Event, Hospital, SimulationConfig, WearableBatch
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.batches import FileSummary, ingest_units
from carecast.store.writer import ClinicalWriter

log = logging.getLogger(__name__)

FLUSH_S = 1.0  # real seconds between writes
MAX_EVENTS_PER_FLUSH = 5000  # a backlog (a slow store, a high speed) is written in pieces of this size
RETRY_S = 2.0
SOURCE = "live"

HISTORY = SimulationConfig(seed=0, patients=400, days=10, wearable_share=0.1)
LIVE_DAYS = 30.0  # 12 real hours at 60x


def live_config(history: SimulationConfig = HISTORY, days: float = LIVE_DAYS) -> SimulationConfig:
    """The days after `history`: the same admission rate and wearable share, a new cohort (seed + 1),
    starting when the history ends."""
    return replace(history, seed=history.seed + 1, patients=max(1, round(history.patients * days / history.days)),
                   days=days, start=history.start + timedelta(days=history.days))


@dataclass
class LiveStats:
    """What a stream wrote: events taken from the feed, ingest batches, records and patients queued."""

    events: int = 0
    skipped_events: int = 0  # before `skip_before`: written by an earlier run
    batches: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    patients_queued: int = 0
    simulated_until: datetime | None = None


def resume_point(store: Store, config: SimulationConfig) -> datetime | None:
    """Where an earlier stream of `config` stopped: the latest observation time inside its window, or None."""
    o = S.Observation
    end = config.start + timedelta(minutes=config.window_minutes)
    with store.engine.connect() as conn:
        found: datetime | None = conn.execute(select(func.max(o.effective_at)).where(
            o.effective_at >= config.start, o.effective_at < end)).scalar()
    return found


def queue_in_house(store: Store, queue: ScoreQueue) -> int:
    """Queue every patient with an open stay for scoring (after a first model, or a history ingested
    before there was one); returns how many."""
    e = S.Encounter
    with store.engine.connect() as conn:
        ids = sorted({int(p) for p in conn.execute(select(e.patient_id).where(e.discharged_at.is_(None))).scalars()})
    if ids:
        queue.enqueue(ids, None)
    return len(ids)


# -- events -> units of work ----------------------------------------------------------------------------------

def _add_event(unit: UnitOfWork, event: Event, number: int) -> None:
    """Decode one feed event into `unit`. Locations name the event's number in the feed, never its content."""
    where = f"live event {number}"
    payload = event.resource
    if isinstance(payload, WearableBatch):
        for i, line in enumerate(payload.payload.splitlines()):
            loc = f"{where} reading {i}"
            try:
                reading = decode_reading(orjson.loads(line))
            except (FieldProblem, orjson.JSONDecodeError) as exc:
                problem = exc if isinstance(exc, FieldProblem) else FieldProblem("(line)", "not valid JSON")
                unit.rejections.append(problem.rejection(loc, "Reading", line))
                continue
            unit.add(reading, loc)
            unit.raw[loc] = line
        return
    add_resource(unit, payload, where)


class _Writer:
    """Writes units as ingest batches and queues the patients whose readings changed. Store failures are
    retried (writing is idempotent) until `stop` is set."""

    def __init__(self, target: Store | ClinicalWriter, queue: ScoreQueue | None, stop: threading.Event) -> None:
        self.stop = stop
        self.changed: dict[int, datetime | None] = {}
        self.queued = 0  # patients queued after the last batch
        if isinstance(target, ClinicalWriter):
            self._make: Callable[[], ClinicalWriter] = lambda: target
            self.queue = queue
        else:
            self._make = lambda: ClinicalWriter(target.engine, target.keyring, on_patients_changed=self._note)
            self.queue = queue if queue is not None else DatabaseQueue(target.engine)
        self.writer = self._make()

    def _note(self, patient_ids: set[int], latest: datetime | None) -> None:
        for pid in patient_ids:
            before = self.changed.get(pid)
            self.changed[pid] = latest if before is None or (latest is not None and latest > before) else before

    def write(self, unit: UnitOfWork, label: str) -> FileSummary | None:
        while not self.stop.is_set():
            try:
                summary = ingest_units([unit], self.writer, source=SOURCE, label=label)
                observe_ingest(SOURCE, summary.inserted + summary.updated + summary.unchanged, summary.rejected)
                break
            except Exception as exc:  # the database is away: the same unit again later changes nothing twice
                log.warning("live feed could not write a batch (%s); retrying in %.0f s", type(exc).__name__, RETRY_S)
                self.writer = self._make()  # its caches may describe a rolled-back transaction
                self.stop.wait(RETRY_S)
        else:
            return None
        self.queued = self._enqueue()
        return summary

    def _enqueue(self) -> int:
        if not self.changed or self.queue is None:
            self.changed.clear()
            return 0
        times = [t for t in self.changed.values() if t is not None]
        while not self.stop.is_set():
            try:
                self.queue.enqueue(sorted(self.changed), max(times) if times else None)
                break
            except Exception as exc:
                log.warning("live feed could not queue patients for scoring (%s); retrying", type(exc).__name__)
                self.stop.wait(RETRY_S)
        n = len(self.changed)
        self.changed.clear()
        return n


def stream_hospital(store_or_writer: Store | ClinicalWriter, config: SimulationConfig, *, speed: float,
                    start_at: datetime, stop: threading.Event,
                    on_written: Callable[[FileSummary, LiveStats], None] | None = None,
                    queue: ScoreQueue | None = None, skip_before: datetime | None = None,
                    flush_s: float = FLUSH_S) -> LiveStats:
    """Write `config`'s hospital into the store as its time comes, until its window ends or `stop` is set.

    The simulated clock reads `start_at` now and advances `speed` simulated seconds per real second:
    events up to `start_at` are written at once (history of the patients, and what an earlier run of the
    same config wrote, which changes nothing), then each event once its time has come, in ingest batches
    about `flush_s` real seconds apart. Events before `skip_before` are not written at all (an earlier run
    stored them; see `resume_point`).

    Given a Store, the patients whose readings changed are queued on `queue` (default: the store's
    database queue) after each batch; given a ClinicalWriter, its own `on_patients_changed` does that.
    `on_written(summary, stats)` is called after each batch."""
    if not speed > 0:
        raise ValueError("speed must be positive")
    if start_at.tzinfo is None:
        raise ValueError("start_at must be timezone-aware")
    stats = LiveStats()
    writer = _Writer(store_or_writer, queue, stop)
    feed: Iterator[Event] = Hospital(config).events()
    pending = next(feed, None)
    if skip_before is not None:
        while pending is not None and pending.time < skip_before and not stop.is_set():
            stats.skipped_events += 1
            pending = next(feed, None)
    t0 = time.monotonic()

    def simulated_now() -> datetime:
        return start_at + timedelta(seconds=(time.monotonic() - t0) * speed)

    while pending is not None and not stop.is_set():
        began = time.monotonic()
        now = simulated_now()
        unit = UnitOfWork(where="live")
        taken = 0
        while pending is not None and pending.time <= now and taken < MAX_EVENTS_PER_FLUSH:
            stats.events += 1
            taken += 1
            _add_event(unit, pending, stats.events)
            stats.simulated_until = pending.time
            pending = next(feed, None)
        if unit.records or unit.rejections or unit.skipped:
            summary = writer.write(unit, f"live: simulated hospital up to {now.isoformat(timespec='seconds')}")
            if summary is None:
                break  # stopped while the store was away
            stats.batches += 1
            stats.inserted += summary.inserted
            stats.updated += summary.updated
            stats.unchanged += summary.unchanged
            stats.rejected += summary.rejected
            stats.patients_queued += writer.queued
            if on_written is not None:
                on_written(summary, stats)
        if pending is None or taken >= MAX_EVENTS_PER_FLUSH:
            continue
        until_next = (pending.time - simulated_now()).total_seconds() / speed
        stop.wait(max(flush_s - (time.monotonic() - began), until_next, 0.0))
    return stats
