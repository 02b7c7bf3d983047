"""Writes domain records into the store: encrypted identifiers, keyed natural keys, idempotent upserts.

The one rule: a record whose natural key is already stored with the same content changes nothing;
with different content it updates the stored row (a corrected value, a discharged encounter).
Observations, the bulk of the data, take a set-based path: one lookup of existing keys per chunk,
then a single executemany insert and update.
"""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, Table, bindparam, insert, select, update

from carecast.crypto import Keyring
from carecast.domain.records import (
    WRITE_ORDER,
    ConditionRecord,
    DiagnosticReportRecord,
    EncounterRecord,
    ImagingStudyRecord,
    ObservationRecord,
    OutcomeRecord,
    PatientRecord,
    Record,
    Rejection,
    UnitOfWork,
)
from carecast.store import schema as S

READMISSION_WINDOW = timedelta(days=30)
_IN_CHUNK = 900  # keys per IN (...) lookup; well under every backend's parameter limit


@dataclass
class WriteResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    def merge(self, other: WriteResult) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.rejections.extend(other.rejections)

    @property
    def stored(self) -> int:
        return self.inserted + self.updated + self.unchanged


class _Unresolved(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class _AtomicAbort(Exception):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | date | None) -> str:
    return "" if value is None else value.isoformat()


class ClinicalWriter:
    """Writes units of work over one engine with one keyring. Not thread-safe: one per worker.

    `on_patients_changed(patient_ids, latest_effective_at)`, if given, is called after each committed
    `write` of observations (the scoring queue's hook): new, changed, and re-sent unchanged ones too,
    since a re-sent reading may be a client's retry of a write whose commit landed but whose scoring job
    was lost (the process died in between); scoring is idempotent and queued jobs coalesce, so the extra
    job costs a re-check. If the hook raises, the data is already committed and the exception propagates."""

    def __init__(self, engine: Engine, keyring: Keyring,
                 on_patients_changed: Callable[[set[int], datetime | None], None] | None = None) -> None:
        self.engine = engine
        self.keys = keyring
        self.on_patients_changed = on_patients_changed
        self._changes: dict[int, datetime] | None = None  # patient -> latest changed reading, last write
        self._patient_ids: dict[str, int] = {}  # source_key or mrn index -> patients.id
        self._encounter_ids: dict[str, int] = {}
        self._device_ids: dict[str, int] = {}

    # -- keys ---------------------------------------------------------------------------------------
    def source_key(self, natural_key: str) -> str:
        return self.keys.record_key(natural_key)

    def _hash(self, *parts: Any) -> str:
        return self.keys.blind_index("\x1f".join("" if p is None else str(p) for p in parts), "content")

    def _enc(self, value: Any, context: str) -> bytes | None:
        if value is None or value == "":
            return None
        return self.keys.encrypt(value if isinstance(value, str) else str(value), context)

    # -- batches ------------------------------------------------------------------------------------
    def begin_batch(self, source: str, label: str) -> int:
        with self.engine.begin() as conn:
            row = conn.execute(
                insert(S.table(S.IngestBatch)).values(
                    source=source, label=label[:255], started_at=_now(), status="running",
                    accepted=0, updated=0, unchanged=0, rejected=0,
                ).returning(S.table(S.IngestBatch).c.id)
            ).one()
        return int(row[0])

    def finish_batch(self, batch_id: int, result: WriteResult, status: str) -> None:
        t = S.table(S.IngestBatch)
        with self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.id == batch_id).values(
                finished_at=_now(), status=status, accepted=result.inserted, updated=result.updated,
                unchanged=result.unchanged, rejected=len(result.rejections)))

    def quarantine(self, batch_id: int, source: str, rejections: Sequence[Rejection]) -> None:
        if not rejections:
            return
        now = _now()
        rows = [{
            "batch_id": batch_id, "source": source, "status": "quarantined",
            "content_key": self.keys.blind_index(r.raw.hex(), "raw") if r.raw else None,
            "location": r.where[:255], "resource_type": r.resource_type, "field": (r.field or "")[:128] or None,
            "reason": r.reason, "raw_enc": self.keys.encrypt(r.raw.decode("utf-8", "replace"), "ingest.raw")
            if r.raw else None, "created_at": now,
        } for r in rejections]
        with self.engine.begin() as conn:
            conn.execute(insert(S.table(S.IngestRecord)), rows)

    # -- units --------------------------------------------------------------------------------------
    def write(self, unit: UnitOfWork, batch_id: int | None) -> WriteResult:
        """Store a unit. An atomic unit with any rejection stores nothing and rejects every record."""
        if unit.atomic:
            if unit.rejections:
                return WriteResult(rejections=self._reject_all(unit, "a transaction entry was rejected"))
            try:
                with self.engine.begin() as conn:
                    result = self._write_records(conn, unit, batch_id)
                    if result.rejections:
                        raise _AtomicAbort
                self._announce_changes()
                return result
            except _AtomicAbort:
                self._forget_caches()
                failed = "; ".join(sorted({r.describe() for r in result.rejections}))[:500]
                return WriteResult(rejections=[*result.rejections, *self._reject_all(
                    unit, f"transaction rolled back: {failed}", skip={r.where for r in result.rejections})])
        with self.engine.begin() as conn:
            result = self._write_records(conn, unit, batch_id)
        self._announce_changes()
        result.rejections[:0] = unit.rejections
        return result

    def _announce_changes(self) -> None:
        changes, self._changes = self._changes, None
        if changes and self.on_patients_changed is not None:
            self.on_patients_changed(set(changes), max(changes.values()))

    def _reject_all(self, unit: UnitOfWork, reason: str, skip: Iterable[str] = ()) -> list[Rejection]:
        skipped = set(skip)
        own = list(unit.rejections) if not skipped else []
        out = own + [Rejection(where=loc, reason=reason, resource_type=type(rec).__name__.removesuffix("Record"),
                               raw=unit.raw.get(loc))
                     for rec, loc in zip(unit.records, self._locations(unit), strict=True) if loc not in skipped]
        return out

    def _forget_caches(self) -> None:
        # Ids inserted inside a rolled-back transaction must not be reused.
        self._patient_ids.clear()
        self._encounter_ids.clear()
        self._device_ids.clear()

    @staticmethod
    def _locations(unit: UnitOfWork) -> list[str]:
        locs = list(unit.locations)
        if len(locs) < len(unit.records):
            locs += [unit.where] * (len(unit.records) - len(locs))
        return locs

    def _write_records(self, conn: Connection, unit: UnitOfWork, batch_id: int | None) -> WriteResult:
        by_type: dict[type, list[tuple[Any, str]]] = defaultdict(list)
        for rec, loc in zip(unit.records, self._locations(unit), strict=True):
            by_type[type(rec)].append((rec, loc))
        result = WriteResult()
        ctx = _Ctx(conn=conn, batch_id=batch_id, unit=unit, result=result,
                   changed={} if self.on_patients_changed is not None else None)
        for kind in sorted(by_type, key=lambda k: WRITE_ORDER[k]):
            items = by_type[kind]
            if kind is ObservationRecord:
                self._write_observations(ctx, items)
            else:
                handler = self._handlers[kind]
                for rec, loc in items:
                    try:
                        handler(self, ctx, rec)
                    except _Unresolved as problem:
                        result.rejections.append(Rejection(
                            where=loc, reason=problem.reason, field=problem.field,
                            resource_type=kind.__name__.removesuffix("Record"), raw=unit.raw.get(loc)))
        if ctx.touched_patients:
            self._derive_readmissions(ctx)
        self._changes = ctx.changed
        return result

    # -- reference resolution -----------------------------------------------------------------------
    def _patient_id(self, conn: Connection, ref: str | None, field: str = "subject") -> int:
        if not ref:
            raise _Unresolved(field, "no patient reference")
        cached = self._patient_ids.get(ref)
        if cached is not None:
            return cached
        t = S.table(S.Patient)
        if ref.startswith("mrn:"):
            key = self.keys.blind_index(ref[4:].strip(), "patients.mrn")
            row = conn.execute(select(t.c.id).where(t.c.mrn_index == key).order_by(t.c.id)).first()
        else:
            row = conn.execute(select(t.c.id).where(t.c.source_key == self.source_key(ref))).first()
        if row is None:
            raise _Unresolved(field, "references a patient that is not stored (ingest the Patient first)")
        self._patient_ids[ref] = int(row[0])
        return int(row[0])

    def _encounter_id(self, conn: Connection, ref: str | None) -> int | None:
        if not ref:
            return None
        cached = self._encounter_ids.get(ref)
        if cached is not None:
            return cached
        t = S.table(S.Encounter)
        row = conn.execute(select(t.c.id).where(t.c.source_key == self.source_key(ref))).first()
        if row is None:
            raise _Unresolved("encounter", "references an encounter that is not stored")
        self._encounter_ids[ref] = int(row[0])
        return int(row[0])

    def _device_id(self, conn: Connection, serial: str | None) -> int | None:
        if not serial:
            return None
        index = self.keys.blind_index(serial, "devices.serial")
        cached = self._device_ids.get(index)
        if cached is not None:
            return cached
        t = S.table(S.Device)
        row = conn.execute(select(t.c.id).where(t.c.serial_index == index)).first()
        if row is None:
            row = conn.execute(insert(t).values(
                serial_index=index, serial_enc=self.keys.encrypt(serial, "devices.serial"),
                created_at=_now()).returning(t.c.id)).one()
        self._device_ids[index] = int(row[0])
        return int(row[0])

    # -- generic upsert ------------------------------------------------------------------------------
    def _upsert(self, ctx: _Ctx, table: Table, key: str, content: str, values: dict[str, Any],
                insert_only: dict[str, Any] | None = None) -> tuple[int, bool]:
        """Insert or update one row by source_key. Returns (row id, changed)."""
        row = ctx.conn.execute(select(table.c.id, table.c.content_hash).where(table.c.source_key == key)).first()
        if row is None:
            new = {"source_key": key, "content_hash": content, **values, **(insert_only or {})}
            rid = ctx.conn.execute(insert(table).values(**new).returning(table.c.id)).one()[0]
            ctx.result.inserted += 1
            return int(rid), True
        if row.content_hash == content:
            ctx.result.unchanged += 1
            return int(row.id), False
        ctx.conn.execute(update(table).where(table.c.id == row.id).values(content_hash=content, **values))
        ctx.result.updated += 1
        return int(row.id), True

    # -- per kind ------------------------------------------------------------------------------------
    def _write_patient(self, ctx: _Ctx, rec: PatientRecord) -> None:
        now = _now()
        content = self._hash(rec.mrn, rec.family_name, rec.given_names, _iso(rec.birth_date), rec.sex, rec.race,
                             rec.ethnicity, rec.address_line, rec.city, rec.state, rec.postal_code, rec.phone,
                             rec.email, rec.ssn, _iso(rec.deceased_at))
        values = {
            "mrn_index": self.keys.blind_index(rec.mrn.strip(), "patients.mrn") if rec.mrn else None,
            "mrn_enc": self._enc(rec.mrn, "patients.mrn"),
            "family_name_enc": self._enc(rec.family_name, "patients.family_name"),
            "given_names_enc": self._enc(rec.given_names, "patients.given_names"),
            "birth_date_enc": self._enc(_iso(rec.birth_date) or None, "patients.birth_date"),
            "address_line_enc": self._enc(rec.address_line, "patients.address_line"),
            "city_enc": self._enc(rec.city, "patients.city"),
            "postal_code_enc": self._enc(rec.postal_code, "patients.postal_code"),
            "phone_enc": self._enc(rec.phone, "patients.phone"),
            "email_enc": self._enc(rec.email, "patients.email"),
            "ssn_enc": self._enc(rec.ssn, "patients.ssn"),
            "sex": rec.sex, "race": rec.race, "ethnicity": rec.ethnicity, "state": rec.state,
            "deceased_at": rec.deceased_at, "batch_id": ctx.batch_id, "updated_at": now,
        }
        key = self.source_key(rec.natural_key)
        pid, _ = self._upsert(ctx, S.table(S.Patient), key, content, values,
                              {"uid": str(uuid.uuid4()), "created_at": now})
        self._patient_ids[rec.natural_key] = pid
        if rec.mrn:
            self._patient_ids.pop("mrn:" + rec.mrn.strip(), None)

    def _write_encounter(self, ctx: _Ctx, rec: EncounterRecord) -> None:
        pid = self._patient_id(ctx.conn, rec.patient_ref)
        now = _now()
        content = self._hash(rec.patient_ref, rec.status, rec.encounter_class, _iso(rec.admitted_at),
                             _iso(rec.discharged_at), rec.admission_type, rec.disposition, rec.unit, rec.bed,
                             [(s.unit, s.bed, _iso(s.start), _iso(s.end)) for s in rec.locations])
        values = {"patient_id": pid, "status": rec.status, "encounter_class": rec.encounter_class,
                  "admission_type": rec.admission_type, "admitted_at": rec.admitted_at,
                  "discharged_at": rec.discharged_at, "unit": rec.unit, "bed": rec.bed,
                  "disposition": rec.disposition, "batch_id": ctx.batch_id, "updated_at": now}
        eid, changed = self._upsert(ctx, S.table(S.Encounter), self.source_key(rec.natural_key), content, values,
                                    {"uid": str(uuid.uuid4()), "created_at": now})
        self._encounter_ids[rec.natural_key] = eid
        if changed:
            loc = S.table(S.EncounterLocation)
            ctx.conn.execute(loc.delete().where(loc.c.encounter_id == eid))
            if rec.locations:
                ctx.conn.execute(insert(loc), [
                    {"encounter_id": eid, "seq": i, "unit": s.unit[:64], "bed": s.bed, "start_at": s.start,
                     "end_at": s.end} for i, s in enumerate(rec.locations)])
            ctx.touched_patients.add(pid)

    def _write_condition(self, ctx: _Ctx, rec: ConditionRecord) -> None:
        pid = self._patient_id(ctx.conn, rec.patient_ref)
        eid = self._encounter_id(ctx.conn, rec.encounter_ref)
        content = self._hash(rec.patient_ref, rec.code_system, rec.code, rec.display, rec.encounter_ref,
                             _iso(rec.onset_at), _iso(rec.recorded_at), rec.clinical_status)
        self._upsert(ctx, S.table(S.Condition), self.source_key(rec.natural_key), content, {
            "patient_id": pid, "encounter_id": eid, "code_system": rec.code_system, "code": rec.code,
            "display_enc": self._enc(rec.display, "conditions.display"), "onset_at": rec.onset_at,
            "recorded_at": rec.recorded_at, "clinical_status": rec.clinical_status, "batch_id": ctx.batch_id})

    def _write_imaging(self, ctx: _Ctx, rec: ImagingStudyRecord) -> None:
        pid = self._patient_id(ctx.conn, rec.patient_ref, field="PatientID" if rec.source == "dicom" else "subject")
        eid = self._encounter_id(ctx.conn, rec.encounter_ref)
        series_sig = [(s.series_uid, s.modality, s.body_site, s.description, s.number, s.instance_count)
                      for s in rec.series]
        content = self._hash(rec.patient_ref, rec.study_uid, rec.accession, _iso(rec.started_at), rec.modality,
                             rec.body_site, rec.description, rec.encounter_ref, series_sig)
        sid, changed = self._upsert(ctx, S.table(S.ImagingStudy), self.source_key(rec.natural_key), content, {
            "patient_id": pid, "encounter_id": eid,
            "study_uid_enc": self._enc(rec.study_uid, "imaging_studies.study_uid"),
            "accession_enc": self._enc(rec.accession, "imaging_studies.accession"),
            "started_at": rec.started_at, "modality": rec.modality and rec.modality[:64],
            "body_site": rec.body_site and rec.body_site[:64],
            "description_enc": self._enc(rec.description, "imaging_studies.description"), "source": rec.source,
            "batch_id": ctx.batch_id}, {"uid": str(uuid.uuid4())})
        if not changed:
            return
        t = S.table(S.ImagingSeries)
        existing = {r.series_key: r.id for r in ctx.conn.execute(
            select(t.c.id, t.c.series_key).where(t.c.study_id == sid))}
        for s in rec.series:
            skey = self.keys.blind_index(s.series_uid, "imaging_series.series_uid")
            vals = {"modality": s.modality and s.modality[:16], "body_site": s.body_site and s.body_site[:64],
                    "description_enc": self._enc(s.description, "imaging_series.description"), "number": s.number,
                    "instance_count": s.instance_count}
            if skey in existing:
                ctx.conn.execute(update(t).where(t.c.id == existing[skey]).values(**vals))
            else:
                ctx.conn.execute(insert(t).values(
                    study_id=sid, series_key=skey,
                    series_uid_enc=self.keys.encrypt(s.series_uid, "imaging_series.series_uid"), **vals))

    def _write_report(self, ctx: _Ctx, rec: DiagnosticReportRecord) -> None:
        pid = self._patient_id(ctx.conn, rec.patient_ref)
        eid = self._encounter_id(ctx.conn, rec.encounter_ref)
        study_key = self.source_key(rec.imaging_study_refs[0]) if rec.imaging_study_refs else None
        codes = ",".join(rec.conclusion_codes)[:255] or None
        content = self._hash(rec.patient_ref, rec.category, rec.code, _iso(rec.issued_at), rec.conclusion, codes,
                             rec.encounter_ref, rec.imaging_study_refs)
        self._upsert(ctx, S.table(S.DiagnosticReport), self.source_key(rec.natural_key), content, {
            "patient_id": pid, "encounter_id": eid, "study_key": study_key, "category": rec.category,
            "code": rec.code, "issued_at": rec.issued_at,
            "conclusion_enc": self._enc(rec.conclusion, "diagnostic_reports.conclusion"),
            "conclusion_codes": codes, "batch_id": ctx.batch_id})

    def _write_outcome(self, ctx: _Ctx, rec: OutcomeRecord) -> None:
        pid = self._patient_id(ctx.conn, rec.patient_ref)
        eid = self._encounter_id(ctx.conn, rec.encounter_ref) if rec.encounter_ref else None
        if eid is None:
            eid = self._encounter_at(ctx.conn, pid, rec.occurred_at)
        self._store_outcome(ctx, self.source_key(rec.natural_key), pid, eid, rec.kind, rec.occurred_at)

    def _encounter_at(self, conn: Connection, patient_id: int, when: datetime) -> int | None:
        t = S.table(S.Encounter)
        row = conn.execute(select(t.c.id).where(
            t.c.patient_id == patient_id, t.c.admitted_at <= when + timedelta(hours=1),
        ).order_by(t.c.admitted_at.desc())).first()
        return int(row[0]) if row else None

    def _store_outcome(self, ctx: _Ctx, key: str, pid: int, eid: int | None, kind: str, when: datetime) -> None:
        """Outcomes are derived from input records (a death from a Patient, a transfer from an Encounter),
        so they are not counted as records of their own in the ingest totals."""
        t = S.table(S.Outcome)
        row = ctx.conn.execute(select(t.c.id, t.c.occurred_at, t.c.encounter_id)
                               .where(t.c.source_key == key)).first()
        if row is None:
            ctx.conn.execute(insert(t).values(source_key=key, patient_id=pid, encounter_id=eid, kind=kind,
                                              occurred_at=when, batch_id=ctx.batch_id))
        elif row.occurred_at != when or row.encounter_id != eid:
            ctx.conn.execute(update(t).where(t.c.id == row.id).values(occurred_at=when, encounter_id=eid))

    _handlers: ClassVar[dict[type, Any]] = {
        PatientRecord: _write_patient, EncounterRecord: _write_encounter, ConditionRecord: _write_condition,
        ImagingStudyRecord: _write_imaging, DiagnosticReportRecord: _write_report, OutcomeRecord: _write_outcome,
    }

    # -- derived outcomes ----------------------------------------------------------------------------
    def _derive_readmissions(self, ctx: _Ctx) -> None:
        """A 30-day readmission belongs to the index stay: an inpatient admission that starts within
        30 days after a discharge of the same patient."""
        t = S.table(S.Encounter)
        rows = ctx.conn.execute(
            select(t.c.id, t.c.patient_id, t.c.source_key, t.c.admitted_at, t.c.discharged_at, t.c.disposition)
            .where(t.c.patient_id.in_(ctx.touched_patients), t.c.encounter_class.in_(("IMP", "EMER", "ACUTE")))
            .order_by(t.c.patient_id, t.c.admitted_at)).all()
        by_patient: dict[int, list[Any]] = defaultdict(list)
        for r in rows:
            by_patient[r.patient_id].append(r)
        for pid, stays in by_patient.items():
            for index, nxt in itertools.pairwise(stays):
                if index.discharged_at is None or index.disposition == "exp":
                    continue
                gap = nxt.admitted_at - index.discharged_at
                if timedelta(0) <= gap <= READMISSION_WINDOW:
                    key = self.keys.blind_index(index.source_key, "readmission")
                    self._store_outcome(ctx, key, pid, index.id, "readmission", nxt.admitted_at)

    # -- observations (bulk path) --------------------------------------------------------------------
    def _write_observations(self, ctx: _Ctx, items: list[tuple[ObservationRecord, str]]) -> None:
        conn, result = ctx.conn, ctx.result
        sqlite = conn.dialect.name == "sqlite"
        # Rows are built as tuples in _OBS_COLUMNS order, times already in the driver's format:
        # this loop is the hot path of bulk ingestion.
        rows: dict[str, tuple[Any, ...]] = {}
        now = _driver_time(_now(), sqlite)
        patient_ids = self._patient_ids
        source_key = self.keys.record_key
        for rec, loc in items:
            try:
                pid = patient_ids.get(rec.patient_ref) or self._patient_id(conn, rec.patient_ref)
                eid = self._encounter_id(conn, rec.encounter_ref) if rec.encounter_ref else None
                did = self._device_id(conn, rec.device_serial) if rec.device_serial else None
            except _Unresolved as problem:
                result.rejections.append(Rejection(where=loc, reason=problem.reason, field=problem.field,
                                                   resource_type="Observation", raw=ctx.unit.raw.get(loc)))
                continue
            key = source_key(rec.natural_key)
            if key in rows:
                result.unchanged += 1  # the same reading twice in one chunk: keep the last
            rows[key] = (key, pid, eid, rec.variable, rec.code_system, rec.code, rec.value, rec.unit,
                         _driver_time(rec.effective_at, sqlite), rec.source, rec.category, did, ctx.batch_id, now)
        if not rows:
            return
        t = S.table(S.Observation)
        compared = [t.c[name] for name in _OBS_COMPARED]
        keys = list(rows)
        existing: dict[str, tuple[Any, ...]] = {}
        for i in range(0, len(keys), _IN_CHUNK):
            part = keys[i : i + _IN_CHUNK]
            for r in conn.execute(select(t.c.source_key, *compared).where(t.c.source_key.in_(part))):
                existing[r[0]] = tuple(r[1:])
        new = [r for k, r in rows.items() if k not in existing]
        changed = [r for k, r in rows.items() if k in existing and existing[k] != _compared_values(r)]
        if new:
            conn.exec_driver_sql(_insert_sql(t.name, _OBS_COLUMNS, sqlite), new)
        if changed:
            cols = _OBS_COLUMNS[1:]
            stmt = (update(t).where(t.c.source_key == bindparam("b_key"))
                    .values({c: bindparam("b_" + c) for c in cols}))
            conn.execute(stmt, [{"b_key": r[0], **{"b_" + c: _from_driver(v, sqlite)
                                                   for c, v in zip(cols, r[1:], strict=True)}} for r in changed])
        if ctx.changed is not None:
            for written in rows.values():  # re-sent readings too: see on_patients_changed
                when = _from_driver(written[8], sqlite)
                ctx.changed[written[1]] = max(when, ctx.changed.get(written[1], when))
        result.inserted += len(new)
        result.updated += len(changed)
        result.unchanged += len(rows) - len(new) - len(changed)


_OBS_COLUMNS = ("source_key", "patient_id", "encounter_id", "variable", "code_system", "code", "value", "unit",
                "effective_at", "source", "category", "device_id", "batch_id", "ingested_at")
# What makes a re-sent reading a change (batch and ingestion time do not).
_OBS_COMPARED = ("patient_id", "encounter_id", "code", "value", "unit", "effective_at", "device_id")
_COMPARED_AT = tuple(_OBS_COLUMNS.index(c) for c in _OBS_COMPARED)


def _compared_values(row: tuple[Any, ...]) -> tuple[Any, ...]:
    values = tuple(row[i] for i in _COMPARED_AT)
    when = values[5]
    if isinstance(when, str):  # SQLite text time -> the aware datetime the database returns
        values = (*values[:5], datetime.fromisoformat(when).replace(tzinfo=UTC), *values[6:])
    return values


def _insert_sql(table: str, columns: Sequence[str], sqlite: bool) -> str:
    """A plain INSERT for executemany straight to the driver. Table and column names are our own
    constants, never input."""
    mark = "?" if sqlite else "%s"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"  # noqa: S608


def _driver_time(value: datetime, sqlite: bool) -> Any:
    """A datetime as UTCDateTime stores it: naive-UTC text on SQLite, aware on PostgreSQL."""
    if sqlite:
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


def _from_driver(value: Any, sqlite: bool) -> Any:
    if sqlite and isinstance(value, str) and len(value) == 26 and value[10] == " ":
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value


@dataclass
class _Ctx:
    conn: Connection
    batch_id: int | None
    unit: UnitOfWork
    result: WriteResult
    touched_patients: set[int] = field(default_factory=set)
    changed: dict[int, datetime] | None = None  # patient -> latest new/changed reading, when someone listens


def record_kind(record: Record) -> str:
    return type(record).__name__.removesuffix("Record")
