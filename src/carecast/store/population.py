"""Per-state counts of diagnosed patients, of those hospitalised and of those who died, for the
population-health view. Only counts leave the database: no identifier, no date, no patient row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd
from sqlalchemy import Engine, case, exists, func, or_, select

from carecast.errors import InputError
from carecast.store import schema as S

DEFAULT_CODES = ("U07.1",)  # ICD-10 COVID-19, virus identified
# Inpatient encounter classes of HL7 v3 ActCode: IMP (inpatient encounter) and its specialisations
# ACUTE and NONAC. Emergency (EMER), observation (OBSENC) and ambulatory visits are not admissions.
INPATIENT_CLASSES = ("IMP", "ACUTE", "NONAC")
_ICD10 = re.compile(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")


def normalise_codes(codes: Iterable[str]) -> tuple[str, ...]:
    """ICD-10 codes as compared: upper case, without the dot (U07.1 and U071 are the same code)."""
    out: list[str] = []
    for i, code in enumerate(codes, start=1):
        text = code.strip().upper() if isinstance(code, str) else ""
        if not _ICD10.match(text):
            raise InputError(f"diagnosis code {i} is not an ICD-10 code (like U07.1)")
        bare = text.replace(".", "")
        if bare not in out:
            out.append(bare)
    if not out:
        raise InputError("give at least one ICD-10 diagnosis code")
    return tuple(out)


def state_counts(engine: Engine, codes: Iterable[str] = DEFAULT_CODES,
                 inpatient_classes: Iterable[str] = INPATIENT_CLASSES) -> pd.DataFrame:
    """Per patient state (two-letter code, None when unknown): `cases`, the distinct patients with an
    ICD-10 Condition whose code is in `codes`; `hospitalizations`, those of them with an inpatient
    encounter; `deaths`, those of them who died (a date of death on the Patient, or a death outcome,
    e.g. a discharge disposition of expired). Sorted by state, unknown last."""
    wanted = normalise_codes(codes)
    classes = tuple(inpatient_classes)
    P, C, E, X = S.Patient, S.Condition, S.Encounter, S.Outcome
    diagnosed = select(C.patient_id).where(
        C.code_system == "icd10", func.replace(func.upper(C.code), ".", "").in_(wanted))
    hospitalised = exists().where(E.patient_id == P.id, E.encounter_class.in_(classes))
    died = or_(P.deceased_at.is_not(None), exists().where(X.patient_id == P.id, X.kind == "death"))
    stmt = (select(P.state, func.count(P.id).label("cases"),
                   func.sum(case((hospitalised, 1), else_=0)).label("hospitalizations"),
                   func.sum(case((died, 1), else_=0)).label("deaths"))
            .where(P.id.in_(diagnosed)).group_by(P.state))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    counted = sorted(((r.state, int(r.cases), int(r.hospitalizations or 0), int(r.deaths or 0)) for r in rows),
                     key=lambda r: (r[0] is None, r[0] or ""))
    return pd.DataFrame({
        "state": pd.Series([r[0] for r in counted], dtype=object),
        **{name: pd.Series([r[i] for r in counted], dtype="int64")
           for i, name in enumerate(("cases", "hospitalizations", "deaths"), start=1)},
    })
