"""What every fuzz run of a decoder checks, shared by the atheris harnesses (fuzz_*.py here), the hypothesis
properties (tests/unit/ingest/test_properties.py) and the corpus replay (tests/unit/ingest/test_fuzz_bounded.py).

`check_fhir`, `check_wearable` and `check_dicom` take the bytes of one input file and read them the way
`carecast ingest` and the API do (through a file for NDJSON, JSON lines and DICOM), twice. Any exception other
than AssertionError is a decoder crash; an AssertionError is a broken invariant:

- every input is accounted for: each NDJSON or JSON line gives records, one rejection or one skip; a DICOM
  file gives one study or one rejection;
- a rejection has a location, a field and a reason, and never repeats a value longer than 40 characters from
  the input (CareCast echoes a short unit or resource-type name, never patient data);
- an accepted record has a natural key; its patient reference is "Patient/<id>" or "mrn:<MRN>"; its times are
  timezone-aware UTC within 1900-2200 (give or take the day an offset moves them); an observation's value is
  finite, in its variable's canonical unit and plausible range, coded in LOINC; an encounter ends after it starts;
- decoding is deterministic: the same bytes give equal units of work.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from carecast.domain import variables as V
from carecast.domain.records import (
    DiagnosticReportRecord,
    EncounterRecord,
    ImagingStudyRecord,
    LocationStay,
    ObservationRecord,
    Rejection,
    UnitOfWork,
)
from carecast.ingest.dicom import decode_dicom
from carecast.ingest.fhir import decode_json_document, decode_ndjson
from carecast.ingest.wearable import decode_jsonl

# A patient-data value longer than anything CareCast echoes on purpose (resource types are cut at 40
# characters, units shown only up to 16): corpora and strategies plant it in identifiers, names and values.
MARKER = "Qx7-PATIENT-VALUE-NEVER-ECHOED-IN-A-REJECTION-9Zk"
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC) - timedelta(days=1)
LATEST = datetime(2201, 1, 1, tzinfo=UTC) + timedelta(days=1)
PATIENT_REF = re.compile(r"(Patient/|mrn:).+", re.DOTALL)
DICOM_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
SOURCES = {"fhir", "wearable", "dicom", "csv"}


def _units_summary(units: Iterable[UnitOfWork]) -> list[tuple[Any, ...]]:
    """Everything a unit of work carries, in a form that compares by value."""
    return [(u.where, u.atomic, u.skipped, tuple(u.records), tuple(u.locations),
             tuple((r.where, r.field, r.reason, r.resource_type, r.raw) for r in u.rejections),
             tuple(sorted(u.raw.items())))
            for u in units]


def check_time(value: datetime | None, what: str) -> None:
    if value is None:
        return
    assert isinstance(value, datetime), f"{what}: not a datetime"
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0), f"{what}: not aware UTC"
    assert EARLIEST <= value <= LATEST, f"{what}: outside 1900-2200"


def check_record(record: Any) -> None:
    """The invariants of one accepted record, whatever its kind."""
    kind = type(record).__name__
    assert isinstance(record.natural_key, str) and record.natural_key, f"{kind}: empty natural key"
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, datetime):
            check_time(value, f"{kind}.{f.name}")
        elif isinstance(value, date):
            assert 1880 <= value.year <= 2200, f"{kind}.{f.name}: outside 1880-2200"
        elif isinstance(value, float):
            assert math.isfinite(value), f"{kind}.{f.name}: not finite"
    ref = getattr(record, "patient_ref", None)
    if ref is not None:
        assert isinstance(ref, str) and PATIENT_REF.fullmatch(ref), f"{kind}: patient_ref is not a patient reference"
    source = getattr(record, "source", None)
    if source is not None:
        assert source in SOURCES, f"{kind}: unknown source"
    if isinstance(record, ObservationRecord):
        variable = V.catalogue().get(record.variable)
        assert variable is not None, "Observation: variable not in the catalogue"
        assert record.unit == variable.unit, "Observation: unit is not the variable's canonical unit"
        assert variable.min_plausible <= record.value <= variable.max_plausible, "Observation: implausible value"
        assert record.code_system == V.LOINC and record.code == variable.loinc, "Observation: not coded in LOINC"
        assert record.category == variable.category, "Observation: category is not the variable's"
    elif isinstance(record, EncounterRecord):
        assert record.discharged_at is None or record.discharged_at >= record.admitted_at, \
            "Encounter: discharged before admitted"
        for stay in record.locations:
            assert isinstance(stay, LocationStay) and stay.unit, "Encounter: a location without a unit"
            check_time(stay.start, "LocationStay.start")
            check_time(stay.end, "LocationStay.end")
    elif isinstance(record, ImagingStudyRecord) and record.source == "dicom":
        assert record.study_uid is not None and DICOM_UID.fullmatch(record.study_uid), "ImagingStudy: bad UID"
        assert record.patient_ref is not None and record.patient_ref.startswith("mrn:"), "ImagingStudy: no MRN"
        for series in record.series:
            assert DICOM_UID.fullmatch(series.series_uid), "ImagingSeries: bad UID"
            assert series.instance_count is not None and series.instance_count >= 1, "ImagingSeries: no instance"


def check_rejection(rejection: Rejection) -> None:
    assert isinstance(rejection.where, str) and rejection.where, "rejection without a location"
    assert isinstance(rejection.field, str) and rejection.field, f"rejection at {rejection.where} names no field"
    assert isinstance(rejection.reason, str) and rejection.reason, f"rejection at {rejection.where} has no reason"
    for text in (rejection.where, rejection.field, rejection.reason):
        assert MARKER not in text, f"rejection at {rejection.where} echoes a value from the input"


def check_units(units: list[UnitOfWork]) -> None:
    for unit in units:
        # A record without a location of its own (a DICOM study) is located by the unit's `where`.
        assert len(unit.locations) <= len(unit.records), "more locations than records"
        for record in unit.records:
            check_record(record)
        for rejection in unit.rejections:
            check_rejection(rejection)


def _lines(data: bytes) -> int:
    """Non-blank lines, as the line decoders read them (a binary file splits on LF only)."""
    return sum(1 for line in data.split(b"\n") if line.strip())


def _line_numbers(units: list[UnitOfWork]) -> tuple[set[str], list[str]]:
    accepted = {loc for u in units for loc in u.locations}
    rejected = [r.where for u in units for r in u.rejections]
    return accepted, rejected


def decode_fhir(data: bytes, scratch: Path) -> list[UnitOfWork]:
    """`data` as a .json document (a Bundle or one resource) and as bulk NDJSON."""
    path = scratch / "input.ndjson"
    path.write_bytes(data)
    return [decode_json_document(data, "input.json"), *decode_ndjson(path, chunk_size=64)]


def check_fhir(data: bytes, scratch: Path) -> list[UnitOfWork]:
    units = decode_fhir(data, scratch)
    check_units(units)
    document, lines = units[0], units[1:]
    for loc in [*document.locations, *(r.where for r in document.rejections)]:
        assert loc.startswith("input.json"), "a JSON document record located elsewhere"
    accepted, rejected = _line_numbers(lines)
    assert not accepted & set(rejected), "an NDJSON line both accepted and rejected"
    assert len(accepted) + len(rejected) + sum(u.skipped for u in lines) == _lines(data), \
        "an NDJSON line not accounted for exactly once"
    assert _units_summary(decode_fhir(data, scratch)) == _units_summary(units), "FHIR decoding is not deterministic"
    return units


def decode_wearable(data: bytes, scratch: Path) -> list[UnitOfWork]:
    path = scratch / "readings.jsonl"
    path.write_bytes(data)
    return list(decode_jsonl(path, chunk_size=64))


def check_wearable(data: bytes, scratch: Path) -> list[UnitOfWork]:
    units = decode_wearable(data, scratch)
    check_units(units)
    accepted, rejected = _line_numbers(units)
    records = [r for u in units for r in u.records]
    assert len(accepted) == len(records), "a reading line gave more than one record"
    assert all(isinstance(r, ObservationRecord) and r.source == "wearable" and r.device_serial for r in records), \
        "a reading is not a wearable observation with its device"
    assert not accepted & set(rejected), "a reading line both accepted and rejected"
    assert len(accepted) + len(rejected) == _lines(data), "a reading line not accounted for exactly once"
    assert _units_summary(decode_wearable(data, scratch)) == _units_summary(units), \
        "wearable decoding is not deterministic"
    return units


def decode_one_dicom(data: bytes, scratch: Path) -> list[UnitOfWork]:
    path = scratch / "upload.dcm"
    path.write_bytes(data)
    return list(decode_dicom([path]))


def check_dicom(data: bytes, scratch: Path) -> list[UnitOfWork]:
    units = decode_one_dicom(data, scratch)
    check_units(units)
    assert len(units) == 1, "one DICOM file gave other than one unit of work"
    unit = units[0]
    studies = [r for r in unit.records if isinstance(r, ImagingStudyRecord)]
    assert (len(unit.rejections), len(studies)) in ((1, 0), (0, 1)), "a DICOM file neither one study nor rejected"
    assert all(isinstance(r, ImagingStudyRecord | DiagnosticReportRecord) for r in unit.records)
    assert _units_summary(decode_one_dicom(data, scratch)) == _units_summary(units), \
        "DICOM decoding is not deterministic"
    return units


CHECKS = {"fhir": check_fhir, "wearable": check_wearable, "dicom": check_dicom}
