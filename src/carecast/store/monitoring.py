"""Read-side queries for model monitoring: where the data ends, who was in hospital in a window, stored
predictions with what their outcomes need (stay times, demographics), the outcomes, and CDS card feedback.

Birth dates are decrypted here (subgroups need the age) and never leave the process; no other identifier
is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, String, and_, cast, func, or_, select

from carecast.crypto import Keyring
from carecast.store import schema as S
from carecast.store.feedback_rates import CDS, feedback_counts

PREDICTION_COLUMNS = ("prediction_id", "patient_id", "encounter_id", "model_version", "risk", "data_time", "shadow",
                      "admitted_at", "discharged_at", "disposition", "sex", "race", "ethnicity", "birth_date")
OUTCOME_COLUMNS = ("patient_id", "encounter_id", "kind", "occurred_at")


def _utc_max(engine: Engine, *columns: Any) -> datetime | None:
    with engine.connect() as conn:
        values = [conn.execute(select(func.max(c))).scalar_one_or_none() for c in columns]
    found = [pd.Timestamp(v) for v in values if v is not None]
    stamps = [s.tz_localize("UTC") if s.tzinfo is None else s.tz_convert("UTC") for s in found]
    return max(stamps).to_pydatetime() if stamps else None


def data_end(engine: Engine) -> datetime | None:
    """The last moment the stored data describe (latest observation, admission, discharge or outcome),
    the same definition the outcome tasks use for censoring; None for an empty store."""
    return _utc_max(engine, S.Observation.effective_at, S.Encounter.admitted_at, S.Encounter.discharged_at,
                    S.Outcome.occurred_at)


def patients_in_hospital(engine: Engine, start: datetime, end: datetime) -> list[int]:
    """Ids of the patients with an encounter overlapping (start, end]: admitted by `end`, not discharged
    by `start`."""
    E = S.Encounter
    stmt = (select(E.patient_id).distinct()
            .where(E.admitted_at <= end, or_(E.discharged_at.is_(None), E.discharged_at > start))
            .order_by(E.patient_id))
    with engine.connect() as conn:
        return [int(p) for p in conn.execute(stmt).scalars()]


def _frame(rows: Sequence[Any], columns: tuple[str, ...]) -> pd.DataFrame:
    data = list(zip(*rows, strict=True)) or [() for _ in columns]
    return pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in zip(columns, data, strict=True)})


def _utc_column(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True, format="mixed") if len(values) else values.astype("datetime64[ns, UTC]")


def predictions_with_context(engine: Engine, keyring: Keyring, task: str, *, since: datetime | None = None,
                             until: datetime | None = None) -> pd.DataFrame:
    """Stored predictions of `task` with data times in [since, until], with the stay they were made in
    (admission, discharge, disposition) and the patient's sex, race, ethnicity and birth date.
    Columns PREDICTION_COLUMNS, oldest first; shadow (challenger) rows included and marked."""
    P, E, Pt = S.Prediction, S.Encounter, S.Patient
    stmt = (select(P.id, P.patient_id, P.encounter_id, P.model_version, P.risk, P.data_time, P.shadow,
                   E.admitted_at, E.discharged_at, E.disposition, Pt.sex, Pt.race, Pt.ethnicity, Pt.birth_date_enc)
            .join_from(P, Pt, Pt.id == P.patient_id)
            .outerjoin(E, E.id == P.encounter_id)
            .where(P.task == task))
    if since is not None:
        stmt = stmt.where(P.data_time >= since)
    if until is not None:
        stmt = stmt.where(P.data_time <= until)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(P.data_time, P.id)).all()
    out = _frame(rows, PREDICTION_COLUMNS)
    births: dict[Any, Any] = {}
    for token in out["birth_date"]:
        if token is not None and token not in births:
            births[token] = keyring.decrypt(token, "patients.birth_date")
    out["birth_date"] = _utc_column(pd.Series([births.get(t) if t is not None else None for t in out["birth_date"]],
                                              dtype=object))
    for col in ("data_time", "admitted_at", "discharged_at"):
        out[col] = _utc_column(out[col])
    out["risk"] = out["risk"].astype("float64")
    out["shadow"] = out["shadow"].astype(bool)
    for col in ("prediction_id", "patient_id"):
        out[col] = out[col].astype("int64")
    out["encounter_id"] = out["encounter_id"].astype("float64")
    return out


def outcomes_of_predicted_encounters(engine: Engine, task: str, *, since: datetime | None = None,
                                     until: datetime | None = None) -> pd.DataFrame:
    """Every stored outcome (death, ICU transfer, readmission) of the encounters that `task` predictions in
    [since, until] were made in. Columns OUTCOME_COLUMNS."""
    P, X = S.Prediction, S.Outcome
    conditions = [P.task == task]
    if since is not None:
        conditions.append(P.data_time >= since)
    if until is not None:
        conditions.append(P.data_time <= until)
    encounters = select(P.encounter_id).where(and_(*conditions)).distinct()
    stmt = (select(X.patient_id, X.encounter_id, X.kind, cast(X.occurred_at, String))
            .where(X.encounter_id.in_(encounters)).order_by(X.occurred_at, X.id))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    out = _frame(rows, OUTCOME_COLUMNS)
    out["occurred_at"] = _utc_column(out["occurred_at"])
    out["encounter_id"] = out["encounter_id"].astype("float64")
    out["patient_id"] = out["patient_id"].astype("int64")
    return out


def card_feedback_counts(engine: Engine, *, since: datetime | None = None,
                         until: datetime | None = None) -> dict[str, int]:
    """CDS Hooks card outcomes (accepted, overridden) recorded in [since, until], by outcome: the EHR's
    channel of `feedback_rates.feedback_counts` (the web UI's acknowledgements share the table, not the count)."""
    out: dict[str, int] = {}
    for f in feedback_counts(engine, since=since, until=until):
        if f.channel == CDS:
            out[f.outcome] = out.get(f.outcome, 0) + f.cards
    return out
