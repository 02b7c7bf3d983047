"""The clinical variable catalogue: code -> variable, canonical UCUM unit, plausible range.

The catalogue is data (`data/variables.csv`, `data/units.csv`); this module only loads it and
answers questions about it. Ingestion, the simulator and the feature builder all read the same table.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

LOINC = "http://loinc.org"


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    category: str  # vital-signs | laboratory | activity
    loinc: str
    display: str
    unit: str  # canonical UCUM unit
    min_plausible: float
    max_plausible: float
    normal_low: float | None
    normal_high: float | None


@dataclass(frozen=True, slots=True)
class Conversion:
    to_unit: str
    factor: float
    offset: float

    def apply(self, value: float) -> float:
        return value * self.factor + self.offset


def _read_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("carecast.domain").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def _opt_float(raw: str) -> float | None:
    return float(raw) if raw.strip() else None


@cache
def catalogue() -> dict[str, Variable]:
    """All variables by name."""
    out: dict[str, Variable] = {}
    for row in _read_csv("variables.csv"):
        out[row["variable"]] = Variable(
            name=row["variable"], category=row["category"], loinc=row["loinc"], display=row["display"],
            unit=row["unit"], min_plausible=float(row["min_plausible"]),
            max_plausible=float(row["max_plausible"]),
            normal_low=_opt_float(row["normal_low"]), normal_high=_opt_float(row["normal_high"]),
        )
    return out


@cache
def by_loinc() -> dict[str, Variable]:
    """Variables by LOINC code. Some feeds use alternative codes for the same quantity."""
    table = {v.loinc: v for v in catalogue().values()}
    aliases = {
        "2708-6": "spo2",  # Oxygen saturation in arterial blood
        "20564-1": "spo2",  # Oxygen saturation in blood
        "8310-5": "temperature",
        "8331-1": "temperature",  # oral temperature
        "8332-9": "temperature",  # rectal temperature
        "8867-4": "heart_rate",
        "29463-7": "body_weight",
        "3141-9": "body_weight",  # body weight measured
        "2339-0": "glucose",  # glucose in blood
        "6299-2": "urea_nitrogen",  # BUN in blood
        "2160-0": "creatinine",
        "2947-0": "sodium",  # sodium in blood
        "6298-4": "potassium",  # potassium in blood
        "2519-7": "lactate",  # lactate in blood
        "41950-7": "steps",  # steps in 24 hours
        "1963-8": "bicarbonate",  # bicarbonate in serum or plasma
        "75241-0": "procalcitonin",
        "33914-3": "egfr",  # eGFR (MDRD)
        "62238-1": "egfr",  # eGFR (CKD-EPI)
        "11580-8": "acvpu",  # level of responsiveness (AVPU)
    }
    for code, name in aliases.items():
        table.setdefault(code, catalogue()[name])
    return table


@cache
def _conversions() -> dict[tuple[str, str], Conversion]:
    table: dict[tuple[str, str], Conversion] = {}
    for row in _read_csv("units.csv"):
        table[(row["scope"], row["from_unit"])] = Conversion(
            to_unit=row["to_unit"], factor=float(row["factor"]), offset=float(row["offset"])
        )
    return table


def conversion(variable: Variable, unit: str) -> Conversion | None:
    """How to bring `unit` to the variable's canonical unit, or None if it cannot be."""
    table = _conversions()
    specific = table.get((variable.name, unit))
    if specific is not None and specific.to_unit == variable.unit:
        return specific
    generic = table.get(("*", unit))
    if generic is not None and generic.to_unit == variable.unit:
        return generic
    return None


@cache
def _coded_answers() -> tuple[dict[tuple[str, str, str], float], dict[str, list[tuple[str, float]]]]:
    by_code: dict[tuple[str, str, str], float] = {}
    by_text: dict[str, list[tuple[str, float]]] = {}
    for row in _read_csv("coded_answers.csv"):
        if row["code"]:
            by_code[(row["variable"], row["system"], row["code"])] = float(row["value"])
        else:
            by_text.setdefault(row["variable"], []).append((row["text"], float(row["value"])))
    return by_code, by_text


def coded_value(variable: Variable, codings: list[tuple[str, str]], text: str | None) -> float | None:
    """The numeric value of a coded answer (e.g. ACVPU "Voice" -> 2), or None if not recognised.
    Codes are tried first, then words in the displays and text."""
    by_code, by_text = _coded_answers()
    for system, code in codings:
        hit = by_code.get((variable.name, system, code))
        if hit is not None:
            return hit
    words = " ".join(t for t in (text,) if t).lower()
    for fragment, value in by_text.get(variable.name, []):
        if fragment in words:
            return value
    return None


def has_coded_answers(variable: Variable) -> bool:
    by_code, by_text = _coded_answers()
    return variable.name in by_text or any(k[0] == variable.name for k in by_code)


# Blood pressure panels carry systolic and diastolic as components.
BLOOD_PRESSURE_PANELS = frozenset({"85354-9", "55284-4", "35094-2"})
