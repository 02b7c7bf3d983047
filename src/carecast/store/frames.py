"""Read the store into ClinicalFrames for feature building (training snapshots and serving).

Only what features need leaves the database: no names or contact details. Birth dates are
decrypted here (age is a feature) and never leave the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, String, cast, select

from carecast.crypto import Keyring
from carecast.domain.frames import ClinicalFrames
from carecast.store import schema as S


def _frame(engine: Engine, stmt: Any) -> pd.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(stmt)
        keys = list(result.keys())
        # Column-wise: handing pandas Row objects makes it probe each one for named-tuple fields (slow).
        columns = list(zip(*result.all(), strict=True)) or [() for _ in keys]
    return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in zip(keys, columns, strict=True)})


def load_frames(engine: Engine, keyring: Keyring, *, patient_ids: Sequence[int] | None = None,
                until: datetime | None = None) -> ClinicalFrames:
    """Everything the feature builder reads for the given patients (all when None), optionally
    only what was effective at or before `until`."""
    P, E, Ob, C, R, X = S.Patient, S.Encounter, S.Observation, S.Condition, S.DiagnosticReport, S.Outcome

    def scoped(stmt: Any, col: Any) -> Any:
        return stmt.where(col.in_(list(patient_ids))) if patient_ids is not None else stmt

    patients = _frame(engine, scoped(select(P.id.label("patient_id"), P.sex, P.race, P.ethnicity, P.state,
                                            P.birth_date_enc), P.id))
    patients["birth_date"] = [
        keyring.decrypt(tok, "patients.birth_date") if tok is not None else None for tok in patients["birth_date_enc"]
    ]
    encounters = _frame(engine, scoped(select(
        E.id.label("encounter_id"), E.patient_id, E.admitted_at, E.discharged_at, E.unit, E.admission_type,
        E.encounter_class, E.disposition), E.patient_id))
    # The bulk of the data: times come back as text and are parsed by pandas in one vectorised call,
    # rather than one Python type conversion per reading.
    obs_stmt = scoped(select(Ob.patient_id, Ob.encounter_id, Ob.variable, Ob.value,
                             cast(Ob.effective_at, String).label("effective_at"), Ob.source), Ob.patient_id)
    cond_stmt = scoped(select(C.patient_id, C.code_system, C.code, C.onset_at, C.recorded_at), C.patient_id)
    rep_stmt = scoped(select(R.patient_id, R.issued_at, R.category, R.conclusion_codes), R.patient_id)
    out_stmt = scoped(select(X.patient_id, X.encounter_id, X.kind, X.occurred_at), X.patient_id)
    if until is not None:
        obs_stmt = obs_stmt.where(Ob.effective_at <= until)
        rep_stmt = rep_stmt.where(R.issued_at <= until)
    conditions = _frame(engine, cond_stmt)
    conditions["noted_at"] = conditions["onset_at"].where(conditions["onset_at"].notna(), conditions["recorded_at"])
    frames = ClinicalFrames(
        patients=patients, encounters=encounters, observations=_frame(engine, obs_stmt), conditions=conditions,
        reports=_frame(engine, rep_stmt), outcomes=_frame(engine, out_stmt),
    )
    return frames.conformed()
