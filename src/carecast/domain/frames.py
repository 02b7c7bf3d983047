"""ClinicalFrames: the tabular view of a set of patients that the feature builder reads.

The store fills it from the database; serving fills it from a request payload; tests fill it by
hand. Columns are fixed here so that every producer hands the builder the same shape. Times are
timezone-aware UTC (pandas datetime64[ns, UTC]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

COLUMNS: dict[str, dict[str, str]] = {
    "patients": {"patient_id": "int64", "sex": "object", "race": "object", "ethnicity": "object",
                 "birth_date": "datetime64[ns, UTC]", "state": "object"},
    "encounters": {"encounter_id": "int64", "patient_id": "int64", "admitted_at": "datetime64[ns, UTC]",
                   "discharged_at": "datetime64[ns, UTC]", "unit": "object", "admission_type": "object",
                   "encounter_class": "object", "disposition": "object"},
    "observations": {"patient_id": "int64", "encounter_id": "float64", "variable": "object", "value": "float64",
                     "effective_at": "datetime64[ns, UTC]", "source": "object"},
    "conditions": {"patient_id": "int64", "code_system": "object", "code": "object",
                   "noted_at": "datetime64[ns, UTC]"},
    "reports": {"patient_id": "int64", "issued_at": "datetime64[ns, UTC]", "category": "object",
                "conclusion_codes": "object"},
    "outcomes": {"patient_id": "int64", "encounter_id": "float64", "kind": "object",
                 "occurred_at": "datetime64[ns, UTC]"},
}


def empty(name: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS[name].items()})


def _to_utc(series: pd.Series) -> pd.Series:
    try:  # ISO 8601 text (as databases return it) parses vectorised
        return pd.to_datetime(series, utc=True, format="ISO8601")
    except (ValueError, TypeError):
        return pd.to_datetime(series, utc=True, format="mixed")


def conform(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Give a frame exactly the declared columns and dtypes (missing columns are added empty)."""
    out = pd.DataFrame(index=df.index)
    for col, dtype in COLUMNS[name].items():
        series = df[col] if col in df.columns else pd.Series(pd.NA, index=df.index)
        if dtype.startswith("datetime64"):
            out[col] = _to_utc(series) if len(series) else series.astype(dtype)
        elif dtype == "object":
            out[col] = series.astype("object").where(series.notna(), None)
        else:
            out[col] = series.astype(dtype)
    return out.reset_index(drop=True)


@dataclass
class ClinicalFrames:
    patients: pd.DataFrame = field(default_factory=lambda: empty("patients"))
    encounters: pd.DataFrame = field(default_factory=lambda: empty("encounters"))
    observations: pd.DataFrame = field(default_factory=lambda: empty("observations"))
    conditions: pd.DataFrame = field(default_factory=lambda: empty("conditions"))
    reports: pd.DataFrame = field(default_factory=lambda: empty("reports"))
    outcomes: pd.DataFrame = field(default_factory=lambda: empty("outcomes"))

    def conformed(self) -> ClinicalFrames:
        return ClinicalFrames(**{name: conform(name, getattr(self, name)) for name in COLUMNS})
