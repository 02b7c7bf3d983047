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
    display_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # free text: encrypted (revision 0004)
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
    description_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # free text: encrypted (revision 0004)
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
    description_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # free text: encrypted (revision 0004)
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


# -- serving: users, tokens, audit, predictions, the scoring queue ------------------------------------------------


class User(Base):
    """A person who signs in. Passwords are argon2 hashes; repeated failures lock the account."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(24))
    active: Mapped[bool] = mapped_column(default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]


class UserUnit(Base):
    """Care-team membership: a clinician or nurse sees the patients of these units."""

    __tablename__ = "user_units"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    unit: Mapped[str] = mapped_column(String(64), primary_key=True)


class ApiToken(Base):
    """A bearer token: random, shown once, stored only as its SHA-256; scoped and expiring."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class BreakGlass(Base):
    """Emergency access to a patient outside the user's units: reason required, time-limited, audited."""

    __tablename__ = "break_glass"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    reason_enc: Mapped[bytes] = mapped_column(LargeBinary)
    started_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class AuditEvent(Base):
    """Append-only, hash-chained record of every access to patient data and every denial.

    Holds who, role, action tag, which patient (public uid), when, from where, outcome and request id;
    never a patient value. `hash` = SHA-256 over the previous hash and this row's fields.
    """

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(24))
    action: Mapped[str] = mapped_column(String(64), index=True)
    patient_uid: Mapped[str | None] = mapped_column(String(36), index=True)
    source_ip: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(String(255))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # The row's place in the chain (the head's + 1). UNIQUE keeps the chain linear under concurrent writers
    # on any backend: two rows appended onto the same head cannot both commit; the loser retries on the new
    # head. A rising number is inserted at the end of its index, where a UNIQUE hash (random) cost a random
    # page of each of two indexes per row (revision 0005). Not part of the hash: verify() walks the ids.
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)


class AuditSpool(Base):
    """How far each audit spool file has been moved into `audit_events` (bytes from its start).

    Updated in the same transaction as the rows it accounts for, so a spool is shipped exactly once
    even when its process dies between two shipments (see carecast.security.audit)."""

    __tablename__ = "audit_spool"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    shipped: Mapped[int] = mapped_column(BigInteger)


class Prediction(Base):
    """One risk score for one patient, task and model version at the time of the data it used.
    Idempotent: the same (patient, task, model version, data time) is stored once."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("patient_id", "task", "model_version", "data_time"),
        Index("ix_predictions_patient_task_time", "patient_id", "task", "data_time"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"))
    task: Mapped[str] = mapped_column(String(32))
    model_version: Mapped[str] = mapped_column(String(64))
    risk: Mapped[float] = mapped_column(Float)
    band: Mapped[str] = mapped_column(String(16))
    news2: Mapped[int | None] = mapped_column(Integer)
    factors: Mapped[str] = mapped_column(Text)  # JSON: top contributing factors (feature names and signs)
    data_time: Mapped[datetime]
    computed_at: Mapped[datetime]
    shadow: Mapped[bool] = mapped_column(default=False)


class ScoreJob(Base):
    """The durable scoring queue of the embedded default (and of PostgreSQL deployments): a row per
    patient with new data; workers claim rows with a lease, so a killed worker's rows come back."""

    __tablename__ = "score_jobs"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    enqueued_at: Mapped[datetime] = mapped_column(index=True)
    data_time: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    leased_by: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    done_at: Mapped[datetime | None] = mapped_column(index=True)
    error: Mapped[str | None] = mapped_column(String(255))


# -- CDS Hooks: registered EHR clients, seen token ids, card feedback -------------------------------------------


class CdsClient(Base):
    """An EHR allowed to call the CDS Hooks services: its JWT issuer and public signing keys (a JWK Set,
    never a private key). `audience` is the public base URL the EHR addresses CareCast by; tokens must
    name `<audience>/cds-services/<id>` (None: the URL the request arrived at)."""

    __tablename__ = "cds_clients"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    iss: Mapped[str] = mapped_column(String(255), unique=True)
    jwks: Mapped[str] = mapped_column(Text)  # JSON {"keys": [public JWK with "kid", ...]}
    audience: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CdsJti(Base):
    """A token id (`jti`, kept as its SHA-256) a client has used, until the token expires: a second use is a
    replay. The primary key makes the check race-free across processes; expired rows are purged."""

    __tablename__ = "cds_jti"
    client_id: Mapped[int] = mapped_column(ForeignKey("cds_clients.id", ondelete="CASCADE"), primary_key=True)
    jti_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class CdsFeedback(Base):
    """What a clinician did with a card (accepted or overridden, and why), for monitoring. One row per
    card outcome and override reason; the free-text comment is encrypted."""

    __tablename__ = "cds_feedback"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    client_iss: Mapped[str] = mapped_column(String(255))
    service: Mapped[str] = mapped_column(String(64))
    card_uuid: Mapped[str] = mapped_column(String(36), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason_system: Mapped[str | None] = mapped_column(String(255))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    comment_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    outcome_at: Mapped[datetime] = mapped_column(index=True)
    received_at: Mapped[datetime]
