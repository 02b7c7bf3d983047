"""Scoring a feature payload: one row, a batch, unknown names refused, a missing model answered 503."""

from __future__ import annotations

from flask.testing import FlaskClient

from carecast.serving.api_v1 import MAX_BATCH_ROWS
from carecast.store import Store

from .conftest import FakePredictor, assert_no_secrets, audit_rows, bearer

TASK = "deterioration_24h"


def test_predict_scores_a_row_with_missing_features(client: FlaskClient, store: Store, tokens: dict[str, str]) -> None:
    response = client.post("/api/v1/predict", json={"task": TASK, "features": {"heart_rate_last_4h": 110, "age": None}},
                           headers=bearer(tokens["clinician"]))
    assert response.status_code == 200
    body = response.json
    assert body is not None
    assert body["task"] == TASK and body["model_version"] == "20260101T000000-fake0001"
    assert body["risk"] == 0.5 and body["band"] == "high" and body["threshold"] == 0.3
    assert body["factors"][0]["feature"] == "heart_rate_last_4h"
    assert [(r.action, r.patient_uid, r.detail) for r in audit_rows(store)] == [("prediction:create", None, TASK)]


def test_unknown_feature_names_are_listed(client: FlaskClient, store: Store, tokens: dict[str, str]) -> None:
    response = client.post("/api/v1/predict", json={"task": TASK, "features": {
        "heart_rate_last_4h": 1, "shoe_size": 44, "Zyxwvutson Quillamena": 1}}, headers=bearer(tokens["clinician"]))
    assert response.status_code == 422 and response.json is not None
    fields = response.json["error"]["fields"]
    assert [(f["field"], f["reason"]) for f in fields] == [("shoe_size", "unknown feature"),
                                                            ("(unprintable name)", "unknown feature")]
    assert_no_secrets(response.get_data(as_text=True))
    assert audit_rows(store) == []


def test_unknown_task_is_422_and_missing_model_503(client: FlaskClient, predictor: FakePredictor,
                                                   tokens: dict[str, str]) -> None:
    token = bearer(tokens["data_scientist"])
    unknown = client.post("/api/v1/predict", json={"task": "horoscope", "features": {}}, headers=token)
    assert unknown.status_code == 422 and unknown.json is not None
    assert unknown.json["error"]["fields"][0]["field"] == "task"
    no_model = client.post("/api/v1/predict", json={"task": "readmission_30d", "features": {}}, headers=token)
    assert no_model.status_code == 503 and "Retry-After" in no_model.headers
    predictor.loaded = False
    assert client.post("/api/v1/predict", json={"task": TASK, "features": {}}, headers=token).status_code == 503
    assert predictor.refreshes >= 1  # a newly promoted model is looked for before answering 503


def test_batch_scores_rows_in_order_and_caps_their_number(client: FlaskClient, store: Store,
                                                          tokens: dict[str, str]) -> None:
    token = bearer(tokens["data_scientist"])
    rows = [{"heart_rate_last_4h": hr} for hr in (70, 100, 140)]
    response = client.post("/api/v1/predict/batch", json={"task": TASK, "rows": rows}, headers=token)
    assert response.status_code == 200 and response.json is not None
    assert [p["risk"] for p in response.json["predictions"]] == [0.1, 0.4, 0.8]
    assert [(r.action, r.detail) for r in audit_rows(store)] == [("prediction:batch", f"{TASK} rows=3")]
    too_many = client.post("/api/v1/predict/batch", json={"task": TASK, "rows": [{}] * (MAX_BATCH_ROWS + 1)},
                           headers=token)
    assert too_many.status_code == 422 and too_many.json is not None
    assert too_many.json["error"]["fields"] == [
        {"where": "body", "field": "rows", "reason": f"has more than {MAX_BATCH_ROWS} items"}]
    bad_row = client.post("/api/v1/predict/batch", json={"task": TASK, "rows": [{}, {"nope": 1}]}, headers=token)
    assert bad_row.status_code == 422 and bad_row.json is not None
    assert bad_row.json["error"]["fields"] == [{"where": "rows[1]", "field": "nope", "reason": "unknown feature"}]


def test_a_row_the_model_cannot_read_is_422_naming_where(client: FlaskClient, tokens: dict[str, str]) -> None:
    token = bearer(tokens["clinician"])
    one = client.post("/api/v1/predict", json={"task": TASK, "features": {"heart_rate_last_4h": "Zyxwvutson"}},
                      headers=token)
    assert one.status_code == 422 and one.json is not None
    assert one.json["error"]["fields"] == [
        {"where": "features", "field": None, "reason": "feature heart_rate_last_4h must be a number or null"}]
    assert_no_secrets(one.get_data(as_text=True))
    batch = client.post("/api/v1/predict/batch", json={"task": TASK, "rows": [{}, {"heart_rate_last_4h": "x"}]},
                        headers=token)
    assert batch.status_code == 422 and batch.json is not None
    assert batch.json["error"]["fields"][0]["where"] == "rows[1]"
