"""Wearable and bedside-sensor readings: newline-delimited JSON, one reading per line.

    {"device_id": "WX-0001", "patient": "Patient/123", "type": "heart_rate",
     "value": 88, "unit": "/min", "time": "2026-01-05T10:01:00Z"}

`patient` is a FHIR reference ("Patient/<id>") or "mrn:<MRN>". `type` is a catalogue variable name
(heart_rate, spo2, respiratory_rate, steps, ...) or a LOINC code. A reading is identified by
device, type and time: the same reading sent twice is stored once, and a late or out-of-order
reading is stored like any other. See docs/wearable-format.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from carecast.domain import variables as V
from carecast.domain.records import ObservationRecord, UnitOfWork
from carecast.ingest.common import FieldProblem, as_dict, as_number, as_str, observation, parse_datetime, require


def _patient_ref(value: Any) -> str:
    text = as_str(value, "patient")
    if text.startswith("Patient/") and len(text) > len("Patient/"):
        return text
    if text.startswith("mrn:") and len(text) > 4:
        return text
    raise FieldProblem("patient", 'must be "Patient/<id>" or "mrn:<MRN>"')


def decode_reading(obj: Any) -> ObservationRecord:
    """One reading -> an observation in canonical units; raises FieldProblem."""
    reading = as_dict(obj, "(reading)")
    device = as_str(require(reading, "device_id", "device_id"), "device_id")
    patient = _patient_ref(require(reading, "patient", "patient"))
    kind = as_str(require(reading, "type", "type"), "type")
    variable = V.catalogue().get(kind) or V.by_loinc().get(kind)
    if variable is None:
        raise FieldProblem("type", "not a known variable name or LOINC code")
    value = as_number(require(reading, "value", "value"), "value")
    unit = reading.get("unit")
    when = parse_datetime(require(reading, "time", "time"), "time")
    return observation(
        natural_key=f"wearable/{device}/{variable.name}/{when.isoformat()}", patient_ref=patient,
        variable=variable, code_system=V.LOINC, code=variable.loinc, value=value,
        unit=unit if isinstance(unit, str) else None, effective_at=when, source="wearable", device_serial=device)


def decode_jsonl(path: Path, chunk_size: int = 5000, label: str | None = None) -> Iterator[UnitOfWork]:
    """Readings from a JSONL file, in chunks."""
    name = label or path.name
    unit = UnitOfWork(where=name)
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            loc = f"{name}:line {lineno}"
            try:
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise FieldProblem("(line)", "not valid JSON") from None
                rec = decode_reading(obj)
            except FieldProblem as problem:
                unit.rejections.append(problem.rejection(loc, "Reading", line.rstrip(b"\n")))
            else:
                unit.records.append(rec)
                unit.locations.append(loc)
                unit.raw[loc] = line  # kept (encrypted) only if the reading is quarantined later
            if len(unit.records) + len(unit.rejections) >= chunk_size:
                yield unit
                unit = UnitOfWork(where=name)
    if unit.records or unit.rejections:
        yield unit
