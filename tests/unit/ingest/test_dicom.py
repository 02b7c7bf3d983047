"""DICOM decoding: studies grouped by StudyInstanceUID, SR text as reports, identifying tags never copied,
and every bad file a rejection naming a tag but no value, never a crash."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from tests import factories as F

from carecast.domain.records import (
    DiagnosticReportRecord,
    ImagingStudyRecord,
    Rejection,
    UnitOfWork,
)
from carecast.ingest.dicom import decode_dicom, study_key

PYDICOM_DATA = Path(pydicom.data.__file__).parent
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

# Values that must never leave a file: identifying tags of the synthetic instances below.
SECRETS = {
    "PatientName": "Synthetic^Leakington",
    "PatientBirthDate": "19470203",
    "PatientAddress": "12 Nowhere Lane, Testville",
    "OtherPatientIDs": "OTHER-ID-778899",
    "InstitutionName": "Synthetic General Hospital",
    "ReferringPhysicianName": "Referrer^Quill",
}


def shipped_files() -> list[Path]:
    """Every file pydicom ships (test, charset and palette files, and the odd README or .py)."""
    return sorted(p for p in PYDICOM_DATA.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def shipped(name: str) -> Path:
    found = get_testdata_file(name, download=False)
    assert isinstance(found, str), name
    return Path(found)


def rejections(units: Iterable[UnitOfWork]) -> list[Rejection]:
    return [r for u in units for r in u.rejections]


def studies(units: Iterable[UnitOfWork]) -> list[ImagingStudyRecord]:
    return [r for u in units for r in u.records if isinstance(r, ImagingStudyRecord)]


def reports(units: Iterable[UnitOfWork]) -> list[DiagnosticReportRecord]:
    return [r for u in units for r in u.records if isinstance(r, DiagnosticReportRecord)]


def write_dicom(path: Path, *, patient_id: str | None = "SYN-0001", study_uid: str | None = "2.25.100",
                series_uid: str = "2.25.100.1", sop_uid: str = "2.25.100.1.1", modality: str = "CT",
                transfer_syntax: str = ExplicitVRLittleEndian, pixels: bool = True,
                **tags: Any) -> Path:
    """A small synthetic DICOM Part 10 file carrying identifying tags that must not be copied.
    Invalid values are written on purpose, so pydicom's validation warnings are silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _write_dicom(path, patient_id, study_uid, series_uid, sop_uid, modality, transfer_syntax,
                            pixels, tags)


def _write_dicom(path: Path, patient_id: str | None, study_uid: str | None, series_uid: str, sop_uid: str,
                 modality: str, transfer_syntax: str, pixels: bool, tags: dict[str, Any]) -> Path:
    ds = F.dicom_dataset(filename=str(path), patient_id=patient_id, study_uid=study_uid, series_uid=series_uid,
                         sop_uid=sop_uid, modality=modality, transfer_syntax=transfer_syntax, pixels=pixels,
                         **{"AccessionNumber": "ACC-SYN-1", "StudyDescription": "CT chest",
                            "SeriesDescription": "Axial 5mm", **SECRETS, **tags})
    ds.save_as(path, enforce_file_format=True)
    return path


def content_item(value_type: str, meaning: str, relationship: str = "CONTAINS", **values: Any) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", meaning
    item.ConceptNameCodeSequence = Sequence([name])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def write_sr(path: Path, **kwargs: Any) -> Path:
    findings = content_item("CONTAINER", "Findings", ContinuityOfContent="SEPARATE")
    findings.ContentSequence = Sequence([
        content_item("TEXT", "Finding", TextValue="Small left pleural effusion."),
        content_item("NUM", "Diameter"),
    ])
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18748-4", "LN", "Imaging report"
    return write_dicom(
        path, modality="SR", pixels=False, SOPClassUID=BASIC_TEXT_SR, series_uid="2.25.100.9",
        sop_uid="2.25.100.9.1", ValueType="CONTAINER", ContentDate="20250203", ContentTime="101500",
        ConceptNameCodeSequence=Sequence([title]),
        ContentSequence=Sequence([
            # Observation context names people and places: never copied.
            content_item("PNAME", "Recording Observer's Name", "HAS OBS CONTEXT", PersonName="Observer^Secret"),
            content_item("TEXT", "Recording Observer's Organization Name", "HAS OBS CONTEXT",
                         TextValue=SECRETS["InstitutionName"]),
            findings,
            content_item("TEXT", "Impression", TextValue="No consolidation.\r\nFollow up in 6 weeks."),
        ]),
        **kwargs,
    )


def assert_no_value(rejection: Rejection, *values: str) -> None:
    text = f"{rejection.where} {rejection.reason} {rejection.field}"
    for value in values:
        assert value not in text


# -- every file pydicom ships -------------------------------------------------------------------


def test_every_file_pydicom_ships_decodes_without_an_exception() -> None:
    files = shipped_files()
    assert len(files) > 150  # the offline test files are installed
    units = list(decode_dicom(files, relative_to=PYDICOM_DATA))

    rejected = rejections(units)
    assert rejected, "non-DICOM files (README, .py, .json) must be rejected"
    for r in rejected:
        assert r.reason and r.field, r
        assert r.where and not r.where.startswith("/")
        assert r.raw is None  # a DICOM file is never copied to the quarantine: it holds pixels
    # every file is accounted for: rejected, or counted in a study's unit
    accepted = sum(int(u.where.partition(" (+")[2].split()[0]) + 1 if "(+" in u.where else 1
                   for u in units if u.records)
    assert accepted + len(rejected) == len(files)

    found = studies(units)
    assert len(found) > 20
    for study in found:
        assert study.natural_key == study_key(study.study_uid or "")
        assert study.source == "dicom"
        assert study.patient_ref and study.patient_ref.startswith("mrn:")
        assert study.series and all(s.instance_count and s.instance_count >= 1 for s in study.series)
        assert study.started_at is None or study.started_at.utcoffset() is not None
    # rejections for whole-file problems are named by part of the file, the rest by tag keyword
    assert {r.field for r in rejected} <= {
        "FileMetaInformation", "Dataset", "PixelData", "StudyInstanceUID", "PatientID", "SeriesInstanceUID",
        "SOPInstanceUID", "MediaStorageSOPClassUID", "StudyDate", "StudyTime", "TimezoneOffsetFromUTC",
    }


def test_shipped_files_never_leak_identifying_tags_into_records() -> None:
    files = [p for p in shipped_files() if p.suffix in ("", ".dcm")]
    secrets: set[str] = set()
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                mrn = str(ds.get("PatientID") or "").strip()
                for keyword in ("PatientName", "ReferringPhysicianName", "InstitutionName", "PatientAddress"):
                    value = str(ds.get(keyword) or "").strip()
                    # some test files use the MRN as the name; the MRN itself is meant to travel
                    if len(value) >= 4 and any(c.isalpha() for c in value) and value != mrn:
                        secrets.add(value)
        except Exception:
            continue
    assert secrets
    units = list(decode_dicom(files, relative_to=PYDICOM_DATA))
    text = repr([u.records for u in units]) + repr([u.rejections for u in units])
    assert not [s for s in secrets if s in text]


@pytest.mark.parametrize(("name", "modality"), [
    ("CT_small.dcm", "CT"),
    ("MR_small.dcm", "MR"),
    ("JPEG2000.dcm", "NM"),  # JPEG 2000 pixel data is never decoded
    ("MR_small_RLE.dcm", "MR"),
    ("rtstruct.dcm", "RTSTRUCT"),  # a bare data set without preamble or file meta
])
def test_known_files_map_to_their_modality(name: str, modality: str) -> None:
    path = shipped(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    units = list(decode_dicom([path]))
    assert not rejections(units)
    (study,) = studies(units)
    assert study.study_uid == ds.StudyInstanceUID
    assert study.patient_ref == f"mrn:{ds.PatientID}"
    assert study.modality == modality
    (series,) = study.series
    assert series.series_uid == ds.SeriesInstanceUID
    assert series.modality == modality
    assert series.instance_count == 1


def test_ct_small_study_time_uses_the_timezone_offset() -> None:
    (study,) = studies(decode_dicom([shipped("CT_small.dcm")]))
    # StudyDate 20040119, StudyTime 072730, TimezoneOffsetFromUTC -0500
    assert study.started_at == datetime(2004, 1, 19, 12, 27, 30, tzinfo=UTC)
    assert study.description == "e+1"
    assert study.accession is None  # empty AccessionNumber


def test_computed_radiography_files_group_into_one_study_of_three_series() -> None:
    folder = PYDICOM_DATA / "test_files" / "dicomdirtests" / "77654033"
    paths = sorted(p for d in ("CR1", "CR2", "CR3") for p in (folder / d).iterdir())
    units = list(decode_dicom(paths))
    assert not rejections(units)
    (study,) = studies(units)
    assert study.modality == "CR"
    assert len(study.series) == 3
    assert {s.modality for s in study.series} == {"CR"}
    assert all(s.instance_count == 1 for s in study.series)


def test_same_instance_in_several_transfer_syntaxes_counts_once() -> None:
    names = ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm"]
    (study,) = studies(decode_dicom([shipped(n) for n in names]))
    (series,) = study.series
    assert series.instance_count == 1


# -- synthetic studies ----------------------------------------------------------------------------


def test_files_group_by_study_with_series_and_sr_report(tmp_path: Path) -> None:
    files = [
        write_dicom(tmp_path / "a.dcm", sop_uid="2.25.100.1.1", TimezoneOffsetFromUTC="+0100"),
        write_dicom(tmp_path / "b.dcm", sop_uid="2.25.100.1.2"),
        write_dicom(tmp_path / "b-copy.dcm", sop_uid="2.25.100.1.2"),  # the same instance sent twice
        write_dicom(tmp_path / "c.dcm", series_uid="2.25.100.2", sop_uid="2.25.100.2.1",
                    SeriesNumber=1, SeriesDescription="Scout", BodyPartExamined=None),
        write_sr(tmp_path / "report.dcm"),
        write_dicom(tmp_path / "other.dcm", study_uid="2.25.200", series_uid="2.25.200.1",
                    sop_uid="2.25.200.1.1", patient_id="SYN-0002", modality="MR"),
    ]
    units = list(decode_dicom(files))
    assert not rejections(units)
    assert len(units) == 2
    first = units[0]
    assert first.where == "a.dcm (+4 more files)"
    assert first.atomic is False

    study = next(s for s in studies(units) if s.study_uid == "2.25.100")
    assert study.natural_key == "dicom-study/2.25.100"
    assert study.patient_ref == "mrn:SYN-0001"
    assert study.accession == "ACC-SYN-1"
    assert study.modality == "CT"  # the SR series does not decide the study's modality
    assert study.body_site == "CHEST"
    assert study.description == "CT chest"
    assert study.source == "dicom"
    assert study.started_at == datetime(2025, 2, 3, 7, 15, 30, tzinfo=UTC)  # 08:15:30 at +0100
    by_uid = {s.series_uid: s for s in study.series}
    assert [s.series_uid for s in study.series] == ["2.25.100.2", "2.25.100.1", "2.25.100.9"]  # by number
    assert by_uid["2.25.100.1"].instance_count == 2
    assert by_uid["2.25.100.1"].number == 2
    assert by_uid["2.25.100.1"].description == "Axial 5mm"
    assert by_uid["2.25.100.2"].description == "Scout"
    assert by_uid["2.25.100.2"].body_site is None
    assert by_uid["2.25.100.9"].modality == "SR"

    (report,) = reports(units)
    assert report.natural_key == "dicom-sr/2.25.100.9.1"
    assert report.imaging_study_refs == (study.natural_key,)
    assert report.patient_ref == "mrn:SYN-0001"
    assert report.code == "18748-4"
    assert report.issued_at == datetime(2025, 2, 3, 10, 15, tzinfo=UTC)
    assert report.conclusion == (
        "Finding: Small left pleural effusion.\nImpression: No consolidation.\nFollow up in 6 weeks."
    )
    # report after study in the same unit: the store writes studies first
    assert first.records.index(report) > first.records.index(study)

    other = next(s for s in studies(units) if s.study_uid == "2.25.200")
    assert other.patient_ref == "mrn:SYN-0002"
    assert other.modality == "MR"


def test_identifying_tags_are_never_copied(tmp_path: Path) -> None:
    units = list(decode_dicom([write_dicom(tmp_path / "a.dcm"), write_sr(tmp_path / "r.dcm")]))
    text = repr([u.records for u in units])
    for value in [*SECRETS.values(), "Observer^Secret"]:
        assert value not in text
    assert "ACC-SYN-1" in text  # the accession travels (the store encrypts it)


def test_sr_without_text_gives_no_report(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "r.dcm", modality="SR", pixels=False, SOPClassUID=BASIC_TEXT_SR,
                       ContentSequence=Sequence([content_item("NUM", "Diameter")]))
    units = list(decode_dicom([path]))
    assert not rejections(units) and not reports(units)
    assert studies(units)[0].modality == "SR"


def test_deflated_and_implicit_transfer_syntaxes(tmp_path: Path) -> None:
    files = [
        write_dicom(tmp_path / "deflated.dcm", transfer_syntax=DeflatedExplicitVRLittleEndian),
        write_dicom(tmp_path / "implicit.dcm", sop_uid="2.25.100.1.2", transfer_syntax=ImplicitVRLittleEndian),
    ]
    units = list(decode_dicom(files))
    assert not rejections(units)
    (study,) = studies(units)
    assert study.series[0].instance_count == 2


# -- rejections -------------------------------------------------------------------------------------


def test_text_file_renamed_dcm_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("Patient SYN-0001 seen today; CT booked.\n" * 20)
    (unit,) = decode_dicom([path])
    (rejection,) = unit.rejections
    assert rejection.where == "notes.dcm"
    assert rejection.field == "FileMetaInformation"
    assert rejection.reason == "not a DICOM file"
    assert not unit.records


@pytest.mark.parametrize("content", [b"", b"\0" * 127, b"\0" * 128 + b"DICM", b"\x08\x00"])
def test_empty_and_stub_files_are_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "stub.dcm"
    path.write_bytes(content)
    (rejection,) = rejections(decode_dicom([path]))
    assert rejection.reason and rejection.field


def test_truncated_files_are_rejected(tmp_path: Path) -> None:
    raw = shipped("CT_small.dcm").read_bytes()
    in_pixels = tmp_path / "in_pixels.dcm"
    in_pixels.write_bytes(raw[: len(raw) // 2])
    in_value = tmp_path / "in_value.dcm"
    in_value.write_bytes(raw[:1000])
    units = list(decode_dicom([in_pixels, in_value]))
    assert not studies(units)
    by_where = {r.where: r for r in rejections(units)}
    assert by_where["in_pixels.dcm"].field == "PixelData"
    assert by_where["in_pixels.dcm"].reason == "DICOM file is truncated"
    assert by_where["in_value.dcm"].reason == "DICOM file is truncated"


def test_truncated_encapsulated_pixel_data_is_rejected(tmp_path: Path) -> None:
    raw = shipped("JPEG2000.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(raw[:-10])
    (rejection,) = rejections(decode_dicom([path]))
    assert (rejection.field, rejection.reason) == ("PixelData", "DICOM file is truncated")


def test_every_truncation_of_a_file_is_survived(tmp_path: Path) -> None:
    raw = shipped("rtplan.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    for size in range(0, len(raw), 7):
        path.write_bytes(raw[:size])
        for unit in decode_dicom([path]):
            for rejection in unit.rejections:
                assert rejection.reason and rejection.field


@pytest.mark.parametrize(("missing", "kwargs"), [
    ("PatientID", {"patient_id": None}),
    ("PatientID", {"patient_id": "   "}),
    ("StudyInstanceUID", {"study_uid": None}),
])
def test_missing_required_tags_are_rejected_without_values(tmp_path: Path, missing: str,
                                                           kwargs: dict[str, Any]) -> None:
    path = write_dicom(tmp_path / "scan.dcm", **kwargs)
    units = list(decode_dicom([path]))
    assert not studies(units)
    (rejection,) = rejections(units)
    assert rejection.where == "scan.dcm"
    assert rejection.field == missing
    assert rejection.reason == "required tag is missing or empty"
    assert rejection.resource_type == "ImagingStudy"
    assert_no_value(rejection, "2.25.100", "SYN-0001", *SECRETS.values())


@pytest.mark.parametrize(("tags", "field"), [
    ({"StudyDate": "20251341"}, "StudyDate"),
    ({"StudyDate": "yesterday"}, "StudyDate"),
    ({"StudyTime": "2561"}, "StudyTime"),
    ({"TimezoneOffsetFromUTC": "CET"}, "TimezoneOffsetFromUTC"),
    ({"StudyDate": "18000101"}, "StudyDate"),
    ({"SOPInstanceUID": "not-a-uid"}, "SOPInstanceUID"),
])
def test_bad_dates_and_uids_are_rejected_by_tag(tmp_path: Path, tags: dict[str, str], field: str) -> None:
    path = write_dicom(tmp_path / "scan.dcm", **tags)
    (rejection,) = rejections(decode_dicom([path]))
    assert rejection.field == field
    assert_no_value(rejection, *tags.values())


def test_study_date_without_time_is_its_midnight(tmp_path: Path) -> None:
    (study,) = studies(decode_dicom([write_dicom(tmp_path / "a.dcm", StudyTime=None)]))
    assert study.started_at == datetime(2025, 2, 3, tzinfo=UTC)


def test_conflicting_patient_in_one_study_is_rejected(tmp_path: Path) -> None:
    files = [write_dicom(tmp_path / "a.dcm"),
             write_dicom(tmp_path / "b.dcm", sop_uid="2.25.100.1.2", patient_id="SYN-0009")]
    units = list(decode_dicom(files))
    (rejection,) = rejections(units)
    assert (rejection.where, rejection.field) == ("b.dcm", "PatientID")
    assert_no_value(rejection, "SYN-0001", "SYN-0009")
    (study,) = studies(units)
    assert study.patient_ref == "mrn:SYN-0001"
    assert study.series[0].instance_count == 1


def test_dicomdir_and_directories_are_rejected(tmp_path: Path) -> None:
    dicomdir = PYDICOM_DATA / "test_files" / "dicomdirtests" / "DICOMDIR"
    units = list(decode_dicom([dicomdir, tmp_path]))
    fields = [r.field for r in rejections(units)]
    assert fields == ["MediaStorageSOPClassUID", "file"]


def test_where_is_relative_to_the_given_root(tmp_path: Path) -> None:
    (tmp_path / "series1").mkdir()
    path = tmp_path / "series1" / "notes.dcm"
    path.write_text("not dicom")
    (rejection,) = rejections(decode_dicom([path], relative_to=tmp_path))
    assert rejection.where == "series1/notes.dcm"
    (rejection,) = rejections(decode_dicom([path]))
    assert rejection.where == "notes.dcm"


def test_pydicom_complaints_reach_neither_warnings_nor_logs(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # An invalid date makes pydicom warn and log the value itself; none of it may escape.
    path = write_dicom(tmp_path / "scan.dcm", PatientBirthDate="1947-02-03", StudyDate="2025.02.03")
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # writing the file complained too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        units = list(decode_dicom([path]))
    assert not rejections(units)
    assert studies(units)[0].started_at == datetime(2025, 2, 3, 8, 15, 30, tzinfo=UTC)
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]


def test_shipped_sr_documents_give_reports_once_they_name_a_patient(tmp_path: Path) -> None:
    # pydicom's SR samples carry no PatientID (and are rejected for it); give them a synthetic MRN.
    paths = []
    for name in ("reportsi.dcm", "test-SR.dcm"):
        ds = pydicom.dcmread(shipped(name))
        ds.PatientID = "SYN-SR-1"
        ds.save_as(tmp_path / name)
        paths.append(tmp_path / name)
    units = list(decode_dicom(paths))
    assert not rejections(units)
    by_key = {r.natural_key: r for r in reports(units)}
    assert len(by_key) == 2
    for report in by_key.values():
        (ref,) = report.imaging_study_refs
        assert ref in {s.natural_key for s in studies(units)}
        assert report.conclusion
    texts = sorted(r.conclusion or "" for r in by_key.values())
    # reportsi.dcm: the report text is kept, the observer's organisation (context) is not
    assert "Report Text: Enter text" in texts
    assert "Organization" not in "".join(texts)
    assert any("A mass of" in t for t in texts)
