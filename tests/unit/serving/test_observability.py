"""Every request is counted and logged (route templates, never paths or values); /metrics is restricted."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from carecast.monitoring import metrics
from carecast.serving.wsgi import prepare_metrics_dir
from tests.unit.serving.conftest import FakePredictor, Hospital, bearer

PREDICT_BODY = {"task": "deterioration_24h", "features": {"heart_rate_last_4h": 130}}


def _count(route: str, method: str, status: str) -> float:
    value = REGISTRY.get_sample_value("carecast_http_requests_total",
                                      {"route": route, "method": method, "status": status})
    return value or 0.0


def test_metrics_needs_its_permission(client: FlaskClient, tokens: dict[str, str]) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(tokens["clinician"])).status_code == 403
    assert client.get("/metrics", headers=bearer(tokens["auditor"])).status_code == 403
    ok = client.get("/metrics", headers=bearer(tokens["admin"]))
    assert ok.status_code == 200
    assert ok.headers["Content-Type"].startswith("text/plain")


def test_requests_and_predictions_are_counted_by_route_template(client: FlaskClient, tokens: dict[str, str],
                                                                hospital: Hospital) -> None:
    route = "/api/v1/patients/<uid>/predictions"
    before = _count(route, "GET", "200"), _count("/api/v1/predict", "POST", "200")
    predicted = REGISTRY.get_sample_value("carecast_predictions_total", {
        "task": "deterioration_24h", "model_version": FakePredictor.version, "source": "api"}) or 0.0
    uid = hospital.uids["a1"]
    assert client.get(f"/api/v1/patients/{uid}/predictions", headers=bearer(tokens["clinician"])).status_code == 200
    assert client.post("/api/v1/predict", json=PREDICT_BODY, headers=bearer(tokens["data_scientist"])).status_code \
        == 200
    assert (_count(route, "GET", "200"), _count("/api/v1/predict", "POST", "200")) == (before[0] + 1, before[1] + 1)
    after = REGISTRY.get_sample_value("carecast_predictions_total", {
        "task": "deterioration_24h", "model_version": FakePredictor.version, "source": "api"})
    assert after == predicted + 1
    text = client.get("/metrics", headers=bearer(tokens["admin"])).get_data(as_text=True)
    assert 'route="/api/v1/patients/<uid>/predictions"' in text
    assert uid not in text  # paths (patient ids) never become labels
    assert "carecast_scoring_queue_depth" in text
    assert "carecast_http_request_duration_seconds_bucket" in text


def test_access_log_is_json_with_request_context_and_no_patient_id(client: FlaskClient, tokens: dict[str, str],
                                                                   hospital: Hospital,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from carecast.monitoring.logs import JsonFormatter

    uid = hospital.uids["a1"]
    with caplog.at_level(logging.INFO, logger="carecast.access"):
        response = client.get(f"/api/v1/patients/{uid}", headers=bearer(tokens["clinician"]))
    assert response.status_code == 200
    records = [r for r in caplog.records if r.name == "carecast.access"]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    entry = orjson.loads(line)
    assert entry["route"] == "/api/v1/patients/<uid>" and entry["status"] == 200 and entry["method"] == "GET"
    assert entry["role"] == "clinician" and isinstance(entry["user_id"], int)
    assert entry["request_id"] == response.headers["X-Request-ID"]
    assert entry["latency_ms"] >= 0
    assert uid not in line


def test_an_unexpected_error_is_logged_with_the_error_id_the_response_carries(
        predictor: FakePredictor, client: FlaskClient, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom with SECRET-VALUE")

    monkeypatch.setattr(predictor, "predict", broken)
    with caplog.at_level(logging.ERROR, logger="carecast.serving"):
        response = client.post("/api/v1/predict", json=PREDICT_BODY, headers=bearer(tokens["data_scientist"]))
    assert response.status_code == 500
    error_id = response.json["error"]["error_id"]
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert len(logged) == 1
    assert "SECRET-VALUE" not in logged[0].getMessage()
    assert "SECRET-VALUE" not in response.get_data(as_text=True)


def test_gunicorn_workers_metrics_are_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory)}
    child = ("from carecast.monitoring import metrics\n"
             "for _ in range(2):  # the second time through the cached labelled children\n"
             "    metrics.observe_prediction('deterioration_24h', 'v9', 0.4, source='live', alert=True)\n"
             "    metrics.observe_request('/api/v1/predict', 'POST', 200, 0.004)\n")
    for _ in range(2):  # two worker processes
        subprocess.run([sys.executable, "-c", child], env=env, check=True)
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(directory))
    text = metrics.exposition([("carecast_test_gauge", "a gauge read at scrape time", lambda: 3.0)]).decode()
    assert 'carecast_predictions_total{model_version="v9",source="live",task="deterioration_24h"} 4.0' in text
    assert 'carecast_alerts_total{model_version="v9",task="deterioration_24h"} 4.0' in text
    assert 'carecast_http_requests_total{method="POST",route="/api/v1/predict",status="200"} 4.0' in text
    assert 'carecast_prediction_risk_bucket{le="0.5",model_version="v9",task="deterioration_24h"} 4.0' in text
    assert 'carecast_http_request_duration_seconds_count{method="POST",route="/api/v1/predict"} 4.0' in text
    assert "carecast_test_gauge 3.0" in text


def test_metrics_dir_must_be_prepared_before_metrics_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    assert "carecast.monitoring.metrics" in sys.modules  # imported by this test module
    with pytest.raises(RuntimeError, match="before"):
        prepare_metrics_dir(tmp_path / "m")
    child = ("import os, sys\nfrom pathlib import Path\nfrom carecast.serving.wsgi import prepare_metrics_dir\n"
             "d = prepare_metrics_dir(Path(sys.argv[1]))\n"
             "from carecast.monitoring import metrics\nmetrics.observe_feedback('ui', 'dismissed')\n"
             "print(len(list(d.iterdir())))\n")
    target = tmp_path / "fresh"
    (target).mkdir()
    (target / "stale.db").write_bytes(b"old run")
    env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV}
    out = subprocess.run([sys.executable, "-c", child, str(target)], env=env, check=True, capture_output=True,
                         text=True).stdout
    files = sorted(p.name for p in target.iterdir())
    assert "stale.db" not in files and int(out.strip()) >= 1  # the old run's values are gone, this run's written
