"""Score one patient from the store and keep the result: frames -> the training feature builder -> champion
models -> one `predictions` row per (patient, task, model version, data time), stored once.

`score_frames` is the pure part (no database: it also scores frames built from a CDS Hooks prefetch);
`score_patient` loads the frames, calls it and stores idempotently (`score_patients`: the same for a batch, as
the scoring worker uses it); `latest_predictions`, `current_risks` and
`risk_trajectory` read the results back.

The data time of a score is the time of the patient's latest bedside observation (the moments the models
were trained on), so re-scoring unchanged data finds its row already stored and stores nothing.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, Select, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from carecast.domain.frames import ClinicalFrames
from carecast.errors import NotFoundError
from carecast.features.builder import BEDSIDE_SOURCES, build_features
from carecast.features.spec import FeatureSpec
from carecast.scoring.predictor import Predictor, ScoredRisk
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.db import transaction_lock
from carecast.store.frames import load_frames

NEWS2_PARAMETERS = 7  # respiration, SpO2, air or oxygen, systolic BP, pulse, consciousness, temperature
_KEY = ("patient_id", "task", "model_version", "data_time")
_ORDER_LOCK_KEY = 0x43435052  # "CCPR": the advisory lock that keeps predictions committed in id order (PostgreSQL)


@dataclass(frozen=True, slots=True)
class StoredPrediction:
    """A stored risk score. `created` is True only in the answer of the call that stored it."""

    id: int
    patient_id: int
    patient_uid: str | None
    encounter_id: int | None
    unit: str | None
    task: str
    model_version: str
    risk: float
    band: str
    news2: int | None
    factors: list[dict[str, Any]]
    data_time: datetime
    computed_at: datetime
    shadow: bool = False
    created: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the internal row ids."""
        return {"patient_uid": self.patient_uid, "unit": self.unit, "task": self.task,
                "model_version": self.model_version, "risk": self.risk, "band": self.band, "news2": self.news2,
                "factors": self.factors, "data_time": self.data_time.isoformat(),
                "computed_at": self.computed_at.isoformat(), "shadow": self.shadow}


@dataclass(frozen=True)
class FrameScore:
    """What `score_frames` found: the encounter and data time scored, NEWS2 and one risk per model."""

    patient_id: int
    encounter_id: int | None
    unit: str | None
    data_time: datetime | None
    news2: int | None
    risks: list[ScoredRisk] = field(default_factory=list)


def _utc(value: Any) -> datetime | None:
    if value is None or (not isinstance(value, datetime) and pd.isna(value)):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.to_pydatetime()


def latest_bedside_time(frames: ClinicalFrames, patient_id: int) -> datetime | None:
    obs = frames.observations
    times = obs.loc[(obs["patient_id"] == patient_id) & obs["source"].isin(BEDSIDE_SOURCES), "effective_at"]
    return _utc(times.max()) if len(times) else None


def current_encounter(encounters: pd.DataFrame, patient_id: int, t: datetime | None) -> pd.Series | None:
    """The patient's encounter at time t: the latest admission not discharged by then, else the latest
    admission (started by t, when t is known). None when the patient has no encounter."""
    enc = encounters[encounters["patient_id"] == patient_id]
    i = _pick_encounter(_encounter_rows(enc).get(patient_id, []), None if t is None else pd.Timestamp(t))
    return None if i is None else enc.iloc[i]


# One encounter of a patient as `_pick_encounter` reads it: (admitted at, discharged at, encounter id, ...),
# a missing time as None.
EncounterRow = tuple[Any, ...]


def _pick_encounter(rows: Sequence[EncounterRow], t: pd.Timestamp | None) -> int | None:
    """Which of a patient's encounters is current at `t` (see `current_encounter`), as an index into `rows`.

    Plain Python over the patient's few rows: the scoring worker picks one for every patient of a batch,
    and the same choice made with a handful of pandas filters and a sort per patient took 12% of the
    worker's time (py-spy, benchmarks/realtime.py). Among the candidates, the latest admission wins,
    an unknown admission time counting as latest (as pandas sorts NaT last), ties by encounter id."""
    if not rows:
        return None
    candidates = list(range(len(rows)))
    if t is not None:
        started = [i for i in candidates if rows[i][0] is not None and rows[i][0] <= t]
        candidates = started or candidates
        still_in = [i for i in candidates if rows[i][1] is None or rows[i][1] >= t]
    else:
        still_in = [i for i in candidates if rows[i][1] is None]
    pool = still_in or candidates
    return max(pool, key=lambda i: (rows[i][0] is None, rows[i][0], rows[i][2]))


def _time_or_none(value: Any) -> Any:
    return None if value is None or pd.isna(value) else value


def _news2(row: Mapping[str, object]) -> int | None:
    total, missing = row.get("news2_total"), row.get("news2_missing")
    if not isinstance(total, (int, float)) or math.isnan(float(total)):
        return None
    if isinstance(missing, (int, float)) and not math.isnan(float(missing)) and missing >= NEWS2_PARAMETERS:
        return None  # nothing NEWS2 reads was recorded: a 0 would look reassuring
    return int(total)


def _moment(encounters: pd.DataFrame, patient_id: int, t: datetime | None
            ) -> tuple[int | None, str | None, datetime | None]:
    """What a patient is scored at: (encounter, its unit, data time). The data time is the latest bedside
    reading `t`, or the admission when nothing was measured yet; (None, None, t) without an encounter."""
    return _moment_of(_encounter_rows(encounters[encounters["patient_id"] == patient_id]).get(patient_id, []), t)


def _encounter_rows(encounters: pd.DataFrame) -> dict[int, list[EncounterRow]]:
    """Each patient's encounters as (admitted at, discharged at, encounter id, unit), in one pass."""
    rows: dict[int, list[EncounterRow]] = {}
    if encounters.empty:
        return rows
    for pid, admitted, discharged, encounter_id, unit in zip(
            encounters["patient_id"], encounters["admitted_at"], encounters["discharged_at"],
            encounters["encounter_id"], encounters["unit"], strict=True):
        rows.setdefault(int(pid), []).append((_time_or_none(admitted), _time_or_none(discharged), int(encounter_id),
                                              unit if isinstance(unit, str) else None))
    return rows


def _moment_of(rows: Sequence[EncounterRow], t: datetime | None) -> tuple[int | None, str | None, datetime | None]:
    i = _pick_encounter(rows, None if t is None else pd.Timestamp(t))
    if i is None:
        return None, None, t
    admitted, _, encounter_id, unit = rows[i]
    return encounter_id, unit, t if t is not None else _utc(admitted)


def _risks(predictor: Predictor, row: Mapping[str, object], tasks: Sequence[str] | None,
           shadow_challenger: bool) -> list[ScoredRisk]:
    """The champions' risks of one feature row (every task with a champion unless `tasks` names them) and,
    with `shadow_challenger`, each loaded challenger's as a shadow risk."""
    wanted = list(tasks) if tasks is not None else [task for task in predictor.tasks if predictor.has(task)]
    risks = [predictor.predict(task, row) for task in wanted]
    if shadow_challenger:
        risks += [predictor.predict(task, row, alias="challenger") for task in wanted
                  if predictor.has(task, "challenger")]
    return risks


def score_frames(predictor: Predictor, frames: ClinicalFrames, patient_id: int, *, tasks: Sequence[str] | None = None,
                 at: datetime | None = None, shadow_challenger: bool = False,
                 spec: FeatureSpec | None = None) -> FrameScore:
    """Score a patient from frames (no database). Tasks default to every task with a champion; a task
    asked for by name without a champion raises NotFoundError. With `shadow_challenger`, each task's
    challenger (when loaded) scores the same row too, as a shadow risk."""
    if at is not None and at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    encounter_id, unit, t = _moment(frames.encounters, patient_id, at or latest_bedside_time(frames, patient_id))
    if encounter_id is None or t is None:
        return FrameScore(patient_id=patient_id, encounter_id=encounter_id, unit=unit, data_time=t, news2=None)
    query = pd.DataFrame({"patient_id": [patient_id], "encounter_id": [encounter_id], "t": [pd.Timestamp(t)]})
    X = build_features(frames, query, spec)
    row = {str(k): v for k, v in X.iloc[0].items()}
    return FrameScore(patient_id=patient_id, encounter_id=encounter_id, unit=unit, data_time=t, news2=_news2(row),
                      risks=_risks(predictor, row, tasks, shadow_challenger))


def score_patient(store: Store, predictor: Predictor, patient_id: int, *, tasks: Sequence[str] | None = None,
                  at: datetime | None = None, shadow_challenger: bool = False) -> list[StoredPrediction]:
    """Score a stored patient at the time of their latest bedside observation (or `at`) and store each risk
    once: a second call with the same data and models stores nothing and returns the rows already there.

    Returns [] for a patient without an encounter; raises NotFoundError for an unknown patient."""
    frames = load_frames(store.engine, store.keyring, patient_ids=[patient_id], until=at)
    if frames.patients.empty:
        raise NotFoundError("unknown patient")
    scored = score_frames(predictor, frames, patient_id, tasks=tasks, at=at, shadow_challenger=shadow_challenger)
    if not scored.risks or scored.data_time is None:
        return []
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        _in_id_order(conn)
        return _store(conn, [(scored, scored.data_time, risk) for risk in scored.risks], now)


def score_patients(store: Store, predictor: Predictor, patient_ids: Sequence[int], *,
                   shadow_challenger: bool = False) -> dict[int, list[StoredPrediction] | Exception]:
    """`score_patient` for many patients at once, with the same result per patient: one read of their
    frames, one feature-building pass (a row per patient; each row's features depend only on its own
    patient's data) and one transaction storing every new risk. This is what the scoring worker does with
    the jobs it claims: the fixed cost of reading and building features is paid once per batch, not once
    per patient.

    Each patient's answer is their stored predictions, or the exception that stopped them (NotFoundError
    for an unknown patient; an unusable feature row...), so one bad patient does not stop the others. An
    error of the store itself is raised."""
    ids = list(dict.fromkeys(int(p) for p in patient_ids))
    out: dict[int, list[StoredPrediction] | Exception] = {}
    if not ids:
        return out
    frames = load_frames(store.engine, store.keyring, patient_ids=ids)
    known = set(frames.patients["patient_id"].astype(int)) if not frames.patients.empty else set()
    bedside = _latest_bedside_times(frames)
    encounters = _encounter_rows(frames.encounters)
    moments: list[tuple[int, int, str | None, datetime]] = []
    for pid in ids:
        if pid not in known:
            out[pid] = NotFoundError("unknown patient")
            continue
        encounter_id, unit, t = (_moment_of(encounters[pid], bedside.get(pid)) if pid in encounters
                                 else (None, None, None))
        if encounter_id is None or t is None:
            out[pid] = []
            continue
        moments.append((pid, encounter_id, unit, t))
    if not moments:
        return out
    query = pd.DataFrame({"patient_id": [m[0] for m in moments], "encounter_id": [m[1] for m in moments],
                          "t": [pd.Timestamp(m[3]) for m in moments]})
    X = build_features(frames, query)
    scored: list[tuple[FrameScore, datetime]] = []
    for (pid, encounter_id, unit, t), (_, features) in zip(moments, X.iterrows(), strict=True):
        row = {str(k): v for k, v in features.items()}
        try:
            risks = _risks(predictor, row, None, shadow_challenger)
        except Exception as exc:  # this patient's row cannot be scored; the others go on
            out[pid] = exc
            continue
        scored.append((FrameScore(patient_id=pid, encounter_id=encounter_id, unit=unit, data_time=t,
                                  news2=_news2(row), risks=risks), t))
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        _in_id_order(conn)
        items = [(fs, t, risk) for fs, t in scored for risk in fs.risks]
        stored = iter(_store(conn, items, now))
        for fs, _ in scored:
            out[fs.patient_id] = [next(stored) for _ in fs.risks]
    return out


def _latest_bedside_times(frames: ClinicalFrames) -> dict[int, datetime]:
    """Each patient's latest bedside observation time (what `latest_bedside_time` gives, for all at once)."""
    obs = frames.observations
    if obs.empty:
        return {}
    bedside = obs.loc[obs["source"].isin(BEDSIDE_SOURCES), ["patient_id", "effective_at"]]
    latest = bedside.groupby("patient_id", sort=False)["effective_at"].max()
    return {int(pid): when for pid, value in latest.items() if (when := _utc(value)) is not None}


def _in_id_order(conn: Connection) -> None:
    """Begin a transaction that stores predictions: on PostgreSQL, wait for any other such transaction to end.

    Readers of live updates (each stream's catch-up, the `predictions` poller of `DatabaseBus`) take the rows
    after the last id they have seen. PostgreSQL hands out ids when a row is inserted, not when it is
    committed: a scoring worker whose transaction took ids 100-110 and committed after another's 111-120
    left those rows behind every reader that had already read 111-120, and their clinicians never got those
    updates. Holding this transaction-scoped lock from before the first insert to the commit makes the ids
    committed in order, so "after the last id seen" misses nothing; only the storing is serialised, not the
    reading and feature building before it. SQLite needs nothing: its one writer already commits in id
    order. (Ids skipped by a duplicate's `ON CONFLICT DO NOTHING` are gaps that never fill, which readers
    pass over.) Every transaction that inserts predictions calls this first."""
    transaction_lock(conn, _ORDER_LOCK_KEY)


def _insert_ignoring_duplicates(conn: Connection, values: dict[str, Any]) -> int | None:
    """INSERT ... ON CONFLICT (patient, task, version, data time) DO NOTHING; the new id, or None."""
    table = S.table(S.Prediction)
    name = conn.dialect.name
    if name == "postgresql":
        stmt: Any = postgresql.insert(table).values(**values).on_conflict_do_nothing(index_elements=list(_KEY))
    elif name == "sqlite":
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing(index_elements=list(_KEY))
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported stores
        raise NotImplementedError(f"predictions are not supported on {name}")
    found = conn.execute(stmt.returning(table.c.id)).scalar_one_or_none()
    return None if found is None else int(found)


def _store(conn: Connection, items: Sequence[tuple[FrameScore, datetime, ScoredRisk]],
           now: datetime) -> list[StoredPrediction]:
    """Store each (scored patient, data time, risk) once, in order; the stored rows, `created` for the new ones.

    The new rows are read back with their patient uid and unit in one query; a row already stored (the same
    patient, task, model and data time) is read by its key. Reading each new row back on its own was 40-odd
    queries for a worker's batch, most of the 13% of the worker's time that storing took."""
    new_ids = [_insert_ignoring_duplicates(conn, _values(scored, data_time, risk, now))
               for scored, data_time, risk in items]
    fresh = [i for i in new_ids if i is not None]
    P = S.table(S.Prediction)
    rows = {int(row.id): row for row in conn.execute(_with_context().where(P.c.id.in_(fresh)))} if fresh else {}
    return [_from_row(rows[new_id], created=True) if new_id is not None else _stored_before(conn, *item)
            for item, new_id in zip(items, new_ids, strict=True)]


def _values(scored: FrameScore, data_time: datetime, risk: ScoredRisk, now: datetime) -> dict[str, Any]:
    return {"patient_id": scored.patient_id, "encounter_id": scored.encounter_id, "task": risk.task,
            "model_version": risk.model_version, "risk": risk.risk, "band": risk.band, "news2": scored.news2,
            "factors": json.dumps(risk.factors, allow_nan=False), "data_time": data_time,
            "computed_at": now, "shadow": risk.shadow}


def _stored_before(conn: Connection, scored: FrameScore, data_time: datetime, risk: ScoredRisk) -> StoredPrediction:
    """The row already stored for this patient, task, model and data time."""
    P = S.table(S.Prediction)
    row = conn.execute(_with_context().where(
        P.c.patient_id == scored.patient_id, P.c.task == risk.task, P.c.model_version == risk.model_version,
        P.c.data_time == data_time)).one()
    if row.shadow and not risk.shadow:
        # A challenger's shadow score of this very row, and the challenger is champion now: it counts.
        conn.execute(update(P).where(P.c.id == row.id).values(shadow=False))
        return _from_row(row, shadow=False)
    return _from_row(row)


# -- reading ----------------------------------------------------------------------------------------------

_FIELDS = ("id", "patient_id", "patient_uid", "encounter_id", "unit", "task", "model_version", "risk", "band",
           "news2", "factors", "data_time", "computed_at", "shadow")


def _with_context(*extra: Any) -> Select[Any]:
    """Predictions with the patient's public uid and the encounter's unit."""
    P = S.table(S.Prediction)
    return (select(*P.c, S.Patient.uid.label("patient_uid"), S.Encounter.unit.label("unit"), *extra)
            .join_from(P, S.Patient, S.Patient.id == P.c.patient_id)
            .outerjoin(S.Encounter, S.Encounter.id == P.c.encounter_id))


def _from_row(row: Any, *, created: bool = False, shadow: bool | None = None) -> StoredPrediction:
    m = row._mapping
    return StoredPrediction(
        id=int(m["id"]), patient_id=int(m["patient_id"]), patient_uid=m["patient_uid"],
        encounter_id=None if m["encounter_id"] is None else int(m["encounter_id"]), unit=m["unit"],
        task=m["task"], model_version=m["model_version"], risk=float(m["risk"]), band=m["band"], news2=m["news2"],
        factors=json.loads(m["factors"] or "[]"), data_time=m["data_time"], computed_at=m["computed_at"],
        shadow=bool(m["shadow"]) if shadow is None else shadow, created=created)


def _newest(where: Iterable[Any], partition: Any, *, include_shadow: bool = False) -> Select[Any]:
    """Predictions matching `where`, only the newest within each `partition`: newest data time, then newest
    row (after a champion change, the new model's score of the same data wins)."""
    P = S.table(S.Prediction)
    conditions = list(where)
    if not include_shadow:
        conditions.append(P.c.shadow.is_(False))
    rank = func.row_number().over(partition_by=partition, order_by=(P.c.data_time.desc(), P.c.id.desc()))
    sub = _with_context(rank.label("rank")).where(*conditions).subquery()
    return select(*(sub.c[name] for name in _FIELDS)).where(sub.c["rank"] == 1)


# The statements of the two hottest reads (a patient's latest risks; a ward's current risks), built once with
# bound parameters: building the ranked subquery anew cost about a sixth of a latest-risk GET (py-spy).
@functools.cache
def _latest_of_patient(include_shadow: bool) -> Select[Any]:
    P = S.table(S.Prediction)
    return _newest([P.c.patient_id == bindparam("patient_id")], P.c.task, include_shadow=include_shadow)


@functools.cache
def _current_of_task(some_patients: bool) -> Select[Any]:
    P = S.table(S.Prediction)
    where: list[Any] = [P.c.task == bindparam("task")]
    if some_patients:
        where.append(P.c.patient_id.in_(bindparam("patient_ids", expanding=True)))
    return _newest(where, P.c.patient_id)


def latest_predictions(engine: Engine, patient_id: int, *, include_shadow: bool = False) -> dict[str, StoredPrediction]:
    """The newest stored prediction of each task for a patient."""
    with engine.connect() as conn:
        rows = conn.execute(_latest_of_patient(include_shadow), {"patient_id": int(patient_id)}).all()
    return {r.task: _from_row(r) for r in rows}


def current_risks(engine: Engine, task: str, patient_ids: Iterable[int] | None = None) -> dict[int, StoredPrediction]:
    """The newest prediction of `task` per patient (all patients, or those given): for ward lists sorted
    by risk."""
    params: dict[str, Any] = {"task": task}
    if patient_ids is not None:
        params["patient_ids"] = [int(p) for p in patient_ids]
    with engine.connect() as conn:
        rows = conn.execute(_current_of_task(patient_ids is not None), params).all()
    return {int(r.patient_id): _from_row(r) for r in rows}


def risk_trajectory(engine: Engine, patient_id: int, task: str, since: datetime | None = None, *,
                    until: datetime | None = None) -> list[StoredPrediction]:
    """A patient's risk over time for one task, oldest first: one point per data time (the newest model's
    score of it), for data times within [since, until]."""
    P = S.table(S.Prediction)
    where: list[Any] = [P.c.patient_id == patient_id, P.c.task == task]
    if since is not None:
        where.append(P.c.data_time >= since)
    if until is not None:
        where.append(P.c.data_time <= until)
    stmt = _newest(where, P.c.data_time)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(stmt.selected_columns.data_time, stmt.selected_columns.id)).all()
    return [_from_row(r) for r in rows]


def risk_trajectories(engine: Engine, task: str, windows: Mapping[int, tuple[datetime, datetime]]
                      ) -> dict[int, list[StoredPrediction]]:
    """`risk_trajectory` of several patients, each within its own [since, until] window, in one query
    (a ward page draws one sparkline per patient)."""
    if not windows:
        return {}
    P = S.table(S.Prediction)
    where = [P.c.patient_id.in_(sorted(windows)), P.c.task == task,
             P.c.data_time >= min(since for since, _ in windows.values()),
             P.c.data_time <= max(until for _, until in windows.values())]
    stmt = _newest(where, (P.c.patient_id, P.c.data_time))
    out: dict[int, list[StoredPrediction]] = {pid: [] for pid in windows}
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(stmt.selected_columns.patient_id, stmt.selected_columns.data_time,
                                          stmt.selected_columns.id)).all()
    for row in rows:
        p = _from_row(row)
        since, until = windows[p.patient_id]
        if since <= p.data_time <= until:
            out[p.patient_id].append(p)
    return out
