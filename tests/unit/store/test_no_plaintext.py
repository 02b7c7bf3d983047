"""Seeded identifiers never reach the database in clear: not the raw file, not a SQL dump."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select
from tests import factories as F

from carecast.jobs.ingest import ingest_paths
from carecast.store import Store
from carecast.store import schema as S

SEEDED = [v for k, v in F.SECRET_IDENTIFIERS.items()]


def _seed(store: Store, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "Patient.ndjson").write_bytes(orjson.dumps(F.patient("p1", mrn=F.SECRET_IDENTIFIERS["mrn"])) + b"\n")
    (d / "Encounter.ndjson").write_bytes(orjson.dumps(F.encounter("e1", "p1")) + b"\n")
    (d / "w.jsonl").write_bytes(orjson.dumps({
        "device_id": F.SECRET_IDENTIFIERS["device"], "patient": "Patient/p1", "type": "heart_rate", "value": 77,
        "unit": "/min", "time": "2026-01-05T10:00:00Z"}) + b"\n")
    # Free text can carry identifiers too (typed into a diagnosis display or a study description).
    named = f"{F.SECRET_IDENTIFIERS['family']} {F.SECRET_IDENTIFIERS['phone']}"
    condition = F.condition("c1", "I10")
    condition["code"]["coding"][0]["display"] = named
    study = {"resourceType": "ImagingStudy", "id": "s1", "status": "available",
             "subject": {"reference": "Patient/p1"}, "started": "2026-01-05T11:00:00Z", "description": named,
             "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4.5"}],
             "series": [{"uid": "1.2.3.4.5.6", "number": 1, "modality": {"code": "DX"}, "description": named,
                         "numberOfInstances": 1}]}
    (d / "Free.ndjson").write_bytes(orjson.dumps(condition) + b"\n" + orjson.dumps(study) + b"\n")
    # A quarantined record holding identifiers must not leak them either.
    bad = F.patient("p2", mrn=F.SECRET_IDENTIFIERS["mrn"] + "-B", gender="robot")
    (d / "Bad.ndjson").write_bytes(orjson.dumps(bad) + b"\n")
    summary = ingest_paths([d], store.writer())
    assert summary.total("inserted") >= 5 and summary.total("rejected") == 1, summary
    with store.engine.connect() as conn:  # the free text was stored (encrypted), not dropped
        assert conn.execute(select(S.Condition.display_enc)).scalar_one() is not None
        assert conn.execute(select(S.ImagingSeries.description_enc)).scalar_one() is not None


def _assert_clean(blob: bytes) -> None:
    for secret in SEEDED:
        assert secret.encode() not in blob, "a seeded identifier is stored in clear"
    assert b"Patient/p1" not in blob  # source ids are kept only as keyed hashes


def test_sqlite_file_and_dump_hold_no_identifiers(backend: str, store: Store, tmp_path: Path) -> None:
    if backend != "sqlite":
        pytest.skip("raw database file is a SQLite notion; PostgreSQL is covered by pg_dump below")
    _seed(store, tmp_path)
    db_path = Path(store.engine.url.database or "")
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        raw = conn.connection.dbapi_connection
        dump = "\n".join(raw.iterdump()).encode()  # type: ignore[union-attr]
    _assert_clean(db_path.read_bytes())
    _assert_clean(dump)
    assert b"INSERT INTO \"patients\"" in dump  # the dump does contain the patient row


def test_postgres_dump_holds_no_identifiers(backend: str, store: Store, tmp_path: Path) -> None:
    if backend != "postgres":
        pytest.skip("pg_dump is for PostgreSQL")
    _seed(store, tmp_path)
    url = store.engine.url
    schema = (url.query.get("options") or "").split("search_path=")[-1]
    dump = subprocess.run(
        ["pg_dump", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres",
         "-n", str(schema), "--data-only", "--inserts", url.database or "test"],
        check=True, capture_output=True).stdout
    _assert_clean(dump)
    assert b"INSERT INTO" in dump and b"patients" in dump


def test_identifiers_decrypt_back(store: Store, tmp_path: Path) -> None:
    _seed(store, tmp_path)
    with store.engine.connect() as conn:
        row = conn.execute(select(S.Patient).where(
            S.Patient.mrn_index == store.keyring.blind_index(F.SECRET_IDENTIFIERS["mrn"], "patients.mrn"))).one()
    assert store.keyring.decrypt(row.family_name_enc, "patients.family_name") == F.SECRET_IDENTIFIERS["family"]
    assert store.keyring.decrypt(row.ssn_enc, "patients.ssn") == F.SECRET_IDENTIFIERS["ssn"]
    assert store.keyring.decrypt(row.birth_date_enc, "patients.birth_date") == F.SECRET_IDENTIFIERS["birth"]
