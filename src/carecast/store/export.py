"""Read the store for a de-identified training export (carecast.security.deid transforms what this returns).

Only the columns an export may derive something from leave the database: no names, MRNs, contact details,
UIDs, accession numbers, device serials or free text. Two encrypted fields are decrypted because the
de-identifier needs them to compute what Safe Harbor allows: the birth date (ages, the birth year) and the
postal code (its first three digits). They never leave the process in clear.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import Engine, func, select

from carecast.crypto import Keyring
from carecast.store import schema as S
from carecast.store.frames import _frame


def load_export_frames(engine: Engine, keyring: Keyring) -> dict[str, pd.DataFrame]:
    """The tables of a training export, keyed by name, with the store's integer ids (internal, replaced by
    random surrogates before anything is written)."""
    P, E, Ob, C = S.Patient, S.Encounter, S.Observation, S.Condition
    Im, Se, R, X = S.ImagingStudy, S.ImagingSeries, S.DiagnosticReport, S.Outcome
    out: dict[str, pd.DataFrame] = {}
    patients = _frame(engine, select(P.id.label("patient_id"), P.sex, P.race, P.ethnicity, P.state,
                                     P.birth_date_enc, P.postal_code_enc, P.deceased_at).order_by(P.id))
    patients["birth_date"] = _decrypt_column(keyring, patients.pop("birth_date_enc"), "patients.birth_date")
    patients["postal_code"] = _decrypt_column(keyring, patients.pop("postal_code_enc"), "patients.postal_code")
    out["patients"] = patients
    out["encounters"] = _frame(engine, select(
        E.id.label("encounter_id"), E.patient_id, E.status, E.encounter_class, E.admission_type, E.admitted_at,
        E.discharged_at, E.unit, E.disposition).order_by(E.id))
    out["observations"] = _frame(engine, select(
        Ob.patient_id, Ob.encounter_id, Ob.variable, Ob.code_system, Ob.code, Ob.value, Ob.unit, Ob.effective_at,
        Ob.source, Ob.category).order_by(Ob.id))
    out["conditions"] = _frame(engine, select(
        C.patient_id, C.encounter_id, C.code_system, C.code, C.clinical_status, C.onset_at, C.recorded_at)
        .order_by(C.id))
    series = select(Se.study_id, func.count().label("series_count"),
                    func.sum(Se.instance_count).label("instance_count")).group_by(Se.study_id).subquery()
    out["imaging_studies"] = _frame(engine, select(
        Im.id.label("study_id"), Im.patient_id, Im.encounter_id, Im.started_at, Im.modality, Im.body_site, Im.source,
        series.c.series_count, series.c.instance_count).outerjoin(series, series.c.study_id == Im.id).order_by(Im.id))
    out["imaging_series"] = _frame(engine, select(
        Se.study_id, Se.modality, Se.body_site, Se.number, Se.instance_count).order_by(Se.id))
    # Findings: a report joins its study by the study's keyed source key.
    out["findings"] = _frame(engine, select(
        R.patient_id, R.encounter_id, Im.id.label("study_id"), R.category, R.code, R.issued_at, R.conclusion_codes)
        .outerjoin(Im, Im.source_key == R.study_key).order_by(R.id))
    out["outcomes"] = _frame(engine, select(
        X.patient_id, X.encounter_id, X.kind, X.occurred_at).order_by(X.id))
    return out


def _decrypt_column(keyring: Keyring, tokens: pd.Series, context: str) -> pd.Series:
    values: list[Any] = [keyring.decrypt(t, context) if t is not None else None for t in tokens]
    return pd.Series(values, index=tokens.index, dtype=object)
