"""Read repository of the clinical record for the API and the UI: patients, stays, encounters, conditions,
observations and imaging, as plain dataclasses.

Identifiers stay encrypted in what these functions return (`PatientRow` keeps the ciphertexts) until a
caller allowed to see them asks `demographics()` explicitly: a view that may not show names never holds
them in clear. Stored free text of the record (condition displays, imaging descriptions) is encrypted
at rest too, and decrypted here for any caller who may read the record. Access control is not done here
(the caller checks `carecast.security.access` first).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from carecast.crypto import Keyring
from carecast.store import schema as S

_UID = re.compile(r"[A-Za-z0-9\-]{1,64}")
MAX_ENCOUNTERS = 20
MAX_CONDITIONS = 500
MAX_STUDIES = 200


@dataclass(frozen=True)
class PatientRow:
    id: int
    uid: str
    sex: str | None
    deceased_at: datetime | None
    birth_date_enc: bytes | None = field(repr=False, default=None)
    family_name_enc: bytes | None = field(repr=False, default=None)
    given_names_enc: bytes | None = field(repr=False, default=None)
    mrn_enc: bytes | None = field(repr=False, default=None)


@dataclass(frozen=True)
class Stay:
    """A patient's open encounter (an in-house patient), with the patient row."""

    patient: PatientRow
    unit: str | None
    bed: str | None
    admitted_at: datetime | None


@dataclass(frozen=True)
class EncounterRow:
    uid: str
    status: str | None
    encounter_class: str | None
    admission_type: str | None
    admitted_at: datetime | None
    discharged_at: datetime | None
    unit: str | None
    bed: str | None
    disposition: str | None


@dataclass(frozen=True)
class ConditionRow:
    system: str | None
    code: str | None
    display: str | None
    onset_at: datetime | None
    recorded_at: datetime | None
    clinical_status: str | None


@dataclass(frozen=True)
class ObservationRow:
    variable: str
    value: float
    unit: str | None
    effective_at: datetime
    category: str | None
    source: str | None
    system: str | None
    code: str | None


@dataclass(frozen=True)
class SeriesRow:
    modality: str | None
    body_site: str | None
    description: str | None
    number: int | None
    instances: int | None


@dataclass(frozen=True)
class ReportRow:
    category: str | None
    code: str | None
    issued_at: datetime | None
    finding_codes: list[str]
    conclusion_enc: bytes | None = field(repr=False, default=None)


@dataclass(frozen=True)
class StudyRow:
    uid: str
    started_at: datetime | None
    modality: str | None
    body_site: str | None
    description: str | None
    source: str | None
    series: list[SeriesRow]
    reports: list[ReportRow]


_PATIENT_COLUMNS = (S.Patient.id, S.Patient.uid, S.Patient.sex, S.Patient.deceased_at, S.Patient.birth_date_enc,
                    S.Patient.family_name_enc, S.Patient.given_names_enc, S.Patient.mrn_enc)


def _patient(r: Any) -> PatientRow:
    return PatientRow(id=int(r.id), uid=r.uid, sex=r.sex, deceased_at=r.deceased_at, birth_date_enc=r.birth_date_enc,
                      family_name_enc=r.family_name_enc, given_names_enc=r.given_names_enc, mrn_enc=r.mrn_enc)


class ClinicalReader:
    """Reads of the clinical record. Cheap to build: one per request is fine."""

    def __init__(self, engine: Engine, keyring: Keyring) -> None:
        self.engine = engine
        self.keyring = keyring

    # -- patients --------------------------------------------------------------------------------------------

    def patient(self, uid: str) -> PatientRow | None:
        """The patient with this public uid, or None (also for a uid that cannot be one)."""
        if not isinstance(uid, str) or not _UID.fullmatch(uid):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(*_PATIENT_COLUMNS).where(S.Patient.uid == uid)).first()
        return None if row is None else _patient(row)

    def current_stays(self, *, unit: str | None = None, units: Iterable[str] | None = None) -> list[Stay]:
        """The open encounter of each in-house patient (the latest admission wins), optionally only in `unit`
        and only in `units` (a care-team restriction; an empty set gives nothing)."""
        e, p = S.Encounter, S.Patient
        stmt = (select(e.patient_id, e.unit, e.bed, e.admitted_at, *_PATIENT_COLUMNS)
                .join(p, p.id == e.patient_id).where(e.discharged_at.is_(None)))
        if unit:
            stmt = stmt.where(e.unit == unit)
        if units is not None:
            stmt = stmt.where(e.unit.in_(sorted(units)))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(e.patient_id, e.admitted_at.desc(), e.id.desc())).all()
        latest: dict[int, Stay] = {}
        for r in rows:
            if int(r.patient_id) not in latest:
                latest[int(r.patient_id)] = Stay(patient=_patient(r), unit=r.unit, bed=r.bed, admitted_at=r.admitted_at)
        return list(latest.values())

    def units(self) -> list[str]:
        """The units that have in-house patients, sorted."""
        e = S.Encounter
        with self.engine.connect() as conn:
            rows = conn.execute(select(e.unit).where(e.discharged_at.is_(None), e.unit.is_not(None))
                                .distinct()).scalars().all()
        return sorted(str(u) for u in rows)

    # -- identifiers (decrypted only on request) ----------------------------------------------------------------

    def _decrypt(self, token: bytes | None, context: str) -> str | None:
        return None if token is None else self.keyring.decrypt(token, context)

    def birth_date(self, patient: PatientRow) -> date | None:
        text = self._decrypt(patient.birth_date_enc, "patients.birth_date")
        return date.fromisoformat(text[:10]) if text else None

    def age(self, patient: PatientRow, at: datetime | None = None) -> int | None:
        """Age in whole years at `at` (default: death, else now)."""
        born = self.birth_date(patient)
        if born is None:
            return None
        when = (at or patient.deceased_at or datetime.now(UTC)).date()
        return when.year - born.year - ((when.month, when.day) < (born.month, born.day))

    def demographics(self, patient: PatientRow) -> dict[str, str | None]:
        """Names, MRN and birth date in clear: only for callers with `patient:demographics`."""
        return {"family_name": self._decrypt(patient.family_name_enc, "patients.family_name"),
                "given_names": self._decrypt(patient.given_names_enc, "patients.given_names"),
                "mrn": self._decrypt(patient.mrn_enc, "patients.mrn"),
                "birth_date": self._decrypt(patient.birth_date_enc, "patients.birth_date")}

    def conclusion(self, report: ReportRow) -> str | None:
        """A report's free-text conclusion in clear (free text can carry identifiers)."""
        return self._decrypt(report.conclusion_enc, "diagnostic_reports.conclusion")

    # -- the record ----------------------------------------------------------------------------------------

    def encounters(self, patient_id: int, limit: int = MAX_ENCOUNTERS) -> list[EncounterRow]:
        """Newest admission first."""
        e = S.Encounter
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(e.uid, e.status, e.encounter_class, e.admission_type, e.admitted_at, e.discharged_at, e.unit,
                       e.bed, e.disposition).where(e.patient_id == patient_id)
                .order_by(e.admitted_at.desc(), e.id.desc()).limit(limit)).all()
        return [EncounterRow(**r._mapping) for r in rows]

    def conditions(self, patient_id: int, limit: int = MAX_CONDITIONS) -> list[ConditionRow]:
        c = S.Condition
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(c.code_system, c.code, c.display_enc, c.onset_at, c.recorded_at, c.clinical_status)
                .where(c.patient_id == patient_id).order_by(c.id).limit(limit)).all()
        return [ConditionRow(system=r.code_system, code=r.code,
                             display=self._decrypt(r.display_enc, "conditions.display"), onset_at=r.onset_at,
                             recorded_at=r.recorded_at, clinical_status=r.clinical_status) for r in rows]

    def observations(self, patient_id: int, *, variables: Iterable[str] | None = None, since: datetime | None = None,
                     until: datetime | None = None, limit: int = 1000, newest_first: bool = True
                     ) -> list[ObservationRow]:
        """A patient's observations (of some variables, within [since, until]), newest first by default."""
        o = S.Observation
        stmt = select(o.variable, o.value, o.unit, o.effective_at, o.category, o.source, o.code_system, o.code).where(
            o.patient_id == patient_id)
        if variables is not None:
            stmt = stmt.where(o.variable.in_(sorted(set(variables))))
        if since is not None:
            stmt = stmt.where(o.effective_at >= since)
        if until is not None:
            stmt = stmt.where(o.effective_at <= until)
        order = (o.effective_at.desc(), o.id.desc()) if newest_first else (o.effective_at, o.id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(*order).limit(limit)).all()
        return [ObservationRow(variable=r.variable, value=r.value, unit=r.unit, effective_at=r.effective_at,
                               category=r.category, source=r.source, system=r.code_system, code=r.code) for r in rows]

    def last_observation_times(self, patient_ids: Iterable[int], category: str | None = None) -> dict[int, datetime]:
        """The time of each patient's newest observation (of a category, e.g. vital-signs)."""
        o = S.Observation
        ids = sorted(set(patient_ids))
        if not ids:
            return {}
        stmt = select(o.patient_id, func.max(o.effective_at)).where(o.patient_id.in_(ids))
        if category is not None:
            stmt = stmt.where(o.category == category)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.group_by(o.patient_id)).all()
        return {int(pid): when for pid, when in rows if when is not None}

    def imaging(self, patient_id: int, limit: int = MAX_STUDIES) -> list[StudyRow]:
        """Imaging studies, newest first, with their series and the reports' finding codes."""
        st, se, rp = S.ImagingStudy, S.ImagingSeries, S.DiagnosticReport
        with self.engine.connect() as conn:
            studies = conn.execute(select(st.id, st.uid, st.source_key, st.started_at, st.modality, st.body_site,
                                          st.description_enc, st.source).where(st.patient_id == patient_id)
                                   .order_by(st.started_at.desc(), st.id.desc()).limit(limit)).all()
            ids = [int(s.id) for s in studies]
            series = conn.execute(select(se.study_id, se.modality, se.body_site, se.description_enc, se.number,
                                         se.instance_count).where(se.study_id.in_(ids)).order_by(se.number)).all() \
                if ids else []
            keys = [s.source_key for s in studies]
            reports = conn.execute(select(rp.study_key, rp.category, rp.code, rp.issued_at, rp.conclusion_codes,
                                          rp.conclusion_enc).where(rp.study_key.in_(keys)).order_by(rp.id)).all() \
                if keys else []
        out = []
        for s in studies:
            out.append(StudyRow(
                uid=s.uid, started_at=s.started_at, modality=s.modality, body_site=s.body_site,
                description=self._decrypt(s.description_enc, "imaging_studies.description"), source=s.source,
                series=[SeriesRow(modality=x.modality, body_site=x.body_site,
                                  description=self._decrypt(x.description_enc, "imaging_series.description"),
                                  number=x.number, instances=x.instance_count) for x in series if x.study_id == s.id],
                reports=[ReportRow(category=r.category, code=r.code, issued_at=r.issued_at,
                                   finding_codes=r.conclusion_codes.split(",") if r.conclusion_codes else [],
                                   conclusion_enc=r.conclusion_enc)
                         for r in reports if r.study_key == s.source_key]))
        return out
