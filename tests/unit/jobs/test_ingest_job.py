"""Files -> store, on SQLite and PostgreSQL: idempotence, transactions, quarantine, exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import func, select
from tests import factories as F

from carecast.errors import ExitCode
from carecast.jobs.ingest import ingest_paths
from carecast.store import Store, queries
from carecast.store import schema as S


def _write_ndjson(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    return path


def _count(store: Store, model: type) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def _hospital(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    _write_ndjson(d / "Patient.ndjson", [F.patient("p1"), F.patient("p2")])
    _write_ndjson(d / "Encounter.ndjson", [
        F.encounter("e1", "p1", units=(("Ward A", "2026-01-05T08:00:00Z"), ("ICU", "2026-01-05T20:00:00Z"))),
        F.encounter("e2", "p2", end="2026-01-06T10:00:00Z"),
        F.encounter("e3", "p2", start="2026-01-20T10:00:00Z"),
    ])
    _write_ndjson(d / "Observation.ndjson", [
        F.vital("o1", "8867-4", 80, "/min"), F.vital("o2", "8310-5", 100.4, "[degF]"),
        F.blood_pressure("bp1", 120, 80), F.vital("o3", "8867-4", 81, "/min", pid="p2", eid="e2"),
    ])
    _write_ndjson(d / "Condition.ndjson", [F.condition("c1"), F.condition("c2", "U07.1", pid="p2")])
    (d / "wearables.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [
        {"device_id": F.SECRET_IDENTIFIERS["device"], "patient": "Patient/p1", "type": "heart_rate", "value": 90,
         "unit": "/min", "time": "2026-01-05T10:01:00Z"},
        {"device_id": F.SECRET_IDENTIFIERS["device"], "patient": "Patient/p1", "type": "heart_rate", "value": 90,
         "unit": "/min", "time": "2026-01-05T10:01:00Z"},  # exact duplicate
        {"device_id": F.SECRET_IDENTIFIERS["device"], "patient": "Patient/p1", "type": "spo2", "value": 97,
         "unit": "%", "time": "2026-01-05T10:00:00Z"},  # out of order
    ]))
    return d


def test_ingest_hospital_then_replay_changes_nothing(store: Store, tmp_path: Path) -> None:
    d = _hospital(tmp_path)
    first = ingest_paths([d], store.writer())
    assert first.exit_code == ExitCode.OK, first.to_dict()
    c = queries.counts(store.engine)
    assert c["patients"] == 2 and c["encounters"] == 3 and c["conditions"] == 2
    assert c["observations"] == 5 + 2  # 2 HR, temp, BP x2, + 2 wearable (duplicate dropped)
    assert c["devices"] == 1
    assert queries.outcome_counts(store.engine) == {"icu_transfer": 1, "readmission": 1}
    snapshot = queries.counts(store.engine)
    for _ in range(2):
        again = ingest_paths([d], store.writer())
        assert again.total("inserted") == 0 and again.total("updated") == 0
        assert again.exit_code == ExitCode.OK
        after = queries.counts(store.engine)
        assert {k: v for k, v in after.items() if k != "ingest_batches"} == \
            {k: v for k, v in snapshot.items() if k != "ingest_batches"}


def test_changed_resource_updates_in_place(store: Store, tmp_path: Path) -> None:
    d = _hospital(tmp_path)
    ingest_paths([d], store.writer())
    _write_ndjson(d / "Observation.ndjson", [F.vital("o1", "8867-4", 95, "/min")])
    summary = ingest_paths([d / "Observation.ndjson"], store.writer())
    assert summary.total("updated") == 1 and summary.total("inserted") == 0
    with store.engine.connect() as conn:
        values = conn.execute(select(S.Observation.value).where(S.Observation.variable == "heart_rate")
                              .order_by(S.Observation.value)).scalars().all()
    assert 95.0 in values and 80.0 not in values


def test_temperature_stored_in_celsius(store: Store, tmp_path: Path) -> None:
    ingest_paths([_hospital(tmp_path)], store.writer())
    with store.engine.connect() as conn:
        temp = conn.execute(select(S.Observation.value, S.Observation.unit)
                            .where(S.Observation.variable == "temperature")).one()
    assert abs(temp.value - 38.0) < 1e-9 and temp.unit == "Cel"


def test_bad_records_quarantined_good_ones_kept(store: Store, tmp_path: Path) -> None:
    d = _hospital(tmp_path)
    ingest_paths([d], store.writer())
    bad = _write_ndjson(tmp_path / "more.ndjson", [
        F.vital("n1", "8867-4", 70, "/min"), F.vital("n2", "8867-4", 700, "/min"),
        F.vital("n3", "8867-4", 70, "/min", pid="nobody", eid=None),
    ])
    summary = ingest_paths([bad], store.writer())
    assert summary.exit_code == ExitCode.PARTIAL
    assert summary.total("inserted") == 1 and summary.total("rejected") == 2
    rows = queries.quarantine(store.engine)
    got = {(r["location"], r["field"]) for r in rows}
    assert got == {("more.ndjson:line 2", "valueQuantity.value"), ("more.ndjson:line 3", "subject")}
    with store.engine.connect() as conn:
        raw = conn.execute(select(S.IngestRecord.raw_enc)).scalars().all()
    assert all(r is not None and b"resourceType" not in r for r in raw)  # kept, encrypted


def test_nothing_stored_exit_code(store: Store, tmp_path: Path) -> None:
    bad = _write_ndjson(tmp_path / "Observation.ndjson", [F.vital("n1", "8867-4", 70, "/min", pid="ghost")])
    assert ingest_paths([bad], store.writer()).exit_code == ExitCode.NOTHING_STORED


def test_transaction_with_bad_last_entry_changes_no_rows(store: Store, tmp_path: Path) -> None:
    before = queries.counts(store.engine)
    doc = F.bundle([F.patient("t1"), F.encounter("te1", "t1"), F.vital("to1", "8867-4", 80, "/min", pid="t1",
                                                                      eid="te1"),
                    F.vital("to2", "8867-4", 1000, "/min", pid="t1", eid="te1")])
    path = tmp_path / "tx.json"
    path.write_bytes(orjson.dumps(doc))
    summary = ingest_paths([path], store.writer())
    assert summary.exit_code == ExitCode.NOTHING_STORED
    after = queries.counts(store.engine)
    for table in ("patients", "encounters", "observations", "outcomes"):
        assert after[table] == before[table]
    assert summary.total("rejected") == 4


def test_transaction_failing_at_store_level_rolls_back(store: Store, tmp_path: Path) -> None:
    doc = F.bundle([F.patient("t1"), F.vital("to1", "8867-4", 80, "/min", pid="t1", eid=None),
                    F.vital("to2", "8867-4", 80, "/min", pid="missing", eid=None)])
    path = tmp_path / "tx.json"
    path.write_bytes(orjson.dumps(doc))
    summary = ingest_paths([path], store.writer())
    assert summary.total("rejected") == 3
    assert queries.counts(store.engine)["patients"] == 0
    # The same bundle, fixed, goes in whole afterwards (no stale ids from the rolled-back attempt).
    doc["entry"].pop()
    path.write_bytes(orjson.dumps(doc))
    assert ingest_paths([path], store.writer()).exit_code == ExitCode.OK
    assert queries.counts(store.engine)["observations"] == 1


def test_mrn_reference_resolves_through_blind_index(store: Store, tmp_path: Path) -> None:
    _write_ndjson(tmp_path / "Patient.ndjson", [F.patient("p9", mrn="MRN-LOOKUP-1")])
    (tmp_path / "w.jsonl").write_bytes(orjson.dumps({
        "device_id": "D1", "patient": "mrn:MRN-LOOKUP-1", "type": "spo2", "value": 93, "unit": "%",
        "time": "2026-01-05T10:00:00Z"}) + b"\n")
    summary = ingest_paths([tmp_path], store.writer())
    assert summary.exit_code == ExitCode.OK, summary.to_dict()
    assert _count(store, S.Observation) == 1


def test_dicom_links_by_mrn_and_encrypts_identifiers(store: Store, tmp_path: Path) -> None:
    import shutil

    import pydicom
    from pydicom.data import get_testdata_file

    src = Path(str(get_testdata_file("CT_small.dcm", download=False)))
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(src, scans / "ct.dcm")
    (scans / "not-a-scan.dcm").write_text("hello")
    # Unknown patient first: quarantined with the tag named, nothing stored.
    summary = ingest_paths([scans], store.writer())
    assert summary.total("inserted") == 0
    reasons = {(r["field"], r["location"]) for r in queries.quarantine(store.engine)}
    assert ("PatientID", "ct.dcm") in reasons
    assert any(field and loc == "not-a-scan.dcm" for field, loc in reasons)
    # Once the patient exists, the same file links to it by MRN.
    _write_ndjson(tmp_path / "Patient.ndjson", [F.patient("px", mrn=str(ds.PatientID))])
    ingest_paths([tmp_path / "Patient.ndjson"], store.writer())
    summary = ingest_paths([scans / "ct.dcm"], store.writer())
    assert summary.total("inserted") == 1, summary.to_dict()
    with store.engine.connect() as conn:
        study = conn.execute(select(S.ImagingStudy)).one()
        series = conn.execute(select(S.ImagingSeries)).all()
    assert study.modality == "CT" and study.source == "dicom" and len(series) == 1
    assert store.keyring.decrypt(study.study_uid_enc, "imaging_studies.study_uid") == str(ds.StudyInstanceUID)
    # Replaying the file changes nothing.
    assert ingest_paths([scans / "ct.dcm"], store.writer()).total("inserted") == 0


def test_csv_with_mapping(store: Store, tmp_path: Path) -> None:
    from carecast.ingest.tabular import parse_mapping

    _write_ndjson(tmp_path / "Patient.ndjson", [F.patient("p1", mrn="CSV-1")])
    ingest_paths([tmp_path / "Patient.ndjson"], store.writer())
    csv_path = tmp_path / "vitals.csv"
    csv_path.write_text("mrn,charted,hr,temp_f\nCSV-1,2026-01-05 08:00,88,99.5\nCSV-1,2026-01-05 09:00,abc,\n")
    mapping = parse_mapping({
        "name": "ward-export",
        "patient": {"column": "mrn", "kind": "mrn"},
        "time": {"column": "charted", "format": "%Y-%m-%d %H:%M", "timezone": "America/New_York"},
        "columns": {"hr": {"variable": "heart_rate", "unit": "/min"},
                    "temp_f": {"variable": "temperature", "unit": "[degF]"}},
    })
    summary = ingest_paths([csv_path], store.writer(), csv_mapping=mapping)
    assert summary.exit_code == ExitCode.PARTIAL, summary.to_dict()
    assert summary.total("inserted") == 2 and summary.total("rejected") == 1
    with store.engine.connect() as conn:
        rows = {r.variable: r for r in conn.execute(select(S.Observation))}
    assert abs(rows["temperature"].value - 37.5) < 1e-9
    assert rows["heart_rate"].effective_at.isoformat() == "2026-01-05T13:00:00+00:00"
