"""ClinicalWriter's on_patients_changed hook: called after commit with the patients whose observations are
new or changed and the latest reading time among them; silent when nothing changed or nothing committed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from carecast.domain.records import ObservationRecord, UnitOfWork
from carecast.jobs.ingest import ingest_paths
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.writer import ClinicalWriter
from tests import factories as F

Calls = list[tuple[set[int], datetime | None]]


def _write(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    return path


def _uid_to_id(store: Store) -> dict[str, int]:
    writer = ClinicalWriter(store.engine, store.keyring)
    with store.engine.connect() as conn:
        return {ref: conn.execute(select(S.Patient.id).where(S.Patient.source_key == writer.source_key(ref)))
                .scalar_one() for ref in ("Patient/p1", "Patient/p2", "Patient/p3")}


def test_hook_names_the_patients_with_new_changed_or_resent_readings(store: Store, tmp_path: Path) -> None:
    calls: Calls = []
    writer = ClinicalWriter(store.engine, store.keyring, on_patients_changed=lambda p, t: calls.append((p, t)))
    base = tmp_path / "first"
    _write(base / "Patient.ndjson", [F.patient("p1"), F.patient("p2"), F.patient("p3")])
    _write(base / "Encounter.ndjson", [F.encounter("e1", "p1"), F.encounter("e2", "p2"), F.encounter("e3", "p3")])
    _write(base / "Observation.ndjson", [
        F.vital("o1", "8867-4", 80, "/min", when="2026-01-05T09:00:00Z"),
        F.vital("o2", "8867-4", 82, "/min", when="2026-01-05T11:30:00Z"),
        F.vital("o3", "9279-1", 18, "/min", pid="p2", eid="e2", when="2026-01-05T10:00:00Z"),
    ])
    ingest_paths([base], writer)
    ids = _uid_to_id(store)
    assert calls == [({ids["Patient/p1"], ids["Patient/p2"]}, datetime(2026, 1, 5, 11, 30, tzinfo=UTC))]

    calls.clear()
    # A replay changes nothing, but is announced: it may be a client's retry of a write whose commit
    # landed while its scoring job was lost (the process died in between). Scoring it again is idempotent.
    ingest_paths([base], writer)
    assert calls == [({ids["Patient/p1"], ids["Patient/p2"]}, datetime(2026, 1, 5, 11, 30, tzinfo=UTC))]
    calls.clear()

    update = _write(tmp_path / "second" / "Observation.ndjson", [
        F.vital("o1", "8867-4", 80, "/min", when="2026-01-05T09:00:00Z"),  # unchanged
        F.vital("o3", "9279-1", 24, "/min", pid="p2", eid="e2", when="2026-01-05T10:00:00Z"),  # corrected
        F.vital("o4", "59408-5", 93, "%", pid="p3", eid="e3", when="2026-01-05T10:15:00Z"),  # new
    ])
    ingest_paths([update], writer)
    assert calls == [({ids["Patient/p1"], ids["Patient/p2"], ids["Patient/p3"]},
                      datetime(2026, 1, 5, 10, 15, tzinfo=UTC))]


def test_no_call_for_a_transaction_that_rolls_back(store: Store, tmp_path: Path) -> None:
    calls: Calls = []
    writer = ClinicalWriter(store.engine, store.keyring, on_patients_changed=lambda p, t: calls.append((p, t)))
    base = tmp_path / "in"
    _write(base / "Patient.ndjson", [F.patient("p1")])
    _write(base / "Encounter.ndjson", [F.encounter("e1", "p1")])
    ingest_paths([base], writer)
    reading = ObservationRecord(natural_key="Observation/x1", patient_ref="Patient/p1", variable="heart_rate",
                                code_system="http://loinc.org", code="8867-4", value=90.0, unit="/min",
                                effective_at=datetime(2026, 1, 5, 12, tzinfo=UTC), source="fhir",
                                category="vital-signs", encounter_ref="Encounter/e1")
    orphan = ObservationRecord(natural_key="Observation/x2", patient_ref="Patient/nobody", variable="heart_rate",
                               code_system="http://loinc.org", code="8867-4", value=90.0, unit="/min",
                               effective_at=datetime(2026, 1, 5, 12, tzinfo=UTC), source="fhir",
                               category="vital-signs")
    result = writer.write(UnitOfWork(where="bundle", records=[reading, orphan], atomic=True), None)
    assert result.rejections and calls == []
    writer.write(UnitOfWork(where="bundle", records=[reading], atomic=True), None)
    assert [t for _, t in calls] == [datetime(2026, 1, 5, 12, tzinfo=UTC)]


def test_without_a_hook_the_writer_is_unchanged(store: Store, tmp_path: Path) -> None:
    base = tmp_path / "in"
    _write(base / "Patient.ndjson", [F.patient("p1")])
    _write(base / "Observation.ndjson", [F.vital("o1", "8867-4", 80, "/min", eid=None)])
    summary = ingest_paths([base], ClinicalWriter(store.engine, store.keyring))
    assert summary.total("inserted") == 2 and summary.total("rejected") == 0
