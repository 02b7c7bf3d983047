"""Read-side queries used by the command line and reports. Never returns decrypted identifiers
unless a function says so in its name."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from carecast.store import schema as S

COUNTED = {
    "patients": S.Patient, "encounters": S.Encounter, "observations": S.Observation, "conditions": S.Condition,
    "imaging_studies": S.ImagingStudy, "imaging_series": S.ImagingSeries, "diagnostic_reports": S.DiagnosticReport,
    "devices": S.Device, "outcomes": S.Outcome, "ingest_batches": S.IngestBatch,
    "quarantined_records": S.IngestRecord,
}


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: int(conn.execute(select(func.count()).select_from(model)).scalar_one())
                for name, model in COUNTED.items()}


def observation_counts_by(engine: Engine, column: str) -> dict[str, int]:
    col = getattr(S.Observation, column)
    with engine.connect() as conn:
        rows = conn.execute(select(col, func.count()).group_by(col).order_by(col)).all()
    return {str(k): int(v) for k, v in rows}


def outcome_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(S.Outcome.kind, func.count()).group_by(S.Outcome.kind)).all()
    return {str(k): int(v) for k, v in rows}


def quarantine(engine: Engine, limit: int = 100, batch_id: int | None = None) -> list[dict[str, Any]]:
    """Quarantined records, newest first: where, which field, why (never the record itself)."""
    t = S.IngestRecord
    stmt = select(t.id, t.batch_id, t.source, t.location, t.resource_type, t.field, t.reason, t.created_at)
    if batch_id is not None:
        stmt = stmt.where(t.batch_id == batch_id)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(t.id.desc()).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


def batches(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    t = S.IngestBatch
    with engine.connect() as conn:
        rows = conn.execute(select(t).order_by(t.id.desc()).limit(limit)).scalars().all()
    return [{"id": b.id, "source": b.source, "label": b.label, "status": b.status, "accepted": b.accepted,
             "updated": b.updated, "unchanged": b.unchanged, "rejected": b.rejected,
             "started_at": b.started_at.isoformat()} for b in rows]
