"""Hypothesis strategies for the decoder properties: arbitrary bytes and JSON, well-formed inputs built from the
test factories, and the same inputs structurally mutated (a field replaced by any JSON value or a planted patient
value, dropped, or the line cut short). The DICOM inputs are small synthetic files written with pydicom."""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

from hypothesis import reject
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from pydicom import config as dicom_config
from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from carecast.domain import variables as V
from tests import factories as F
from tests.fuzz.targets import MARKER

# -- JSON -------------------------------------------------------------------------------------------------------

JSON_LEAF: SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=10**400)
    | st.floats() | st.text(max_size=12) | st.just(MARKER)
    | st.sampled_from(["", " ", "2026-01-05T10:00:00Z", "2026-01-05", "2026", "1899-12-31", "2026-02-30",
                      "2026-01-05T10:00:00", "Patient/p1", "Patient/", "urn:uuid:x", "mm[Hg]", "/min", "%",
                      "http://loinc.org", "8867-4", "NaN", "1e999", "-0"])
)
JSON: SearchStrategy[Any] = st.recursive(
    JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10)


def dumps(value: Any) -> bytes:
    """JSON as the stdlib writes it: NaN and Infinity become the non-JSON tokens some exporters emit."""
    return json.dumps(value).encode()


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


@st.composite
def mutated(draw: st.DrawFn, base: Any, max_changes: int = 3) -> Any:
    """`base` with up to `max_changes` of its fields replaced by any JSON value (or the planted value), dropped,
    or given a sibling."""
    out = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, max_changes))):
        paths = list(_paths(out))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = out
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "drop", "add", "wrap"]))
        if action == "replace":
            parent[path[-1]] = draw(JSON)
        elif action == "wrap":
            parent[path[-1]] = [parent[path[-1]]]
        elif action == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(JSON)
        else:
            parent.append(draw(JSON))
    return out


# -- FHIR -------------------------------------------------------------------------------------------------------

def _imaging_study() -> dict[str, Any]:
    return {"resourceType": "ImagingStudy", "id": "is1", "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:2.25.1234"}],
            "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
            "started": "2026-01-05T09:30:00+01:00", "modality": [{"code": "CT"}], "description": "CT chest",
            "series": [{"uid": "2.25.1234.1", "number": 1, "numberOfInstances": 40, "modality": {"code": "CT"},
                        "bodySite": {"code": "51185008", "display": "Chest"}, "description": "axial"}]}


def _diagnostic_report() -> dict[str, Any]:
    return {"resourceType": "DiagnosticReport", "id": "dr1", "status": "final",
            "category": [{"coding": [{"code": "RAD"}]}], "code": {"coding": [{"code": "18748-4"}]},
            "subject": {"reference": "Patient/p1"}, "issued": "2026-01-05T11:00:00Z",
            "imagingStudy": [{"reference": "ImagingStudy/is1"}], "conclusion": "No acute findings.",
            "conclusionCode": [{"coding": [{"code": "281900007"}]}]}


def _acvpu() -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "av1", "status": "final",
            "code": {"coding": [{"system": V.LOINC, "code": "11580-8"}]}, "subject": {"reference": "Patient/p1"},
            "effectiveInstant": "2026-01-05T09:00:00.123+02:00",
            "valueCodeableConcept": {"coding": [{"display": "Voice"}], "text": "responds to voice"}}


def _patient_with_extensions() -> dict[str, Any]:
    race = {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
            "extension": [{"url": "ombCategory", "valueCoding": {"display": "Asian"}},
                          {"url": "text", "valueString": "Asian"}]}
    return F.patient("p2", mrn=MARKER, extension=[race], deceasedDateTime="2026-01-09T03:00:00-05:00",
                     name=[{"use": "official", "family": MARKER, "given": ["A", "B"]}])


@cache
def fhir_resources() -> tuple[dict[str, Any], ...]:
    """Well-formed R4 resources of every type CareCast reads, and one it ignores."""
    return (
        F.patient("p1"), _patient_with_extensions(),
        F.encounter(units=(("Ward A", "2026-01-05T08:00:00Z"), ("ICU", "2026-01-06T00:00:00Z")),
                    disposition="exp", end="2026-01-07T00:00:00Z"),
        F.encounter("e2", klass="EMER"),
        F.vital("o1", "8867-4", 80, "/min"), F.vital("o2", "8310-5", 98.6, "[degF]", eid=None),
        F.vital("o3", "59408-5", 97, "%", device={"reference": "Device/SER-1"}),
        F.vital("o4", "2160-0", 1.1, "mg/dL", effectivePeriod={"start": "2026-01-05T07:00:00Z"}),
        F.blood_pressure("bp", 120, 80), F.condition("c1"), _acvpu(), _imaging_study(), _diagnostic_report(),
        {"resourceType": "Practitioner", "id": "pr1"},
    )


FHIR_RESOURCE: SearchStrategy[Any] = st.sampled_from(fhir_resources()).flatmap(mutated)
BUNDLE_TYPE = st.sampled_from(["transaction", "batch", "collection", "searchset", "document", None])


@st.composite
def fhir_bundle(draw: st.DrawFn) -> Any:
    resources = draw(st.lists(st.sampled_from(fhir_resources()), min_size=0, max_size=5))
    bundle = F.bundle(copy.deepcopy(resources), "batch", urn=draw(st.booleans()))
    bundle["type"] = draw(BUNDLE_TYPE)
    return draw(mutated(bundle, max_changes=4))


def _cut(data: bytes) -> SearchStrategy[bytes]:
    return st.integers(0, len(data)).map(lambda n: data[:n])


FHIR_LINE: SearchStrategy[bytes] = st.one_of(
    FHIR_RESOURCE.map(dumps), JSON.map(dumps), st.sampled_from(fhir_resources()).map(dumps).flatmap(_cut),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")))


def lines(line: SearchStrategy[bytes], max_size: int = 6) -> SearchStrategy[bytes]:
    ends = st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n \n"])
    return st.lists(st.tuples(line, ends), max_size=max_size).map(lambda ls: b"".join(a + b for a, b in ls))


FHIR_DOCUMENT: SearchStrategy[bytes] = st.one_of(
    fhir_bundle().map(dumps), FHIR_RESOURCE.map(dumps), lines(FHIR_LINE), fhir_bundle().map(dumps).flatmap(_cut))


# -- wearable readings ------------------------------------------------------------------------------------------

READING = {"device_id": "WX-0001", "patient": "Patient/p1", "type": "heart_rate", "value": 88, "unit": "/min",
           "time": "2026-01-05T10:01:00Z"}
AWARE_TIMES = st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 12, 30),
                           timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)),
                                                      timezone(timedelta(hours=5, minutes=30))]))


@st.composite
def valid_reading(draw: st.DrawFn) -> dict[str, Any]:
    """A reading CareCast must accept: a catalogue variable (by name or LOINC code) with a plausible value in
    its canonical unit, an aware time, a device and a patient reference."""
    variable = draw(st.sampled_from(sorted(V.catalogue().values(), key=lambda v: v.name)))
    value = draw(st.floats(variable.min_plausible, variable.max_plausible)
                 | st.integers(int(variable.min_plausible) + 1, max(int(variable.min_plausible) + 1,
                                                                    int(variable.max_plausible))))
    ident = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12).filter(
        lambda s: s.strip() == s and s.strip() != "")
    return {"device_id": draw(ident), "patient": draw(st.sampled_from(["Patient/", "mrn:"])) + draw(ident),
            "type": draw(st.sampled_from([variable.name, variable.loinc])), "value": value, "unit": variable.unit,
            "time": draw(AWARE_TIMES).isoformat()}


READING_LINE: SearchStrategy[bytes] = st.one_of(
    valid_reading().map(dumps), valid_reading().flatmap(mutated).map(dumps), mutated(READING).map(dumps),
    JSON.map(dumps), FHIR_RESOURCE.map(dumps), st.just(READING).map(dumps).flatmap(_cut),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")))
READINGS: SearchStrategy[bytes] = lines(READING_LINE, max_size=8)


# -- DICOM ------------------------------------------------------------------------------------------------------

def _dataset(transfer_syntax: str, tags: dict[str, Any], pixels: bool) -> FileDataset:
    return F.dicom_dataset(filename="fuzz.dcm", patient_id="SYN-FUZZ-1", study_uid="2.25.7", series_uid="2.25.7.1",
                           sop_uid="2.25.7.1.1", transfer_syntax=transfer_syntax, pixels=pixels,
                           **{"PatientName": MARKER, "TimezoneOffsetFromUTC": "+0100", "AccessionNumber": "ACC-FUZZ",
                              **tags})


def _sr_tags() -> dict[str, Any]:
    def item(meaning: str, text: str, relationship: str = "CONTAINS") -> Dataset:
        it = Dataset()
        it.RelationshipType = relationship
        it.ValueType = "TEXT"
        name = Dataset()
        name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", meaning
        it.ConceptNameCodeSequence = Sequence([name])
        it.TextValue = text
        return it

    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18748-4", "LN", "Imaging report"
    return {"Modality": "SR", "ValueType": "CONTAINER", "ConceptNameCodeSequence": Sequence([title]),
            "ContentDate": "20250203", "ContentTime": "091500",
            "ContentSequence": Sequence([item("Finding", "No acute findings."),
                                         item("Observer", MARKER, "HAS OBS CONTEXT")])}


def dicom_bytes(tags: dict[str, Any] | None = None, *, transfer_syntax: str = ExplicitVRLittleEndian,
                pixels: bool = True) -> bytes:
    """A small synthetic Part 10 file; invalid tag values are written as given (pydicom's checks off)."""
    before = dicom_config.settings.writing_validation_mode
    dicom_config.settings.writing_validation_mode = dicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = io.BytesIO()
            _dataset(transfer_syntax, tags or {}, pixels).save_as(out, enforce_file_format=True)
            return out.getvalue()
    finally:
        dicom_config.settings.writing_validation_mode = before


@cache
def dicom_seeds() -> tuple[bytes, ...]:
    return (dicom_bytes(), dicom_bytes(transfer_syntax=ImplicitVRLittleEndian, pixels=False),
            dicom_bytes(_sr_tags(), pixels=False))


@st.composite
def _damaged(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` with a few bytes overwritten, a slice inserted or removed, and maybe cut short."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["flip", "flip", "insert", "delete"]))
        if action == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 8))]
    return bytes(data[:draw(st.integers(0, len(data)))]) if draw(st.booleans()) else bytes(data)


_TAG_TEXT = st.one_of(st.text(max_size=20), st.sampled_from(
    ["", "20250230", "2025.02.03", "99999999", "19000101", "22001231", "250203", "240000", "235960.5",
     "0815", "+1400", "-1200", "+1500", "0100", "1.2.3", "1..2", "\x00", "a\\b", MARKER]))
_DICOM_TAGS = st.dictionaries(st.sampled_from(
    ["StudyDate", "StudyTime", "TimezoneOffsetFromUTC", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
     "SOPInstanceUID", "Modality", "AccessionNumber", "StudyDescription", "BodyPartExamined", "ContentDate"]),
    _TAG_TEXT, max_size=3)


def _odd_file(tags: dict[str, Any], sr: bool, syntax: str) -> bytes:
    try:
        return dicom_bytes({**(_sr_tags() if sr else {}), **tags}, transfer_syntax=syntax, pixels=not sr)
    except Exception:  # pydicom cannot write some values at all (e.g. a date it cannot encode): not an input
        reject()


DICOM_FILE: SearchStrategy[bytes] = st.one_of(
    st.sampled_from(dicom_seeds()),
    st.sampled_from(dicom_seeds()).flatmap(_damaged),
    st.builds(_odd_file, _DICOM_TAGS, st.booleans(), st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian])),
    st.binary(max_size=512), st.binary(max_size=512).map(lambda b: b"\0" * 128 + b"DICM" + b),
    st.binary(max_size=256).map(lambda b: b"\x08\x00" + b))

STRATEGIES: dict[str, Callable[[], SearchStrategy[bytes]]] = {
    "fhir": lambda: FHIR_DOCUMENT, "wearable": lambda: READINGS, "dicom": lambda: DICOM_FILE}
