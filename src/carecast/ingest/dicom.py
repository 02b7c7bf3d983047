"""DICOM Part 10 files -> one ImagingStudyRecord per study, plus a DiagnosticReportRecord per SR document.

Only the header is read, never the pixel data, and only the tags named in this module are copied.
Identifying tags (names, birth dates, addresses, other IDs, institution, physicians, observers) never
leave the file; the MRN (PatientID) travels as a reference and the accession number is encrypted by the
store. A file that cannot be used is rejected by tag keyword, never with a value from the file.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from carecast.domain.records import (
    DiagnosticReportRecord,
    ImagingSeriesRecord,
    ImagingStudyRecord,
    Rejection,
    UnitOfWork,
)
from carecast.ingest.common import FieldProblem

__all__ = ["decode_dicom", "study_key"]

_RESOURCE = "ImagingStudy"
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # Pixel Data, Float / Double Float Pixel Data
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit-VR elements with these VRs have a 12-byte header (2 reserved bytes and a 4-byte length).
_LONG_HEADER_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_SEQUENCE_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")
# Series that carry documents or presentation state rather than pictures; they do not decide the
# study's modality when an imaging series is present.
_NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "DOC", "REG", "PLAN"})
# SR content items under these relationships describe who observed and where (observer names,
# organisations): identifying, and never copied.
_CONTEXT_RELATIONSHIPS = frozenset({"HAS OBS CONTEXT", "HAS ACQ CONTEXT"})
_MAX_SR_DEPTH = 64
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_DA = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")
_TM = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")
_TZ = re.compile(r"([+-])(\d{2})(\d{2})")
_REPORT_CATEGORY = "RAD"  # HL7 v2 table 0074 "Radiology", the FHIR DiagnosticReport category


def study_key(study_uid: str) -> str:
    """The natural key of a study decoded from DICOM; reports refer to studies by exactly this."""
    return f"dicom-study/{study_uid}"


@dataclass(frozen=True, slots=True)
class _Report:
    sop_uid: str
    text: str | None
    code: str | None
    issued_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Instance:
    """The few facts copied from one file's header."""

    where: str
    study_uid: str
    patient_id: str
    series_uid: str
    sop_uid: str
    modality: str | None
    body_site: str | None
    study_description: str | None
    series_description: str | None
    series_number: int | None
    accession: str | None
    started_at: datetime | None
    report: _Report | None


@dataclass(slots=True)
class _Series:
    modality: str | None
    body_site: str | None
    description: str | None
    number: int | None
    first_seen: int
    sop_uids: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Study:
    study_uid: str
    patient_id: str
    started_at: datetime | None = None
    accession: str | None = None
    description: str | None = None
    files: list[str] = field(default_factory=list)
    series: dict[str, _Series] = field(default_factory=dict)
    reports: dict[str, _Report] = field(default_factory=dict)

    def add(self, inst: _Instance) -> None:
        self.files.append(inst.where)
        # Study-level tags are repeated in every file; the first non-empty value wins.
        self.started_at = self.started_at or inst.started_at
        self.accession = self.accession or inst.accession
        self.description = self.description or inst.study_description
        series = self.series.get(inst.series_uid)
        if series is None:
            series = _Series(inst.modality, inst.body_site, inst.series_description, inst.series_number,
                             first_seen=len(self.series))
            self.series[inst.series_uid] = series
        else:
            series.modality = series.modality or inst.modality
            series.body_site = series.body_site or inst.body_site
            series.description = series.description or inst.series_description
            series.number = series.number if series.number is not None else inst.series_number
        series.sop_uids.add(inst.sop_uid)
        if inst.report is not None and inst.report.text is not None:
            self.reports.setdefault(inst.report.sop_uid, inst.report)

    def unit(self) -> UnitOfWork:
        ordered = sorted(self.series.items(), key=lambda kv: (
            kv[1].number is None, kv[1].number if kv[1].number is not None else 0, kv[1].first_seen))
        series = tuple(
            ImagingSeriesRecord(series_uid=uid, modality=s.modality, body_site=s.body_site,
                                description=s.description, number=s.number, instance_count=len(s.sop_uids))
            for uid, s in ordered
        )
        key = study_key(self.study_uid)
        patient_ref = f"mrn:{self.patient_id}"
        study = ImagingStudyRecord(
            natural_key=key, study_uid=self.study_uid, started_at=self.started_at, patient_ref=patient_ref,
            accession=self.accession, modality=_study_modality(self.series.values()),
            body_site=_study_body_site(self.series.values()), description=self.description, source="dicom",
            series=series,
        )
        reports = [
            DiagnosticReportRecord(
                natural_key=f"dicom-sr/{r.sop_uid}", patient_ref=patient_ref, category=_REPORT_CATEGORY,
                code=r.code, issued_at=r.issued_at, conclusion=r.text, imaging_study_refs=(key,),
            )
            for r in self.reports.values()
        ]
        more = len(self.files) - 1
        where = self.files[0] if more == 0 else f"{self.files[0]} (+{more} more files)"
        return UnitOfWork(where=where, records=[study, *reports])


def _study_modality(series: Iterable[_Series]) -> str | None:
    """The modality with the most instances, preferring imaging series over documents."""
    counts: dict[str, int] = {}
    for s in sorted(series, key=lambda s: s.first_seen):
        if s.modality:
            counts[s.modality] = counts.get(s.modality, 0) + len(s.sop_uids)
    imaging = {m: n for m, n in counts.items() if m not in _NON_IMAGE_MODALITIES} or counts
    return max(imaging, key=lambda m: imaging[m]) if imaging else None


def _study_body_site(series: Iterable[_Series]) -> str | None:
    ordered = sorted(series, key=lambda s: (s.modality in _NON_IMAGE_MODALITIES, s.first_seen))
    return next((s.body_site for s in ordered if s.body_site), None)


def decode_dicom(paths: Iterable[Path], *, relative_to: Path | None = None) -> Iterator[UnitOfWork]:
    """Decode DICOM files into one unit of work per study, after a unit per rejected file.

    Files are grouped by StudyInstanceUID, so every file is read before the first study is yielded;
    a rejected file is yielded as soon as it is read. `where` names a file by its path relative to
    `relative_to` when given, else by its name alone (parent folders often carry patient names).
    """
    studies: dict[str, _Study] = {}
    for path in paths:
        where = _where(path, relative_to)
        try:
            inst = _read_instance(path, where)
            study = studies.get(inst.study_uid)
            if study is None:
                study = studies[inst.study_uid] = _Study(inst.study_uid, inst.patient_id)
            elif study.patient_id != inst.patient_id:
                raise FieldProblem("PatientID", "differs from the PatientID of other files of the same study")
            study.add(inst)
        except FieldProblem as problem:
            yield UnitOfWork(where=where, rejections=[
                Rejection(where=where, reason=problem.reason, field=problem.field, resource_type=_RESOURCE)
            ])
    for study in studies.values():
        yield study.unit()


def _where(path: Path, relative_to: Path | None) -> str:
    if relative_to is not None:
        try:
            return path.relative_to(relative_to).as_posix()
        except ValueError:
            pass
    return path.name


# -- reading one file ------------------------------------------------------------------------------


@dataclass(slots=True)
class _PixelStop:
    """Records where reading stopped, so that a file cut short inside its pixel data is noticed."""

    vr: str | None = None
    length: int | None = None

    def __call__(self, tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag in _PIXEL_TAGS:
            self.vr, self.length = vr, length
            return True
        return False


def _drop(record: logging.LogRecord) -> bool:
    return False


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom while it reads patient data.

    pydicom reports recoverable oddities (bad VRs, odd lengths, charsets) as warnings and log lines
    that quote the offending value ("Invalid value for VR DA: '19470203'"). They are not reasons to
    refuse a file and must not reach a log, so both are dropped while a file is read.
    """
    pydicom_logger = logging.getLogger("pydicom")
    pydicom_logger.addFilter(_drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_logger.removeFilter(_drop)


def _read_instance(path: Path, where: str) -> _Instance:
    with _quiet_pydicom():
        ds = _read_header(path)
        return _instance(ds, where)


def _read_header(path: Path) -> Dataset:
    """The data set up to (not including) the pixel data; raises FieldProblem naming the part at fault."""
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            force = _sniff(fh)
            stop = _PixelStop()
            try:
                ds = read_partial(fh, stop_when=stop, force=force)
            except InvalidDicomError:
                raise FieldProblem("FileMetaInformation", "not a DICOM file") from None
            except (OSError, EOFError, struct.error):
                raise FieldProblem("Dataset", "DICOM file is truncated") from None
            except Exception:  # pydicom raises many kinds on corrupt input; none may escape
                raise FieldProblem("Dataset", "DICOM file is corrupt or truncated and cannot be parsed") from None
            _check_complete(ds, fh, size, stop)
    except IsADirectoryError:
        raise FieldProblem("file", "is a directory, not a file") from None
    except OSError:
        raise FieldProblem("file", "file cannot be read") from None
    return ds


def _sniff(fh: BinaryIO) -> bool:
    """Whether to force-read: False for a Part 10 file (preamble and 'DICM'), True for a bare data
    set that starts with a group 0002 or 0008 tag; anything else is not DICOM."""
    head = fh.read(132)
    fh.seek(0)
    if len(head) == 132 and head[128:] == b"DICM":
        return False
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x00\x08", b"\x02\x00", b"\x00\x02"):
        return True
    raise FieldProblem("FileMetaInformation", "not a DICOM file")


def _check_complete(ds: Dataset, fh: BinaryIO, size: int, stop: _PixelStop) -> None:
    """pydicom silently returns what it could read of a truncated file; check that nothing is missing.

    A cut inside an element (header or value) or inside the pixel data is caught. A cut that falls
    exactly between two elements of a file without pixel data cannot be told from a complete file
    (header-only exports are legitimate), nor can damage after the pixel data, which is never read.
    """
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return  # the data set was inflated in memory; zlib itself refuses a truncated stream
    if stop.length is not None:
        header = 12 if stop.vr in _LONG_HEADER_VRS else 8
        start = fh.tell() + header  # pydicom rewinds to the start of the pixel element
        if stop.length == _UNDEFINED_LENGTH:
            _check_fragments(fh, start, size)
        elif start + stop.length > size:
            raise FieldProblem("PixelData", "DICOM file is truncated")
        return
    last: Any = None
    last_pos = -1
    tags = list(ds.keys())  # Dataset iteration would convert every element; get_item keeps them raw
    for tag in tags:
        elem = ds.get_item(tag, keep_deferred=True)
        pos = elem.value_tell if isinstance(elem, RawDataElement) else getattr(elem, "file_tell", None)
        if pos is not None and pos > last_pos:
            last, last_pos = elem, pos
    if last is None:
        if fh.tell() < size:
            raise FieldProblem("Dataset", "DICOM file is corrupt or truncated and cannot be parsed")
        return
    if isinstance(last, RawDataElement) and last.length != _UNDEFINED_LENGTH:
        if last.value_tell + last.length != size:
            raise FieldProblem("Dataset", "DICOM file is truncated")
    else:
        fh.seek(max(size - 8, 0))
        if fh.read(8) not in _SEQUENCE_DELIMITERS:
            raise FieldProblem("Dataset", "DICOM file is truncated")


def _check_fragments(fh: BinaryIO, start: int, size: int) -> None:
    """Walk the item headers of encapsulated pixel data (never the fragments) to its delimiter."""
    pos = start
    while True:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            raise FieldProblem("PixelData", "DICOM file is truncated")
        group, element, length = struct.unpack("<HHL", head)
        if (group, element) == (0xFFFE, 0xE0DD):
            return
        if (group, element) != (0xFFFE, 0xE000) or length == _UNDEFINED_LENGTH:
            raise FieldProblem("PixelData", "encapsulated pixel data is corrupt")
        pos += 8 + length
        if pos > size:
            raise FieldProblem("PixelData", "DICOM file is truncated")


# -- copying the few tags we keep ------------------------------------------------------------------


def _instance(ds: Dataset, where: str) -> _Instance:
    if _is_dicomdir(ds):
        raise FieldProblem("MediaStorageSOPClassUID", "file is a DICOMDIR (media index), not a DICOM instance")
    study_uid = _uid(ds, "StudyInstanceUID")
    patient_id = _identifier(ds, "PatientID")
    series_uid = _uid(ds, "SeriesInstanceUID")
    sop_uid = _sop_uid(ds)
    modality = _text(ds, "Modality")
    tz = _tz_offset(ds)
    report = None
    if modality == "SR":
        report = _Report(sop_uid=sop_uid, text=_sr_text(ds), code=_document_code(ds),
                         issued_at=_datetime(ds, "ContentDate", "ContentTime", tz))
    return _Instance(
        where=where, study_uid=study_uid, patient_id=patient_id, series_uid=series_uid, sop_uid=sop_uid,
        modality=modality, body_site=_text(ds, "BodyPartExamined"),
        study_description=_text(ds, "StudyDescription"), series_description=_text(ds, "SeriesDescription"),
        series_number=_integer(ds, "SeriesNumber"), accession=_text(ds, "AccessionNumber"),
        started_at=_datetime(ds, "StudyDate", "StudyTime", tz), report=report,
    )


def _is_dicomdir(ds: Dataset) -> bool:
    file_meta = getattr(ds, "file_meta", None)
    try:
        sop_class = _text(file_meta, "MediaStorageSOPClassUID") if file_meta is not None else None
    except FieldProblem:  # a sequence or bytes where the UID belongs (str() of such a sequence can raise)
        sop_class = None
    return sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds


def _raw_value(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # a value pydicom cannot convert
        raise FieldProblem(keyword, "value cannot be decoded") from None


def _text(ds: Dataset, keyword: str) -> str | None:
    """A string tag as text, or None when absent or empty. Multiple values are joined with '\\'."""
    value = _raw_value(ds, keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v).strip() for v in value)
    elif isinstance(value, bytes | Sequence):
        raise FieldProblem(keyword, "expected a text value")
    else:
        text = str(value)
    text = text.strip().strip("\x00").strip()
    return text or None


def _uid(ds: Dataset, keyword: str) -> str:
    text = _text(ds, keyword)
    if text is None:
        raise FieldProblem(keyword, "required tag is missing or empty")
    if len(text) > 64 or not _UID.fullmatch(text):
        raise FieldProblem(keyword, "not a valid DICOM UID")
    return text


def _identifier(ds: Dataset, keyword: str) -> str:
    text = _text(ds, keyword)
    if text is None:
        raise FieldProblem(keyword, "required tag is missing or empty")
    if "\\" in text:
        raise FieldProblem(keyword, "has more than one value")
    if not text.isprintable() or len(text) > 64:
        raise FieldProblem(keyword, "not a valid identifier (control characters or over 64 characters)")
    return text


def _sop_uid(ds: Dataset) -> str:
    if _text(ds, "SOPInstanceUID") is None:
        # Some writers only fill the file meta copy of the instance UID.
        file_meta = getattr(ds, "file_meta", None)
        if file_meta is not None and _text(file_meta, "MediaStorageSOPInstanceUID") is not None:
            return _uid(file_meta, "MediaStorageSOPInstanceUID")
    return _uid(ds, "SOPInstanceUID")


def _integer(ds: Dataset, keyword: str) -> int | None:
    """An IS tag as int; a descriptive number that cannot be read is dropped, not a reason to refuse."""
    try:
        value = ds.get(keyword)
        return int(str(value).strip()) if value is not None and str(value).strip() else None
    except Exception:
        return None


def _tz_offset(ds: Dataset) -> timezone:
    text = _text(ds, "TimezoneOffsetFromUTC")
    if text is None:
        return UTC
    match = _TZ.fullmatch(text)
    if not match or int(match[2]) > 14 or int(match[3]) > 59:
        raise FieldProblem("TimezoneOffsetFromUTC", "not a valid offset (expected +HHMM or -HHMM)")
    minutes = int(match[2]) * 60 + int(match[3])
    return timezone(timedelta(minutes=-minutes if match[1] == "-" else minutes))


def _datetime(ds: Dataset, date_kw: str, time_kw: str, tz: timezone) -> datetime | None:
    """A DA + TM pair as aware UTC; a date without a time means its midnight. None without a date."""
    date_text = _text(ds, date_kw)
    if date_text is None:
        return None
    date_match = _DA.fullmatch(date_text)
    if not date_match:
        raise FieldProblem(date_kw, "not a valid DICOM date (YYYYMMDD)")
    hour = minute = second = micro = 0
    time_text = _text(ds, time_kw)
    if time_text is not None:
        time_match = _TM.fullmatch(time_text)
        if not time_match:
            raise FieldProblem(time_kw, "not a valid DICOM time (HHMMSS.FFFFFF)")
        hour, minute, second = (int(time_match[i] or 0) for i in (1, 2, 3))
        micro = int((time_match[4] or "0").ljust(6, "0"))
        second = min(second, 59)  # DICOM allows a leap second (60); datetime does not
    try:
        local = datetime(int(date_match[1]), int(date_match[2]), int(date_match[3]),
                         hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        try:
            datetime(int(date_match[1]), int(date_match[2]), int(date_match[3]))
        except ValueError:
            raise FieldProblem(date_kw, "not a valid DICOM date (YYYYMMDD)") from None
        raise FieldProblem(time_kw, "not a valid DICOM time (HHMMSS.FFFFFF)") from None
    if not 1900 <= local.year <= 2200:
        raise FieldProblem(date_kw, "date outside the years 1900-2200")
    return local.astimezone(UTC)


def _document_code(ds: Dataset) -> str | None:
    """The LOINC code of the SR document title, if it is coded in LOINC."""
    try:
        title = ds.get("ConceptNameCodeSequence")
        if not title:
            return None
        item = title[0]
        scheme = str(item.get("CodingSchemeDesignator") or "").strip()
        code = str(item.get("CodeValue") or "").strip()
    except Exception:
        return None
    return code if scheme in ("LN", "LOINC") and code else None


def _sr_text(ds: Dataset) -> str | None:
    """The TEXT content items of a Structured Report, in document order, each after its concept name.

    Observation and acquisition context (observer names, organisations) is skipped: it identifies
    people, not findings.
    """
    lines: list[str] = []
    try:
        root = ds.get("ContentSequence")
        stack: list[tuple[Any, int]] = [(item, 0) for item in reversed(root or [])]
        while stack:
            item, depth = stack.pop()
            relationship = str(item.get("RelationshipType") or "").strip()
            if relationship in _CONTEXT_RELATIONSHIPS:
                continue
            if str(item.get("ValueType") or "").strip() == "TEXT":
                text = _clean_text(item.get("TextValue"))
                if text:
                    heading = _concept_name(item)
                    lines.append(f"{heading}: {text}" if heading else text)
            children = item.get("ContentSequence")
            if children and depth < _MAX_SR_DEPTH:
                stack.extend((child, depth + 1) for child in reversed(children))
    except Exception:
        raise FieldProblem("ContentSequence", "structured report content cannot be decoded") from None
    return "\n".join(lines) or None


def _concept_name(item: Any) -> str | None:
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    return _clean_text(names[0].get("CodeMeaning"))


def _clean_text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).replace("\r\n", "\n").replace("\r", "\n").strip().strip("\x00").strip()
    return text or None
