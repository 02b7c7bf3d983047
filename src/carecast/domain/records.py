"""Domain records: what ingestion produces and the store accepts. Plain data, no I/O.

References between records use FHIR-style logical references ("Patient/abc"); a patient may also be
referenced by medical record number as "mrn:<MRN>" (DICOM, CSV and device feeds do). Every record has a
`natural_key`: a string that identifies the same fact when it arrives again, so that ingestion is
idempotent. The store never keeps natural keys in clear: it keeps a keyed hash of them.
Identifiers (names, MRN, dates of birth, addresses, phone, email, SSN, device serials, accession
numbers) travel here in clear and are encrypted by the store.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

Source = Literal["fhir", "wearable", "dicom", "csv"]
OutcomeKind = Literal["death", "icu_transfer", "readmission"]


@dataclass(frozen=True, slots=True)
class PatientRecord:
    natural_key: str  # "Patient/<id>"
    mrn: str | None = None
    family_name: str | None = None
    given_names: str | None = None
    birth_date: date | None = None
    sex: str = "unknown"  # female | male | other | unknown (FHIR administrative gender)
    race: str | None = None
    ethnicity: str | None = None
    address_line: str | None = None
    city: str | None = None
    state: str | None = None  # two-letter US state code; kept in clear (Safe Harbor allows it)
    postal_code: str | None = None
    phone: str | None = None
    email: str | None = None
    ssn: str | None = None
    deceased_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class LocationStay:
    unit: str
    bed: str | None
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True, slots=True)
class EncounterRecord:
    natural_key: str  # "Encounter/<id>"
    patient_ref: str
    status: str
    encounter_class: str  # IMP | EMER | AMB | ...
    admitted_at: datetime
    discharged_at: datetime | None = None
    admission_type: str | None = None  # emergency | urgent | elective | ...
    disposition: str | None = None  # home | expired | transfer | ...
    unit: str | None = None  # current (last) unit
    bed: str | None = None
    locations: tuple[LocationStay, ...] = ()


@dataclass(frozen=True, slots=True)
class ObservationRecord:
    natural_key: str
    patient_ref: str
    variable: str
    code_system: str
    code: str
    value: float
    unit: str  # canonical UCUM unit of the variable
    effective_at: datetime
    source: Source
    category: str
    encounter_ref: str | None = None
    device_serial: str | None = None


@dataclass(frozen=True, slots=True)
class ConditionRecord:
    natural_key: str
    patient_ref: str
    code_system: str  # icd10 | snomed
    code: str
    display: str | None = None
    encounter_ref: str | None = None
    onset_at: datetime | None = None
    recorded_at: datetime | None = None
    clinical_status: str | None = None


@dataclass(frozen=True, slots=True)
class ImagingSeriesRecord:
    series_uid: str
    modality: str | None = None
    body_site: str | None = None
    description: str | None = None
    number: int | None = None
    instance_count: int | None = None


@dataclass(frozen=True, slots=True)
class ImagingStudyRecord:
    natural_key: str  # "ImagingStudy/<id>" or "dicom-study/<study uid>"
    study_uid: str | None
    started_at: datetime | None
    patient_ref: str | None = None  # DICOM links by MRN: "mrn:<PatientID>"
    encounter_ref: str | None = None
    accession: str | None = None
    modality: str | None = None
    body_site: str | None = None
    description: str | None = None
    source: Source = "fhir"
    series: tuple[ImagingSeriesRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class DiagnosticReportRecord:
    natural_key: str
    patient_ref: str
    category: str | None
    code: str | None
    issued_at: datetime | None
    conclusion: str | None = None
    conclusion_codes: tuple[str, ...] = ()
    encounter_ref: str | None = None
    imaging_study_refs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    natural_key: str
    patient_ref: str
    kind: OutcomeKind
    occurred_at: datetime
    encounter_ref: str | None = None


Record = (
    PatientRecord | EncounterRecord | ObservationRecord | ConditionRecord | ImagingStudyRecord
    | DiagnosticReportRecord | OutcomeRecord
)

# Order in which record kinds are written, so that references resolve within one unit of work.
WRITE_ORDER: dict[type, int] = {
    PatientRecord: 0, EncounterRecord: 1, ConditionRecord: 2, ObservationRecord: 3,
    ImagingStudyRecord: 4, DiagnosticReportRecord: 5, OutcomeRecord: 6,
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one input record was refused. `where` locates it (file:line, entry index); `field` is a
    path into the record. Neither ever contains a value from the record."""

    where: str
    reason: str
    field: str | None = None
    resource_type: str | None = None
    raw: bytes | None = dataclasses.field(default=None, repr=False)  # the original record, stored encrypted

    def describe(self) -> str:
        at = f" field {self.field}" if self.field else ""
        kind = f" {self.resource_type}" if self.resource_type else ""
        return f"{self.where}{kind}{at}: {self.reason}"


@dataclass(slots=True)
class UnitOfWork:
    """Records that are stored together. `atomic` units (FHIR transaction bundles) are stored
    all-or-nothing: one rejection rejects every record of the unit.

    `locations[i]` says where `records[i]` came from (e.g. "Observation.ndjson:line 17"), so that a
    problem found later (an unknown patient, say) still names its input record. `skipped` counts
    input records of kinds CareCast does not use (e.g. Practitioner), acknowledged and ignored.
    """

    where: str
    records: list[Record] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    atomic: bool = False
    skipped: int = 0
    raw: dict[str, bytes] = field(default_factory=dict)  # location -> original record, for quarantine

    def add(self, record: Record, location: str) -> None:
        self.records.append(record)
        self.locations.append(location)
