"""Tables of the clinical store (SQLAlchemy 2 declarative).

Direct identifiers live only in `*_enc` columns (AES-GCM tokens, see carecast.crypto) and, where
they must be searched, in `*_index` columns (keyed HMAC blind indexes). Natural keys of incoming
records are kept only as keyed hashes (`source_key`), so the store holds no source identifier in clear.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from carecast.store.db import UTCDateTime

ID = BigInteger().with_variant(Integer, "sqlite")
KEY = String(32)  # hex of a truncated HMAC-SHA256

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012 (SQLAlchemy reads it)


class IngestBatch(Base):
    """One ingestion run over one input (file, upload, stream chunk)."""

    __tablename__ = "ingest_batches"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="running")
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)


class IngestRecord(Base):
    """A quarantined input record: where it was, which field failed and why; the raw record is
    kept encrypted so that it can be corrected and replayed."""

    __tablename__ = "ingest_records"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("ingest_batches.id"), index=True)
    source: Mapped[str] = mapped_column(String(16))
    content_key: Mapped[str | None] = mapped_column(KEY, index=True)
    status: Mapped[str] = mapped_column(String(16), default="quarantined")
    location: Mapped[str] = mapped_column(String(255))
    resource_type: Mapped[str | None] = mapped_column(String(32))
    field: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    raw_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    source_key: Mapped[str] = mapped_column(KEY, unique=True)
    content_hash: Mapped[str] = mapped_column(KEY)
    mrn_index: Mapped[str | None] = mapped_column(KEY, index=True)
    mrn_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    family_name_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    given_names_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    birth_date_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    address_line_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    city_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    postal_code_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    phone_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    email_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    ssn_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    sex: Mapped[str] = mapped_column(String(16))
    race: Mapped[str | None] = mapped_column(String(64))
    ethnicity: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str | None] = mapped_column(String(2), index=True)
    deceased_at: Mapped[datetime | None]
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_batches.id"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Encounter(Base):
    __tablename__ = "encounters"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    source_key: Mapped[str] = mapped_column(KEY, unique=True)
    content_hash: Mapped[str] = mapped_column(KEY)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    status: Mapped[str] = mapped_column(String(24))
    encounter_class: Mapped[str] = mapped_column(String(16))
    admission_type: Mapped[str | None] = mapped_column(String(24))
    admitted_at: Mapped[datetime]
    discharged_at: Mapped[datetime | None]
    unit: Mapped[str | None] = mapped_column(String(64), index=True)
    bed: Mapped[str | None] = mapped_column(String(32))
    disposition: Mapped[str | None] = mapped_column(String(32))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_batches.id"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class EncounterLocation(Base):
    """Where an encounter was, and when: the unit history (an ICU stay shows up here)."""

    __tablename__ = "encounter_locations"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    encounter_id: Mapped[int] = mapped_column(ForeignKey("encounters.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    unit: Mapped[str] = mapped_column(String(64))
    bed: Mapped[str | None] = mapped_column(String(32))
    start_at: Mapped[datetime | None]
    end_at: Mapped[datetime | None]


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    serial_index: Mapped[str] = mapped_column(KEY, unique=True)
    serial_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class Observation(Base):
    """A vital sign, lab result or wearable reading, in the variable's canonical UCUM unit.

    No content hash here (unlike the other tables): a re-sent reading is compared column by column
    with the stored one, which spares the bulk path a keyed hash per reading."""

    __tablename__ = "observations"
    __table_args__ = (
        Index("ix_observations_patient_variable_time", "patient_id", "variable", "effective_at"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    source_key: Mapped[str] = mapped_column(KEY, unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"))
    variable: Mapped[str] = mapped_column(String(32))
    code_system: Mapped[str] = mapped_column(String(64))
    code: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(16))
    effective_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(16))
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_batches.id"))
    ingested_at: Mapped[datetime]


class Condition(Base):
    __tablename__ = "conditions"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    source_key: Mapped[str] = mapped_column(KEY, unique=True)
    content_hash: Mapped[str] = mapped_column(KEY)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"))
    code_system: Mapped[str] = mapped_column(String(16))
    code: Mapped[str] = mapped_column(String(32), index=True)
    display: Mapped[str | None] = mapped_column(String(255))
    onset_at: Mapped[datetime | None]
    recorded_at: Mapped[datetime | None]
    clinical_status: Mapped[str | None] = mapped_column(String(24))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_batches.id"))


class ImagingStudy(Base):
    __tablename__ = "imaging_studies"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    source_key: Mapped[str] = mapped_column(KEY, unique=True)
    content_hash: Mapped[str] = mapped_column(KEY)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"))
    study_uid_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    accession_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    started_at: Mapped[datetime | None]
    modality: Mapped[str | None] = mapped_column(String(64))
    body_site: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(16))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_batches.id"))


class ImagingSeries(Base):
    __tablename__ = "imaging_series"
    __table_args__ = (UniqueConstraint("study_id", "series_key"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("imaging_studies.id", ondelete="CASCADE"), index=True)
    series_key: Mapped[str] = mapped_column(KEY)
    series_uid_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_site: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(255))
    number: Mapped[int | None] = mapped_column(Integer)
    instance_count: Mapped[int | None] = mapped_column(Integer)


class DiagnosticReport(Base):
    """A report; imaging reports carry the findings of a study, joined by the study's key so that
    report and study may arrive in either order. Free-text conclusions are encrypted (free text
    can hold identifiers); coded findings stay searchable."""

    __tablename__ = "diagnostic_reports"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    source_key: Mapped[str] = mapped_column(KEY, unique=True)
    content_hash: Mapped[str] = mapped_column(KEY)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"))
    study_key: Mapped[str | None] = mapped_column(KEY, index=True)
    category: Mapped[str | None] = mapped_column(String(32))
    code: Mapped[str | None] = mapped_column(String(32))
    issued_at: Mapped[datetime | None]
    conclusion_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    conclusion_codes: Mapped[str | None] = mapped_column(String(255))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_batches.id"))


class Outcome(Base):
    """Death, ICU transfer or 30-day readmission, with when it happened."""

    __tablename__ = "outcomes"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    source_key: Mapped[str] = mapped_column(KEY, unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"))
    kind: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime]
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_batches.id"))


def table(model: type[Base]) -> Table:
    """The Core table of a model, typed as such (for bulk statements)."""
    return cast(Table, model.__table__)
