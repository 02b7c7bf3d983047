"""Ingestion over HTTP: transactions all or nothing, per-record rejections, idempotent replays, and the
patients whose readings changed handed to the scoring queue."""

from __future__ import annotations

from typing import Any

import orjson
from flask.testing import FlaskClient

from carecast.store import Store, queries
from tests import factories as F

from .conftest import FakeQueue, Hospital, assert_no_secrets, audit_rows, bearer


def _ndjson(*items: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in items)


def _data_counts(store: Store) -> dict[str, int]:
    return {k: v for k, v in queries.counts(store.engine).items() if k not in ("ingest_batches", "quarantined_records")}


def test_transaction_with_a_bad_last_entry_changes_nothing(client: FlaskClient, store: Store, hospital: Hospital,
                                                           tokens: dict[str, str], queue: FakeQueue) -> None:
    before = _data_counts(store)
    bundle = F.bundle([F.patient("n1"), F.encounter("en1", "n1", units=(("Ward A", "2026-01-07T08:00:00Z"),)),
                       F.vital("on1", "8867-4", 88, "/min", pid="n1", eid="en1"),
                       F.vital("on2", "8867-4", 88, "/parsec", pid="n1", eid="en1")])
    response = client.post("/api/v1/ingest/fhir", data=orjson.dumps(bundle), content_type="application/fhir+json",
                           headers=bearer(tokens["nurse"]))
    assert response.status_code == 422 and response.json is not None
    fields = response.json["error"]["fields"]
    assert len(fields) == 4 and fields[0] == {"where": "bundle entry[3]", "field": "valueQuantity.code",
                                              "reason": fields[0]["reason"]}
    assert_no_secrets(response.get_data(as_text=True))
    assert _data_counts(store) == before
    assert queue.calls == []
    assert [(r.action, r.outcome) for r in audit_rows(store)] == [("ingest:fhir", "failed")]


def test_bundle_is_stored_once_and_changed_patients_are_queued(client: FlaskClient, store: Store, hospital: Hospital,
                                                              tokens: dict[str, str], queue: FakeQueue) -> None:
    bundle = F.bundle([F.vital("new1", "8867-4", 130, "/min", pid="a1", eid="ea1", when="2026-01-05T11:00:00Z"),
                       F.vital("new2", "9279-1", 28, "/min", pid="a1", eid="ea1", when="2026-01-05T11:00:00Z")])
    first = client.post("/api/v1/ingest/fhir", json=bundle, headers=bearer(tokens["nurse"]))
    assert first.status_code == 200 and first.json is not None
    assert {k: first.json[k] for k in ("status", "inserted", "updated", "unchanged", "rejected")} == {
        "status": "done", "inserted": 2, "updated": 0, "unchanged": 0, "rejected": 0}
    assert [ids for ids, _ in queue.calls] == [[hospital.ids["a1"]]]
    assert queue.calls[0][1] is not None and queue.calls[0][1].isoformat() == "2026-01-05T11:00:00+00:00"
    again = client.post("/api/v1/ingest/fhir", json=bundle, headers=bearer(tokens["nurse"]))
    assert again.json is not None and (again.json["inserted"], again.json["unchanged"]) == (0, 2)
    # nothing changed, but the patient is queued again: a retried POST may follow a commit whose scoring
    # job was lost; the worker finds the risk already stored and stores nothing
    assert [ids for ids, _ in queue.calls] == [[hospital.ids["a1"]], [hospital.ids["a1"]]]
    assert [r.action for r in audit_rows(store)] == ["ingest:fhir", "ingest:fhir"]


def test_ndjson_stores_good_lines_and_lists_bad_ones(client: FlaskClient, store: Store, hospital: Hospital,
                                                     tokens: dict[str, str]) -> None:
    body = _ndjson(F.vital("l1", "8867-4", 90, "/min", pid="a2", eid="ea2"),
                   F.vital("l2", "8867-4", 90, "/min", pid="nobody", eid=None)) + b"not json\n"
    response = client.post("/api/v1/ingest/ndjson", data=body, content_type="application/x-ndjson",
                           headers=bearer(tokens["admin"]))
    assert response.status_code == 200 and response.json is not None
    assert response.json["status"] == "partial" and response.json["inserted"] == 1
    assert [(r["where"], r["field"]) for r in response.json["rejections"]] == [
        ("upload.ndjson:line 3", "(line)"), ("upload.ndjson:line 2", "subject")]
    assert queries.counts(store.engine)["quarantined_records"] == 2


def test_wearable_readings_deduplicate(client: FlaskClient, store: Store, hospital: Hospital,
                                       tokens: dict[str, str], queue: FakeQueue) -> None:
    reading = {"device_id": "W-7", "patient": "Patient/b1", "type": "heart_rate", "value": 90, "unit": "/min",
               "time": "2026-01-05T10:01:00Z"}
    response = client.post("/api/v1/ingest/wearables", data=_ndjson(reading, reading),
                           content_type="application/x-ndjson", headers=bearer(tokens["admin"]))
    assert response.status_code == 200 and response.json is not None
    assert (response.json["inserted"], response.json["unchanged"]) == (1, 1)
    assert queue.calls[0][0] == [hospital.ids["b1"]]
    wrong_type = client.post("/api/v1/ingest/wearables", data=_ndjson(reading),
                             content_type="application/fhir+ndjson", headers=bearer(tokens["admin"]))
    assert wrong_type.status_code == 415


def test_empty_and_unreadable_uploads(client: FlaskClient, hospital: Hospital, tokens: dict[str, str]) -> None:
    admin = bearer(tokens["admin"])
    empty = client.post("/api/v1/ingest/ndjson", data=b"\n", content_type="application/x-ndjson", headers=admin)
    assert empty.status_code == 400
    not_dicom = client.post("/api/v1/ingest/dicom", data=b"MZ" + b"\0" * 300, content_type="application/dicom",
                            headers=admin)
    assert not_dicom.status_code == 422 and not_dicom.json is not None
    assert not_dicom.json["error"]["fields"] == [
        {"where": "upload.dcm", "field": "FileMetaInformation", "reason": "not a DICOM file"}]
