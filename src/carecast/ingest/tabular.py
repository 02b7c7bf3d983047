"""CSV exports with a declared column mapping (TOML) -> ObservationRecords.

The mapping says which column names the patient, which the time, and which catalogue variable and
unit each value column holds (see docs/csv-mapping.md). Each non-empty value cell becomes one
observation; a bad cell is rejected alone, a bad patient or time rejects its row, and good rows are
always kept. Nothing here writes anywhere.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from carecast.domain import variables as V
from carecast.domain.records import ObservationRecord, Rejection, UnitOfWork
from carecast.errors import InputError
from carecast.ingest.common import FieldProblem, as_number, observation

__all__ = ["CsvMapping", "ValueColumn", "decode_csv", "load_mapping", "parse_mapping"]

PatientKind = Literal["mrn", "fhir"]

_RESOURCE = "Observation"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FHIR_ID = re.compile(r"[A-Za-z0-9.\-]{1,64}")
_DELIMITERS = frozenset({",", ";", "\t", "|"})
_TOP_KEYS = frozenset({"name", "delimiter", "encoding", "patient", "encounter", "time", "columns"})
_PATIENT_KEYS = frozenset({"column", "kind"})
_ENCOUNTER_KEYS = frozenset({"column"})
_TIME_KEYS = frozenset({"column", "format", "timezone"})
_VALUE_KEYS = frozenset({"variable", "unit"})
_SAMPLE_TIME = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ValueColumn:
    """One value column: its header, the catalogue variable it measures and the unit it is written in."""

    column: str
    variable: V.Variable
    unit: str


@dataclass(frozen=True, slots=True)
class CsvMapping:
    """A validated column mapping. Build it with `load_mapping` or `parse_mapping`."""

    name: str  # part of every natural key: a re-import under the same name is idempotent
    patient_column: str
    patient_kind: PatientKind
    time_column: str
    values: tuple[ValueColumn, ...]
    time_format: str | None = None  # strptime format; None means ISO 8601
    timezone: str | None = None  # IANA zone for times written without an offset
    encounter_column: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8-sig"

    @property
    def zone(self) -> tzinfo | None:
        return ZoneInfo(self.timezone) if self.timezone else None


# -- the mapping -----------------------------------------------------------------------------------


def load_mapping(path: Path) -> CsvMapping:
    """Read and validate a TOML mapping; a bad mapping raises InputError naming the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise InputError(f"CSV mapping {path.name}: file cannot be read") from None
    except UnicodeDecodeError:
        raise InputError(f"CSV mapping {path.name}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        # The mapping is configuration, not patient data: the parser's position is safe to show.
        raise InputError(f"CSV mapping {path.name}: not valid TOML ({exc})") from None
    return parse_mapping(data, source=path.name)


def parse_mapping(data: dict[str, Any], source: str = "mapping") -> CsvMapping:
    """Validate a mapping already parsed from TOML (or built in code)."""

    def fail(key: str, reason: str) -> InputError:
        return InputError(f"CSV mapping {source}: key {key}: {reason}")

    def table(key: str, allowed: frozenset[str], value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise fail(key, "expected a table")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise fail(f"{key}.{unknown[0]}" if key else unknown[0], "unknown key")
        return value

    def string(key: str, value: Any, *, required: bool = True) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise fail(key, "required, a non-empty string" if value is None else "expected a non-empty string")
        return value.strip()

    top = table("", _TOP_KEYS, data)
    name = string("name", top.get("name"))
    assert name is not None
    if not _NAME.fullmatch(name):
        raise fail("name", "use letters, digits, '_', '.' or '-' (at most 64, starting with a letter or digit)")

    delimiter = top.get("delimiter", ",")
    if delimiter not in _DELIMITERS:
        raise fail("delimiter", "expected one of ',', ';', '|' or a tab")
    encoding = string("encoding", top.get("encoding", "utf-8-sig"))
    assert encoding is not None
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise fail("encoding", "unknown text encoding") from None

    patient = table("patient", _PATIENT_KEYS, top.get("patient"))
    patient_column = string("patient.column", patient.get("column"))
    kind = patient.get("kind", "mrn")
    if kind not in ("mrn", "fhir"):
        raise fail("patient.kind", "expected 'mrn' or 'fhir'")

    encounter_column = None
    if "encounter" in top:
        encounter = table("encounter", _ENCOUNTER_KEYS, top["encounter"])
        encounter_column = string("encounter.column", encounter.get("column"))

    time = table("time", _TIME_KEYS, top.get("time"))
    time_column = string("time.column", time.get("column"))
    time_format = string("time.format", time.get("format"), required=False)
    if time_format is not None:
        if "%" not in time_format:
            raise fail("time.format", "expected a strptime format such as '%Y-%m-%d %H:%M'")
        try:  # strptime, not strftime, refuses unknown directives
            datetime.strptime(_SAMPLE_TIME.strftime(time_format), time_format)
        except ValueError:
            raise fail("time.format", "not a valid strptime format") from None
    zone_name = string("time.timezone", time.get("timezone"), required=False)
    if zone_name is not None:
        try:
            ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise fail("time.timezone", "not a known IANA time zone (such as 'Europe/London')") from None

    columns = top.get("columns")
    if not isinstance(columns, dict) or not columns:
        raise fail("columns", "declare at least one value column, as [columns.<header>]")
    catalogue = V.catalogue()
    values: list[ValueColumn] = []
    seen_variables: dict[str, str] = {}
    for column, spec in columns.items():
        key = f"columns.{column}"
        if not column.strip():
            raise fail(key, "a column name must not be empty")
        spec = table(key, _VALUE_KEYS, spec)
        variable_name = string(f"{key}.variable", spec.get("variable"))
        assert variable_name is not None
        variable = catalogue.get(variable_name)
        if variable is None:
            raise fail(f"{key}.variable", "not a variable of the catalogue")
        if variable_name in seen_variables:
            # The natural key names the variable, not the column: two columns for one variable
            # would give two different values the same identity.
            raise fail(f"{key}.variable", f"already mapped by columns.{seen_variables[variable_name]}")
        seen_variables[variable_name] = column
        unit = string(f"{key}.unit", spec.get("unit"))
        assert unit is not None
        if V.conversion(variable, unit) is None:
            raise fail(f"{key}.unit", f"cannot be converted to {variable.unit} for {variable.name}")
        values.append(ValueColumn(column=column, variable=variable, unit=unit))

    assert patient_column is not None and time_column is not None
    special = [patient_column, time_column] + ([encounter_column] if encounter_column else [])
    if len(set(special)) != len(special):
        raise fail("time.column", "patient, encounter and time must be different columns")
    for value in values:
        if value.column in special:
            raise fail(f"columns.{value.column}", "is already the patient, encounter or time column")

    return CsvMapping(
        name=name, patient_column=patient_column, patient_kind=kind, time_column=time_column,
        values=tuple(values), time_format=time_format, timezone=zone_name,
        encounter_column=encounter_column, delimiter=delimiter, encoding=encoding,
    )


# -- the data --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where each mapped column sits in the header."""

    patient: int
    time: int
    encounter: int | None
    values: tuple[tuple[int, ValueColumn], ...]
    width: int


def decode_csv(path: Path, mapping: CsvMapping, chunk_size: int = 5000) -> Iterator[UnitOfWork]:
    """Decode a CSV file into units of at most `chunk_size` rows each.

    A file that cannot be read, or whose header lacks a mapped column, raises InputError before
    anything is yielded. Within the data, problems are rejections located as "file.csv:line N".
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    try:
        # surrogateescape keeps undecodable bytes so that only the cells holding them are refused.
        fh = path.open("r", encoding=mapping.encoding, errors="surrogateescape", newline="")
    except OSError:
        raise InputError(f"{path.name}: file cannot be read") from None
    with fh:
        reader = csv.reader(fh, delimiter=mapping.delimiter, strict=True)
        try:
            header = next(reader, None)
        except (csv.Error, OSError):
            raise InputError(f"{path.name}: the header line cannot be read as CSV") from None
        layout = _layout(header, mapping, path.name)
        zone = mapping.zone
        unit = UnitOfWork(where=path.name)
        first_line = last_line = 1
        rows = 0
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader, None)
            except csv.Error:
                # The reader resynchronises on the next line; an unclosed quote swallows the rest.
                unit.rejections.append(Rejection(
                    where=f"{path.name}:line {start}", field="row", resource_type=_RESOURCE,
                    reason="malformed CSV quoting or an oversized cell; the record was not read"))
            else:
                if row is None:
                    break
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                _decode_row(row, reader.line_num, layout, mapping, zone, path.name, unit)
            if rows == 0:
                first_line = start
            last_line = reader.line_num
            rows += 1
            if rows == chunk_size:
                unit.where = _span(path.name, first_line, last_line)
                yield unit
                unit = UnitOfWork(where=path.name)
                rows = 0
        if rows or unit.rejections:
            unit.where = _span(path.name, first_line, last_line)
            yield unit


def _span(name: str, first: int, last: int) -> str:
    return f"{name}:line {first}" if first == last else f"{name}:lines {first}-{last}"


def _layout(header: list[str] | None, mapping: CsvMapping, name: str) -> _Layout:
    if not header or not any(h.strip() for h in header):
        raise InputError(f"{name}: the file is empty or has no header line")
    names = [h.strip() for h in header]
    duplicates = sorted({h for h in names if names.count(h) > 1 and h})
    if duplicates:
        raise InputError(f"{name}: the header names a column more than once ({duplicates[0]!r})")
    position = {h: i for i, h in enumerate(names)}

    def find(column: str, key: str) -> int:
        if column not in position:
            raise InputError(f"{name}: column {column!r} (mapping key {key}) is not in the header")
        return position[column]

    encounter = find(mapping.encounter_column, "encounter.column") if mapping.encounter_column else None
    return _Layout(
        patient=find(mapping.patient_column, "patient.column"),
        time=find(mapping.time_column, "time.column"),
        encounter=encounter,
        values=tuple((find(v.column, f"columns.{v.column}"), v) for v in mapping.values),
        width=len(header),
    )


def _decode_row(row: list[str], line: int, layout: _Layout, mapping: CsvMapping, zone: tzinfo | None,
                name: str, unit: UnitOfWork) -> None:
    where = f"{name}:line {line}"
    raw = _raw(row, mapping)

    def reject(problem: FieldProblem) -> None:
        unit.rejections.append(problem.rejection(where, _RESOURCE, raw))

    if len(row) != layout.width:
        # A missing or extra delimiter shifts cells under the wrong headers: nothing in the row is safe.
        reject(FieldProblem("row", "the row has a different number of cells than the header"))
        return
    try:
        patient_ref = _patient_ref(row[layout.patient], mapping)
        effective_at = _time(row[layout.time], mapping, zone)
        encounter_ref = _encounter_ref(row[layout.encounter], mapping) if layout.encounter is not None else None
    except FieldProblem as problem:
        reject(problem)
        return
    for index, column in layout.values:
        cell = row[index].strip()
        if not cell:
            continue  # not measured
        try:
            _check_text(cell, column.column)
            record: ObservationRecord = observation(
                natural_key=f"csv/{mapping.name}/{patient_ref}/{column.variable.name}/{effective_at.isoformat()}",
                patient_ref=patient_ref, variable=column.variable, code_system=V.LOINC,
                code=column.variable.loinc, value=as_number(cell, column.column), unit=column.unit,
                effective_at=effective_at, source="csv", encounter_ref=encounter_ref,
                value_path=column.column, unit_path=f"columns.{column.column}.unit",
            )
        except FieldProblem as problem:
            reject(problem)
            continue
        unit.records.append(record)


def _raw(row: list[str], mapping: CsvMapping) -> bytes:
    """The row as CSV text, for the quarantine (stored encrypted)."""
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=mapping.delimiter, lineterminator="\n").writerow(row)
    return buffer.getvalue().encode("utf-8", errors="surrogateescape")


def _check_text(cell: str, column: str) -> None:
    if any("\udc80" <= ch <= "\udcff" for ch in cell):
        raise FieldProblem(column, "not valid text in the mapping's encoding")
    if not cell.isprintable():
        raise FieldProblem(column, "contains control characters")


def _patient_ref(cell: str, mapping: CsvMapping) -> str:
    column = mapping.patient_column
    value = cell.strip()
    if not value:
        raise FieldProblem(column, "patient is missing")
    _check_text(value, column)
    if mapping.patient_kind == "fhir":
        value = value.removeprefix("Patient/")
        if not _FHIR_ID.fullmatch(value):
            raise FieldProblem(column, "not a valid FHIR Patient id")
        return f"Patient/{value}"
    if len(value) > 64:
        raise FieldProblem(column, "MRN longer than 64 characters")
    return f"mrn:{value}"


def _encounter_ref(cell: str, mapping: CsvMapping) -> str | None:
    column = mapping.encounter_column or "encounter"
    value = cell.strip()
    if not value:
        return None  # an observation outside an encounter is allowed
    _check_text(value, column)
    if not _FHIR_ID.fullmatch(value):
        raise FieldProblem(column, "not a valid FHIR Encounter id")
    return f"Encounter/{value}"


def _time(cell: str, mapping: CsvMapping, zone: tzinfo | None) -> datetime:
    column = mapping.time_column
    text = cell.strip()
    if not text:
        raise FieldProblem(column, "time is missing")
    _check_text(text, column)
    try:
        fmt = mapping.time_format
        parsed = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
    except ValueError:
        expected = "the mapping's time.format" if mapping.time_format else "ISO 8601"
        raise FieldProblem(column, f"not a valid time (expected {expected})") from None
    if parsed.tzinfo is None:
        if zone is None:
            raise FieldProblem(column, "time has no UTC offset and the mapping declares no time.timezone")
        local = parsed.replace(tzinfo=zone)
        # A wall-clock time skipped by a daylight-saving change does not exist; refuse to guess.
        if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != parsed:
            raise FieldProblem(column, f"local time does not exist in {mapping.timezone} "
                                       "(daylight-saving change)")
        parsed = local
    if not 1900 <= parsed.year <= 2200:
        raise FieldProblem(column, "time outside the years 1900-2200")
    return parsed.astimezone(UTC)
