"""CSV decoding with a declared column mapping: units normalised, times made UTC, bad cells and rows
rejected by line and column without their values, good rows always kept."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carecast.domain.records import ObservationRecord, Rejection, UnitOfWork
from carecast.errors import InputError
from carecast.ingest.tabular import CsvMapping, decode_csv, load_mapping, parse_mapping

DOC = Path(__file__).resolve().parents[3] / "docs" / "csv-mapping.md"

BASE: dict[str, Any] = {
    "name": "ward7",
    "patient": {"column": "mrn", "kind": "mrn"},
    "time": {"column": "taken_at", "timezone": "Europe/London"},
    "columns": {"hr": {"variable": "heart_rate", "unit": "/min"}},
}
THREE_COLUMNS = {
    "hr": {"variable": "heart_rate", "unit": "/min"},
    "temp_f": {"variable": "temperature", "unit": "[degF]"},
    "creat": {"variable": "creatinine", "unit": "umol/L"},
}


def mapping(**changes: Any) -> CsvMapping:
    data = {**BASE, **changes}
    return parse_mapping({k: v for k, v in data.items() if v is not None}, source="test.toml")


def write_csv(tmp_path: Path, text: str, name: str = "vitals.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def decode(path: Path, m: CsvMapping | None = None, chunk_size: int = 5000) -> list[UnitOfWork]:
    return list(decode_csv(path, m or mapping(), chunk_size=chunk_size))


def records(units: Iterable[UnitOfWork]) -> list[ObservationRecord]:
    out = []
    for unit in units:
        for record in unit.records:
            assert isinstance(record, ObservationRecord)
            out.append(record)
    return out


def rejections(units: Iterable[UnitOfWork]) -> list[Rejection]:
    return [r for u in units for r in u.rejections]


def assert_no_value(rejection: Rejection, *values: str) -> None:
    text = f"{rejection.where} {rejection.reason} {rejection.field}"
    for value in values:
        assert value not in text, (value, text)


def doc_blocks(language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert match, language
    return match.group(1)


# -- the documented example ---------------------------------------------------------------------


def test_documented_example_decodes_as_documented(tmp_path: Path) -> None:
    toml = tmp_path / "ward7.toml"
    toml.write_text(doc_blocks("toml"), encoding="utf-8")
    m = load_mapping(toml)
    assert m.name == "ward7-vitals"
    units = decode(write_csv(tmp_path, doc_blocks("csv"), "ward7.csv"), m)
    assert not rejections(units)
    found = records(units)
    assert len(found) == 9
    temps = sorted(r.value for r in found if r.variable == "temperature")
    assert temps[1] == pytest.approx(38.5)
    first = next(r for r in found if r.variable == "heart_rate" and r.patient_ref == "mrn:SYN-000123")
    assert first.effective_at == datetime(2025, 2, 3, 8, 15, tzinfo=UTC)
    assert first.encounter_ref == "Encounter/enc-77"
    no_encounter = next(r for r in found if r.patient_ref == "mrn:SYN-000456")
    assert no_encounter.encounter_ref is None


# -- observations ------------------------------------------------------------------------------


def test_each_non_empty_cell_becomes_a_normalised_observation(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "mrn,taken_at,hr,temp_f,creat,comment\n"
                               "SYN-1,2025-07-01T09:30:00,72,98.6,88.4,free text ignored\n"
                               "SYN-1,2025-07-01 13:30,,100.4,,\n")
    units = decode(path, mapping(columns=THREE_COLUMNS))
    assert not rejections(units)
    found = records(units)
    assert [(r.variable, round(r.value, 3), r.unit) for r in found] == [
        ("heart_rate", 72.0, "/min"), ("temperature", 37.0, "Cel"), ("creatinine", 1.0, "mg/dL"),
        ("temperature", 38.0, "Cel"),
    ]
    hr = found[0]
    assert hr.patient_ref == "mrn:SYN-1"
    assert hr.code_system == "http://loinc.org"
    assert hr.code == "8867-4"
    assert hr.source == "csv"
    assert hr.category == "vital-signs"
    assert found[2].category == "laboratory"
    # British Summer Time: 09:30 local is 08:30 UTC
    assert hr.effective_at == datetime(2025, 7, 1, 8, 30, tzinfo=UTC)
    assert hr.natural_key == "csv/ward7/mrn:SYN-1/heart_rate/2025-07-01T08:30:00+00:00"
    assert hr.encounter_ref is None


def test_reimport_gives_the_same_natural_keys(tmp_path: Path) -> None:
    m = mapping(columns={**BASE["columns"], "temp_f": THREE_COLUMNS["temp_f"]})
    path = write_csv(tmp_path, "mrn,taken_at,hr,temp_f\nSYN-1,2025-01-01T08:00,80,99\nSYN-2,2025-01-01T08:00,81,\n")
    once = [r.natural_key for r in records(decode(path, m))]
    again = [r.natural_key for r in records(decode(path, m))]
    assert once == again
    assert len(set(once)) == len(once) == 3


def test_fhir_patient_ids_and_encounters(tmp_path: Path) -> None:
    m = mapping(patient={"column": "patient", "kind": "fhir"}, encounter={"column": "enc"})
    path = write_csv(tmp_path, "patient,enc,taken_at,hr\n"
                               "p-1,e-9,2025-01-01T08:00:00Z,80\n"
                               "Patient/p-2,,2025-01-01T08:00:00+02:00,81\n"
                               "bad id!,e-9,2025-01-01T08:00:00Z,82\n"
                               "p-3,bad enc!,2025-01-01T08:00:00Z,83\n")
    units = decode(path, m)
    found = records(units)
    assert [(r.patient_ref, r.encounter_ref) for r in found] == [
        ("Patient/p-1", "Encounter/e-9"), ("Patient/p-2", None),
    ]
    assert found[1].effective_at == datetime(2025, 1, 1, 6, 0, tzinfo=UTC)
    assert [(r.where, r.field) for r in rejections(units)] == [
        ("vitals.csv:line 4", "patient"), ("vitals.csv:line 5", "enc"),
    ]


def test_time_format_and_offsets(tmp_path: Path) -> None:
    m = mapping(time={"column": "taken_at", "format": "%d/%m/%Y %H:%M %z"})
    path = write_csv(tmp_path, "mrn,taken_at,hr\nSYN-1,03/02/2025 08:15 -0500,80\n")
    (record,) = records(decode(path, m))
    assert record.effective_at == datetime(2025, 2, 3, 13, 15, tzinfo=UTC)


def test_delimiter_and_encoding(tmp_path: Path) -> None:
    m = mapping(delimiter=";", encoding="latin-1",
                columns={"Fréquence cardiaque": {"variable": "heart_rate", "unit": "/min"}})
    path = tmp_path / "export.csv"
    path.write_bytes("mrn;taken_at;Fréquence cardiaque\nSYN-1;2025-01-01T08:00;80\n".encode("latin-1"))
    (record,) = records(decode(path, m))
    assert record.value == 80


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffmrn,taken_at,hr\r\nSYN-1,2025-01-01T08:00,80\r\n".encode())
    assert len(records(decode(path))) == 1


# -- rejections --------------------------------------------------------------------------------


def test_bad_cells_are_rejected_alone_and_good_cells_kept(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "mrn,taken_at,hr,temp_f,creat\n"
                               "SYN-LEAK-1,2025-01-01T08:00,eighty-one,99.1,abc123xyz\n"
                               "SYN-LEAK-2,2025-01-01T08:00,999,98.6,\n"
                               "SYN-LEAK-3,2025-01-01T08:00,NaN,,\n")
    units = decode(path, mapping(columns=THREE_COLUMNS))
    found = records(units)
    assert [(r.patient_ref, r.variable) for r in found] == [
        ("mrn:SYN-LEAK-1", "temperature"), ("mrn:SYN-LEAK-2", "temperature"),
    ]
    rejected = rejections(units)
    assert [(r.where, r.field) for r in rejected] == [
        ("vitals.csv:line 2", "hr"), ("vitals.csv:line 2", "creat"),
        ("vitals.csv:line 3", "hr"), ("vitals.csv:line 4", "hr"),
    ]
    assert rejected[0].reason == "expected a number"
    assert rejected[2].reason == "heart_rate outside the plausible range 20-300 /min"
    assert rejected[3].reason == "expected a finite number"
    for r in rejected:
        assert r.resource_type == "Observation"
        assert r.raw is not None and b"SYN-LEAK" in r.raw  # the row goes, encrypted, to quarantine
        assert_no_value(r, "SYN-LEAK", "eighty-one", "abc123xyz", "999", "NaN", "99.1")


@pytest.mark.parametrize(("row", "field", "reason"), [
    (",2025-01-01T08:00,80", "mrn", "patient is missing"),
    ("SYN-1,,80", "taken_at", "time is missing"),
    ("SYN-1,tomorrow at 8,80", "taken_at", "not a valid time (expected ISO 8601)"),
    ("SYN-1,2025-02-30T08:00,80", "taken_at", "not a valid time (expected ISO 8601)"),
    ("SYN-1,1850-01-01T08:00,80", "taken_at", "time outside the years 1900-2200"),
    # the clocks went forward at 01:00 on 30 March 2025 in London: 01:30 never happened
    ("SYN-1,2025-03-30T01:30,80", "taken_at",
     "local time does not exist in Europe/London (daylight-saving change)"),
    ("SYN-1,2025-01-01T08:00,80,extra", "row", "the row has a different number of cells than the header"),
    ("SYN-1,2025-01-01T08:00", "row", "the row has a different number of cells than the header"),
])
def test_bad_patient_time_or_shape_rejects_the_row(tmp_path: Path, row: str, field: str, reason: str) -> None:
    path = write_csv(tmp_path, f"mrn,taken_at,hr\nSYN-OK,2025-01-01T07:00,70\n{row}\nSYN-OK,2025-01-01T09:00,90\n")
    units = decode(path)
    assert [r.value for r in records(units)] == [70, 90]
    (rejection,) = rejections(units)
    assert (rejection.where, rejection.field, rejection.reason) == ("vitals.csv:line 3", field, reason)


def test_naive_time_without_declared_timezone_is_rejected(tmp_path: Path) -> None:
    m = mapping(time={"column": "taken_at"})
    path = write_csv(tmp_path, "mrn,taken_at,hr\nSYN-1,2025-01-01T08:00,80\nSYN-1,2025-01-01T08:00Z,81\n")
    units = decode(path, m)
    assert [r.value for r in records(units)] == [81]
    (rejection,) = rejections(units)
    assert rejection.reason == "time has no UTC offset and the mapping declares no time.timezone"


def test_undecodable_bytes_reject_only_their_cell(tmp_path: Path) -> None:
    path = tmp_path / "vitals.csv"
    path.write_bytes(b"mrn,taken_at,hr,temp_f\nSYN-1,2025-01-01T08:00,8\xff0,99\nSYN-\xfe,2025-01-01T08:00,80,99\n")
    units = decode(path, mapping(columns={**BASE["columns"], "temp_f": THREE_COLUMNS["temp_f"]}))
    assert [r.variable for r in records(units)] == ["temperature"]
    assert [(r.where, r.field) for r in rejections(units)] == [
        ("vitals.csv:line 2", "hr"), ("vitals.csv:line 3", "mrn"),
    ]


def test_malformed_quoting_rejects_the_record_and_reading_resumes(tmp_path: Path) -> None:
    path = write_csv(tmp_path, 'mrn,taken_at,hr\nSYN-1,2025-01-01T08:00,"8"0\nSYN-1,2025-01-01T09:00,90\n')
    units = decode(path)
    assert [r.value for r in records(units)] == [90]
    (rejection,) = rejections(units)
    assert (rejection.where, rejection.field) == ("vitals.csv:line 2", "row")


def test_quoted_multiline_cell_keeps_line_numbers(tmp_path: Path) -> None:
    path = write_csv(tmp_path, 'mrn,taken_at,hr,note\nSYN-1,2025-01-01T08:00,80,"two\nlines"\n'
                               "SYN-1,2025-01-01T09:00,x,\n")
    (rejection,) = rejections(decode(path))
    assert rejection.where == "vitals.csv:line 4"


def test_blank_lines_and_empty_rows_are_skipped(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "mrn,taken_at,hr\n\nSYN-1,2025-01-01T08:00,80\n,,\n   \n")
    units = decode(path)
    assert len(records(units)) == 1
    assert not rejections(units)


# -- chunks ------------------------------------------------------------------------------------


def test_rows_are_chunked_into_units(tmp_path: Path) -> None:
    rows = "".join(f"SYN-{i},2025-01-01T08:{i:02d},{60 + i}\n" for i in range(12))
    units = decode(write_csv(tmp_path, "mrn,taken_at,hr\n" + rows), chunk_size=5)
    assert [u.where for u in units] == ["vitals.csv:lines 2-6", "vitals.csv:lines 7-11", "vitals.csv:lines 12-13"]
    assert [len(u.records) for u in units] == [5, 5, 2]
    assert all(not u.atomic for u in units)


def test_header_only_file_yields_nothing(tmp_path: Path) -> None:
    assert decode(write_csv(tmp_path, "mrn,taken_at,hr\n")) == []


def test_chunk_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        decode(write_csv(tmp_path, "mrn,taken_at,hr\n"), chunk_size=0)


# -- files and headers that cannot be read -----------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty or has no header"),
    ("mrn,hr\nSYN-1,80\n", "time.column"),
    ("mrn,taken_at\nSYN-1,2025-01-01T08:00\n", "columns.hr"),
    ("mrn,taken_at,hr,hr\n", "more than once"),
])
def test_unusable_header_raises_input_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        decode(write_csv(tmp_path, text))


def test_missing_file_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot be read"):
        decode(tmp_path / "absent.csv")


# -- the mapping -------------------------------------------------------------------------------


def test_load_mapping_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "labs.toml"
    path.write_text('name = "labs"\n[patient]\ncolumn = "id"\nkind = "fhir"\n'
                    '[time]\ncolumn = "t"\nformat = "%Y%m%d%H%M"\ntimezone = "America/New_York"\n'
                    '[columns."Potassium (mEq/L)"]\nvariable = "potassium"\nunit = "mEq/L"\n', encoding="utf-8")
    m = load_mapping(path)
    assert (m.patient_column, m.patient_kind, m.time_format, m.timezone) == ("id", "fhir", "%Y%m%d%H%M",
                                                                             "America/New_York")
    (value,) = m.values
    assert (value.column, value.variable.name, value.unit) == ("Potassium (mEq/L)", "potassium", "mEq/L")
    assert m.delimiter == "," and m.encounter_column is None


@pytest.mark.parametrize(("changes", "key"), [
    ({"name": None}, "key name:"),
    ({"name": "ward 7/vitals"}, "key name:"),
    ({"colour": "blue"}, "key colour:"),
    ({"delimiter": "::"}, "key delimiter:"),
    ({"encoding": "klingon-8"}, "key encoding:"),
    ({"patient": None}, "key patient:"),
    ({"patient": {"column": "mrn", "kind": "nhs"}}, "key patient.kind:"),
    ({"patient": {"column": ""}}, "key patient.column:"),
    ({"patient": {"column": "mrn", "type": "mrn"}}, "key patient.type:"),
    ({"encounter": {}}, "key encounter.column:"),
    ({"time": {"column": "t", "timezone": "Mars/Olympus_Mons"}}, "key time.timezone:"),
    ({"time": {"column": "t", "format": "%Q"}}, "key time.format:"),
    ({"time": {"column": "t", "format": "YYYY-MM-DD"}}, "key time.format:"),
    ({"time": {"format": "%Y"}}, "key time.column:"),
    ({"columns": {}}, "key columns:"),
    ({"columns": {"hr": {"variable": "pulse", "unit": "/min"}}}, "key columns.hr.variable:"),
    ({"columns": {"hr": {"variable": "heart_rate"}}}, "key columns.hr.unit:"),
    ({"columns": {"hr": {"variable": "heart_rate", "unit": "Cel"}}}, "key columns.hr.unit:"),
    ({"columns": {"hr": {"variable": "heart_rate", "unit": "/min", "range": 5}}}, "key columns.hr.range:"),
    ({"columns": {"hr": {"variable": "heart_rate", "unit": "/min"},
                  "pulse": {"variable": "heart_rate", "unit": "/min"}}}, "key columns.pulse.variable:"),
    ({"columns": {"mrn": {"variable": "heart_rate", "unit": "/min"}}}, "key columns.mrn:"),
])
def test_bad_mapping_raises_input_error_naming_the_key(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(InputError, match=re.escape(key)) as info:
        mapping(**changes)
    assert info.value.public_message.startswith("CSV mapping test.toml: ")


def test_invalid_toml_raises_input_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n[patient\n', encoding="utf-8")
    with pytest.raises(InputError, match=re.escape("broken.toml: not valid TOML")):
        load_mapping(path)


# -- robustness --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.text(max_size=12), min_size=0, max_size=5), max_size=8))
def test_arbitrary_rows_never_crash(tmp_path: Path, rows: list[list[str]]) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["mrn", "taken_at", "hr", "temp_f", "creat"])
    writer.writerows(rows)
    path = tmp_path / "fuzz.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8", errors="surrogatepass")
    units = decode(path, mapping(columns=THREE_COLUMNS))
    for r in rejections(units):
        assert r.reason and r.field and r.where.startswith("fuzz.csv:line ")
    for record in records(units):
        assert record.effective_at.utcoffset() is not None
