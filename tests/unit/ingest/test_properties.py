"""Properties of the FHIR (Bundle, single resource and NDJSON), wearable (JSON lines) and DICOM decoders, checked
with hypothesis on arbitrary bytes and on well-formed inputs structurally mutated: nothing but the documented
rejection path (a Rejection naming the field) ever comes out of bad input, accepted records keep their invariants,
and decoding is deterministic. The invariants are those of tests/fuzz/targets.py, which the atheris harnesses share.

CARECAST_PROPERTY_EXAMPLES sets the examples per property (default 60, a few seconds in all); `make verify` runs
this file with many more (tests/verify/test_fuzz_decoders.py). Runs are derandomized: a failure is reproduced by
running the test again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from tests import factories as F
from tests.fuzz import strategies as S
from tests.fuzz.harness import CORPUS
from tests.fuzz.targets import MARKER, check_dicom, check_fhir, check_wearable

from carecast.domain import variables as V
from carecast.domain.records import ImagingStudyRecord, ObservationRecord, PatientRecord
from carecast.ingest.common import FieldProblem, as_number, parse_date, parse_datetime
from carecast.ingest.fhir import Refs, decode_bundle, decode_json_document, decode_resource

EXAMPLES = max(1, int(os.environ.get("CARECAST_PROPERTY_EXAMPLES", "60")))


def run_property(name: str, strategy: SearchStrategy[Any], check: Callable[[Any], object],
                 examples: int = EXAMPLES) -> None:
    """Check `check` on `examples` values of `strategy`, and print how many were tried."""
    tried = 0

    @hypothesis_settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.filter_too_much])
    @given(value=strategy)
    def prop(value: Any) -> None:
        nonlocal tried
        tried += 1
        check(value)

    prop()
    print(f"property {name}: {tried} examples")


# -- never a crash, invariants kept, deterministic -----------------------------------------------------------------

def test_fhir_documents_bundles_and_ndjson(tmp_path: Path) -> None:
    run_property("fhir documents", S.FHIR_DOCUMENT, lambda data: check_fhir(data, tmp_path))


def test_fhir_arbitrary_bytes(tmp_path: Path) -> None:
    run_property("fhir bytes", st.binary(max_size=1024), lambda data: check_fhir(data, tmp_path))


def test_fhir_bundles_built_in_memory() -> None:
    """Bundles as the API and CDS Hooks hand them over (already parsed; integers beyond 64 bits kept)."""
    def check(doc: Any) -> None:
        unit = decode_bundle(doc, "b.json") if isinstance(doc, dict) else None
        if unit is not None:
            assert all(r.field and r.reason and MARKER not in r.reason for r in unit.rejections)
    run_property("fhir bundles in memory", S.fhir_bundle(), check)


def test_wearable_lines(tmp_path: Path) -> None:
    run_property("wearable lines", S.READINGS, lambda data: check_wearable(data, tmp_path))


def test_wearable_arbitrary_bytes(tmp_path: Path) -> None:
    run_property("wearable bytes", st.binary(max_size=1024), lambda data: check_wearable(data, tmp_path))


def test_dicom_files(tmp_path: Path) -> None:
    run_property("dicom files", S.DICOM_FILE, lambda data: check_dicom(data, tmp_path))


# -- what is well formed is accepted, as sent ----------------------------------------------------------------------

def test_valid_readings_are_accepted_as_sent(tmp_path: Path) -> None:
    def check(reading: dict[str, Any]) -> None:
        units = check_wearable(orjson.dumps(reading) + b"\n", tmp_path)
        assert [r.reason for u in units for r in u.rejections] == []
        (record,) = [r for u in units for r in u.records]
        assert isinstance(record, ObservationRecord)
        variable = V.catalogue()[record.variable]
        assert reading["type"] in (variable.name, variable.loinc)
        assert math.isclose(record.value, reading["value"]) and record.unit == reading["unit"]
        assert record.effective_at == datetime.fromisoformat(reading["time"])
        assert record.patient_ref == reading["patient"] and record.device_serial == reading["device_id"]
    run_property("valid readings", S.valid_reading(), check)


@pytest.mark.parametrize("resource", S.fhir_resources(), ids=lambda r: f"{r['resourceType']}/{r['id']}")
def test_seed_resources_are_accepted(resource: dict[str, Any], tmp_path: Path) -> None:
    """The well-formed inputs the mutations start from decode cleanly, so mutations start from accepted data."""
    units = check_fhir(orjson.dumps(resource) + b"\n", tmp_path)
    assert [r.reason for u in units for r in u.rejections] == []
    assert all(u.records or u.skipped for u in units)


def test_seed_dicom_files_are_accepted_without_their_identifying_tags(tmp_path: Path) -> None:
    for seed in S.dicom_seeds():
        (unit,) = check_dicom(seed, tmp_path)
        assert not unit.rejections
        assert any(isinstance(r, ImagingStudyRecord) for r in unit.records)
        assert MARKER not in repr(unit.records)  # PatientName and the SR observer are never copied


# -- regressions: inputs the fuzzers found (also in tests/fuzz/corpus/) ---------------------------------------------

US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"


@pytest.mark.parametrize("sub", [5, 1.5, True])
def test_us_core_extension_whose_extension_is_not_a_list(sub: Any) -> None:
    """atheris (fuzz_fhir): `"extension": 5` inside a us-core-race extension raised TypeError."""
    (record,) = decode_resource(F.patient("p1", extension=[{"url": US_CORE_RACE, "extension": sub}]), Refs()) or []
    assert isinstance(record, PatientRecord) and record.race is None


def test_bundle_entry_nested_deeper_than_orjson_writes_is_still_decoded() -> None:
    """hypothesis (bundles): a resource nested over 254 levels (orjson reads 1,024 but writes 254) made the
    quarantine copy raise TypeError and lost the whole bundle."""
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    unit = decode_bundle(F.bundle([F.patient("p1", extension=deep), F.vital("o1", "8867-4", 80, "/min")], "batch"),
                         "b.json")
    assert not unit.rejections and len(unit.records) == 2
    bad = decode_bundle(F.bundle([{**F.vital("o2", "8867-4", 80, "/min"), "status": deep}], "batch"), "b.json")
    assert [(r.field, r.raw) for r in bad.rejections] == [("status", None)]


def test_bundle_entry_with_an_integer_beyond_64_bits_is_still_decoded() -> None:
    """hypothesis (bundles in memory): orjson cannot write integers beyond 64 bits, which the stdlib JSON reader
    produces; the quarantine copy raised TypeError and lost the whole bundle."""
    unit = decode_bundle(F.bundle([F.patient("p1", extension=[{"url": "x", "valueInteger": 2**70}])], "batch"), "b")
    assert not unit.rejections and len(unit.records) == 1


def test_integer_beyond_float_range_is_a_rejection() -> None:
    """hypothesis: the stdlib JSON reader keeps 10**400 as an int; float() of it raised OverflowError."""
    with pytest.raises(FieldProblem, match="finite"):
        as_number(10**400, "valueQuantity.value")
    (rejection,) = decode_bundle(F.bundle([F.vital("o1", "8867-4", 10**400, "/min")], "batch"), "b").rejections
    assert rejection.field == "valueQuantity.value"


@pytest.mark.parametrize("text", ["0999", "2201", "1899-12", "2250-01", "8674-06-11"])
def test_short_dates_outside_the_accepted_years_are_refused(text: str) -> None:
    """atheris (fuzz_fhir, a Condition's onsetDateTime "8674-06-11"): "YYYY", "YYYY-MM" and "YYYY-MM-DD"
    date-times skipped the 1900-2200 range check."""
    with pytest.raises(FieldProblem, match="outside the years"):
        parse_datetime(text, "effectiveDateTime")
    if not text.startswith("1899"):
        with pytest.raises(FieldProblem, match="outside the years"):
            parse_date(text, "birthDate")


def test_a_json_document_that_is_not_json_names_the_document() -> None:
    (rejection,) = decode_json_document(b"{not json", "x.json").rejections
    assert (rejection.field, rejection.reason) == ("(document)", "not valid JSON")


def test_dicom_media_storage_sop_class_read_as_a_sequence_is_not_a_crash(tmp_path: Path) -> None:
    """atheris (fuzz_dicom, make verify): a file whose MediaStorageSOPClassUID carries the VR SQ made the DICOMDIR
    check call str() on the sequence, which pydicom raised from (BytesLengthException)."""
    seed = CORPUS / "dicom" / "regress-media-sop-class-as-sequence.dcm"
    (unit,) = check_dicom(seed.read_bytes(), tmp_path)
    assert [r.field for r in unit.rejections] == ["StudyInstanceUID"]
