"""De-identification of a training export under HIPAA Safe Harbor (45 CFR 164.514(b)(2)): a pure
transformation of DataFrames, plus writing the result and its manifest.

What goes out is an allow-list: each table keeps only the columns named in `TABLES`, each handled by its
kind; every other column (names, MRNs, addresses, contact details, UIDs, serials, free text...) is dropped
whatever it is called. Ids become random surrogates (`secrets.token_hex`, never derived from patient data;
the mapping lives only in memory during one export). Dates become the year (the default) or are shifted by
a random per-patient offset that keeps every interval within a patient. Ages over 89 become "90+" and the
birth year of such a patient is withheld. ZIP codes keep their first three digits only where that area holds
more than 20,000 people (`data/restricted_zip3.txt`), else "000". Coded text values that look like an
identifier (an email, URL, IP address, phone, SSN or date) are suppressed, in case a source put one there.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Engine

from carecast.crypto import Keyring
from carecast.errors import InputError
from carecast.store.export import load_export_frames

DateMode = Literal["year", "shift"]
DATE_MODES: tuple[str, ...] = ("year", "shift")
MAX_AGE = 89  # ages above this are reported as "90+"
SURROGATE_BYTES = 8

# Column kinds: "patient"/"encounter"/"study" are ids (replaced by surrogates); "date" a date of the patient;
# "birth" the birth date (turned into ages and, by year, a birth year); "zip" a postal code; "state" a US
# state code; "category"/"code"/"codes" coded text, "unit" a UCUM unit, "system" a code system (all screened);
# "number" a measurement or count.
TABLES: dict[str, dict[str, str]] = {
    "patients": {"patient_id": "patient", "sex": "category", "race": "category", "ethnicity": "category",
                 "state": "state", "postal_code": "zip", "birth_date": "birth", "deceased_at": "date"},
    "encounters": {"encounter_id": "encounter", "patient_id": "patient", "status": "category",
                   "encounter_class": "category", "admission_type": "category", "admitted_at": "date",
                   "discharged_at": "date", "unit": "category", "disposition": "category"},
    "observations": {"patient_id": "patient", "encounter_id": "encounter", "variable": "category",
                     "code_system": "system", "code": "code", "value": "number", "unit": "unit",
                     "effective_at": "date", "source": "category", "category": "category"},
    "conditions": {"patient_id": "patient", "encounter_id": "encounter", "code_system": "system", "code": "code",
                   "clinical_status": "category", "onset_at": "date", "recorded_at": "date"},
    "imaging_studies": {"study_id": "study", "patient_id": "patient", "encounter_id": "encounter",
                        "started_at": "date", "modality": "codes", "body_site": "category", "source": "category",
                        "series_count": "number", "instance_count": "number"},
    "imaging_series": {"study_id": "study", "modality": "category", "body_site": "category", "number": "number",
                       "instance_count": "number"},
    "findings": {"patient_id": "patient", "encounter_id": "encounter", "study_id": "study", "category": "category",
                 "code": "code", "issued_at": "date", "conclusion_codes": "codes"},
    "outcomes": {"patient_id": "patient", "encounter_id": "encounter", "kind": "category", "occurred_at": "date"},
}
_ID_KINDS = ("patient", "encounter", "study")

_CODED = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:/()+\-]{0,63}")
_STATE = re.compile(r"[A-Z]{2}")
_UNIT = re.compile(r"[A-Za-z0-9/%\[\]{}*.^'_ \-]{1,32}")
# Code systems are public terminology URIs, not anyone's address: these are allowed beside short names.
TERMINOLOGY_URI = re.compile(r"https?://(?:loinc\.org|snomed\.info/[\w./\-]*|unitsofmeasure\.org|(?:terminology\.)?hl7\.org/"
                     r"[\w./\-]*|www\.nlm\.nih\.gov/[\w./\-]*|www\.ama-assn\.org/[\w./\-]*|www\.cms\.gov/[\w./\-]*)")
_ZIP = re.compile(r"(\d{5})(?:-?\d{4})?")
# Patterns of identifiers that have no business in a coded value.
IDENTIFIER_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"[^\s@]+@[^\s@]+\.[A-Za-z]{2,}"),
    "url": re.compile(r"(?i)\b(?:[a-z][a-z0-9+.\-]*://|www\.)\S+"),
    "ip": re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|\b[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,7}\b"),
    "ssn": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "phone": re.compile(r"\(?\b\d{3}\)?[\s.\-]\d{3,4}[\s.\-]\d{3,4}\b"),
    "date": re.compile(r"\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b"),
}


def restricted_zip3() -> frozenset[str]:
    """Three-digit ZIP prefixes of areas with 20,000 people or fewer (HHS list; source in the file)."""
    text = resources.files("carecast.security").joinpath("data/restricted_zip3.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@dataclass
class DeidResult:
    """The de-identified tables and a manifest of what was done (counts and column names, never values)."""

    tables: dict[str, pd.DataFrame]
    manifest: dict[str, Any] = field(default_factory=dict)


def _surrogates(ids: set[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    used: set[str] = set()
    for i in ids:
        token = secrets.token_hex(SURROGATE_BYTES)
        while token in used:  # pragma: no cover - 64 random bits
            token = secrets.token_hex(SURROGATE_BYTES)
        used.add(token)
        out[i] = token
    return out


def _ids(series: pd.Series) -> set[int]:
    return {int(v) for v in series.dropna()}


def _map_ids(series: pd.Series, mapping: dict[int, str]) -> pd.Series:
    return pd.Series([None if pd.isna(v) else mapping[int(v)] for v in series], index=series.index, dtype=object)


def _to_utc(series: pd.Series) -> pd.Series:
    if not len(series):
        return pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns, UTC]")
    try:
        return pd.to_datetime(series, utc=True, format="ISO8601")
    except (ValueError, TypeError):
        return pd.to_datetime(series, utc=True, format="mixed", errors="coerce")


def _screen(series: pd.Series, kind: str) -> tuple[pd.Series, int]:
    """Coded text through the screen: a value that is not code-like or looks like an identifier becomes None."""
    kept: list[Any] = []
    suppressed = 0
    for v in series:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            kept.append(None)
            continue
        text = str(v)
        parts = text.split(",") if kind == "codes" else [text]
        ok = all(_CODED.fullmatch(p) for p in parts) and not any(
            p.search(text) for p in IDENTIFIER_PATTERNS.values())
        if kind == "state":
            ok = bool(_STATE.fullmatch(text))
        elif kind == "unit":
            ok = bool(_UNIT.fullmatch(text)) and not any(p.search(text) for p in IDENTIFIER_PATTERNS.values())
        elif kind == "system" and TERMINOLOGY_URI.fullmatch(text):
            ok = True
        kept.append(text if ok else None)
        suppressed += 0 if ok else 1
    return pd.Series(kept, index=series.index, dtype=object), suppressed


def _zip3(series: pd.Series, restricted: frozenset[str]) -> tuple[pd.Series, int]:
    out: list[str | None] = []
    n_restricted = 0
    for v in series:
        m = _ZIP.fullmatch(str(v).strip()) if isinstance(v, str) else None
        if m is None:
            out.append(None)
            continue
        prefix = m.group(1)[:3]
        if prefix in restricted:
            n_restricted += 1
            prefix = "000"
        out.append(prefix)
    return pd.Series(out, index=series.index, dtype=object), n_restricted


def _age(born: pd.Timestamp, at: pd.Timestamp) -> int:
    return int(at.year - born.year - ((at.month, at.day) < (born.month, born.day)))


def age_label(age: int | None) -> str | None:
    """An age as exported: whole years up to 89, then the single category "90+"."""
    if age is None:
        return None
    return "90+" if age > MAX_AGE else str(age)


def deidentify(frames: Mapping[str, pd.DataFrame], *, dates: str = "year", max_shift_days: int = 365,
               as_of: datetime | None = None) -> DeidResult:
    """De-identify the tables of `TABLES` found in `frames` (others are refused; missing ones are skipped).

    `dates`: "year" keeps only the year of every date; "shift" moves all dates of a patient by one random
    whole number of days in [-max_shift_days, -1] or [1, max_shift_days] (intervals within a patient kept).
    `as_of`: when birth years are judged (a birth year of someone over 89 at that time is withheld).
    """
    if dates not in DATE_MODES:
        raise InputError(f"dates must be one of {', '.join(DATE_MODES)}")
    if max_shift_days < 1:
        raise InputError("max_shift_days must be at least 1")
    unknown = sorted(set(frames) - set(TABLES))
    if unknown:
        raise InputError(f"no de-identification rules for table(s) {', '.join(unknown)}")
    as_of_ts = pd.Timestamp(as_of or datetime.now(UTC))
    as_of_ts = as_of_ts.tz_localize(UTC) if as_of_ts.tzinfo is None else as_of_ts.tz_convert(UTC)

    # Surrogates for every id seen anywhere, so that references stay consistent across tables.
    seen: dict[str, set[int]] = {k: set() for k in _ID_KINDS}
    for name, df in frames.items():
        for col, kind in TABLES[name].items():
            if kind in seen and col in df.columns:
                seen[kind] |= _ids(df[col])
    maps = {kind: _surrogates(ids) for kind, ids in seen.items()}

    shifts: dict[int, int] = {}
    if dates == "shift":
        for pid in seen["patient"]:
            days = 1 + secrets.randbelow(max_shift_days)
            shifts[pid] = days if secrets.randbelow(2) else -days

    # Birth dates stay inside this function: ages are computed from them, then they are dropped.
    births: dict[int, pd.Timestamp] = {}
    if "patients" in frames and {"patient_id", "birth_date"} <= set(frames["patients"].columns):
        p = frames["patients"]
        for pid, born in zip(p["patient_id"], _to_utc(p["birth_date"]), strict=True):
            if not pd.isna(pid) and not pd.isna(born):
                births[int(pid)] = born

    restricted = restricted_zip3()
    tables: dict[str, pd.DataFrame] = {}
    report: dict[str, Any] = {}
    for name, df in frames.items():
        spec = TABLES[name]
        out = pd.DataFrame(index=df.index)
        suppressed: dict[str, int] = {}
        patient_ids = df["patient_id"] if "patient_id" in df.columns else None
        for col, kind in spec.items():
            if col not in df.columns:
                continue
            series = df[col]
            if kind in maps:
                out[col] = _map_ids(series, maps[kind])
            elif kind == "date":
                out[col] = _dates(series, dates, shifts, patient_ids, name, col)
            elif kind == "birth":
                if dates == "year":
                    out["birth_year"] = _birth_years(df["patient_id"], births, as_of_ts)
            elif kind == "zip":
                out["zip3"], suppressed["zip3_restricted"] = _zip3(series, restricted)
            elif kind == "number":
                out[col] = pd.to_numeric(series, errors="coerce")
            else:
                out[col], n = _screen(series, kind)
                if n:
                    suppressed[col] = n
        if name == "encounters" and {"patient_id", "admitted_at"} <= set(df.columns):
            out["age_at_admission"] = _ages(df["patient_id"], _to_utc(df["admitted_at"]), births)
        if name == "patients" and "patient_id" in df.columns:
            out["age"] = _ages(df["patient_id"], _latest_age_time(df, as_of_ts), births)
        out = _shuffle_by_surrogate(out)
        tables[name] = out
        report[name] = {"rows": len(out), "columns": list(out.columns),
                        "dropped_columns": sorted(c for c in df.columns if c not in spec),
                        "suppressed_values": suppressed}
    manifest = {
        "format": "carecast-deidentified-export", "version": 1,
        "method": "HIPAA Safe Harbor, 45 CFR 164.514(b)(2)",
        "dates": {"mode": dates, **({"shift_days_range": [-max_shift_days, max_shift_days],
                                     "shift": "one random offset per patient, never 0; intervals within a "
                                              "patient kept; birth dates not exported"} if dates == "shift"
                                    else {"kept": "year only"})},
        "ages": f"whole years; over {MAX_AGE} reported as 90+, and the birth year of such a patient withheld",
        "ids": f"random surrogates (secrets.token_hex({SURROGATE_BYTES})), not derived from patient data; the "
               "mapping was kept only in memory and discarded",
        "zip": "first three digits where the area holds more than 20,000 people, else 000 "
               f"({len(restricted)} restricted prefixes: HHS de-identification guidance, 2000 Census)",
        "dropped": "names, MRNs, SSNs, addresses, cities, full ZIP codes, phone and fax numbers, emails, URLs, "
                   "IP addresses, account, plan, licence and certificate numbers, device and vehicle ids, "
                   "biometric ids, photographs, study/series UIDs, accession numbers, free text",
        "tables": report,
    }
    return DeidResult(tables=tables, manifest=manifest)


def _dates(series: pd.Series, mode: str, shifts: dict[int, int], patient_ids: pd.Series | None,
           table: str, col: str) -> pd.Series:
    when = _to_utc(series)
    if mode == "year":
        return pd.Series([None if pd.isna(t) else int(t.year) for t in when], index=series.index, dtype=object)
    if patient_ids is None:
        raise InputError(f"{table}.{col}: dates cannot be shifted in a table without patient_id")
    out: list[str | None] = []
    for t, pid in zip(when, patient_ids, strict=True):
        if pd.isna(t) or pd.isna(pid):
            out.append(None)  # a date that cannot be tied to a patient's offset is not exported
        else:
            out.append((t + pd.Timedelta(days=shifts[int(pid)])).isoformat())
    return pd.Series(out, index=series.index, dtype=object)


def _birth_years(patient_ids: pd.Series, births: dict[int, pd.Timestamp], as_of: pd.Timestamp) -> pd.Series:
    out: list[int | None] = []
    for pid in patient_ids:
        born = births.get(int(pid)) if not pd.isna(pid) else None
        out.append(None if born is None or _age(born, as_of) > MAX_AGE else int(born.year))
    return pd.Series(out, index=patient_ids.index, dtype=object)


def _ages(patient_ids: pd.Series, at: pd.Series, births: dict[int, pd.Timestamp]) -> pd.Series:
    out: list[str | None] = []
    for pid, when in zip(patient_ids, at, strict=True):
        born = births.get(int(pid)) if not pd.isna(pid) else None
        out.append(None if born is None or pd.isna(when) else age_label(_age(born, when)))
    return pd.Series(out, index=patient_ids.index, dtype=object)


def _latest_age_time(patients: pd.DataFrame, as_of: pd.Timestamp) -> pd.Series:
    """A patient's age is given at death if dead, else at the export's `as_of`."""
    died = _to_utc(patients["deceased_at"]) if "deceased_at" in patients.columns else None
    values = [as_of if died is None or pd.isna(died.iloc[i]) else died.iloc[i] for i in range(len(patients))]
    return pd.Series(values, index=patients.index, dtype=object)


def _shuffle_by_surrogate(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by their random surrogates (then time), so row order says nothing of the store's ids."""
    keys = [c for c in ("patient_id", "study_id", "encounter_id") if c in df.columns]
    keys += [c for c in df.columns if c.endswith("_at") and c not in keys][:1]
    if not keys or df.empty:
        return df.reset_index(drop=True)
    return df.sort_values(keys, kind="stable", na_position="last", key=lambda s: s.astype(str)).reset_index(drop=True)


def write_export(result: DeidResult, out_dir: Path) -> list[Path]:
    """Write each table as CSV and `manifest.json` into `out_dir`, which must be new or empty."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError("the export directory must not exist yet or be empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in result.tables.items():
        path = out_dir / f"{name}.csv"
        df.to_csv(path, index=False)
        written.append(path)
        result.manifest["tables"][name]["file"] = path.name
    manifest = out_dir / "manifest.json"
    manifest.write_text(json.dumps(result.manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    written.append(manifest)
    return written


def export_deidentified(engine: Engine, keyring: Keyring, out_dir: Path, *, dates: str = "year",
                        max_shift_days: int = 365) -> DeidResult:
    """Read the store, de-identify, write CSVs and the manifest. Returns the result (tables and manifest)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError("the export directory must not exist yet or be empty")
    result = deidentify(load_export_frames(engine, keyring), dates=dates, max_shift_days=max_shift_days)
    write_export(result, out_dir)
    return result
