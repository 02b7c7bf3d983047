"""Models page (cards, calibration, ROC, thresholds; promote and roll back with confirmation), admin pages
(users, units, roles, tokens) and the audit viewer with CSV export."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

from flask.testing import FlaskClient

from carecast.models.registry import Registry
from carecast.store import Store
from tests.unit.serving.conftest import FakePredictor, Hospital, audit_count, bearer

from .conftest import HTML, actions, session_csrf

TASK = "deterioration_24h"
CARD = {"description": "test model", "estimator": "hist_gradient_boosting",
        "metrics": {"auroc": {"value": 0.81, "ci_low": 0.78, "ci_high": 0.84}, "brier": {"value": 0.05}},
        "baselines": {"news2": 0.7}, "threshold": {"threshold": 0.3, "alerts_per_100_patient_days": 4.2},
        "training_data": {"n": 1234}, "feature_schema": {"columns": ["a"], "hash": "abc"}}
REPORT = {"reliability": [{"mean_predicted": 0.05, "observed": 0.04, "n": 100},
                          {"mean_predicted": 0.4, "observed": 0.45, "n": 50}],
          "thresholds": [{"threshold": 0.1, "flagged_share": 0.3, "sensitivity": 0.9, "specificity": 0.72, "ppv": 0.1,
                          "alerts_per_100_patient_days": 20.0, "median_lead_time_hours": 10.0},
                         {"threshold": 0.3, "flagged_share": 0.05, "sensitivity": 0.5, "specificity": 0.96,
                          "ppv": 0.3, "alerts_per_100_patient_days": 4.2, "median_lead_time_hours": 6.5}]}


def _models(registry: Registry, tmp_path: Path) -> tuple[str, str]:
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text(json.dumps(REPORT))
    first = registry.save(TASK, {"w": 1}, CARD, report_dir=report)
    registry.promote(TASK, first, "champion", reason="first")
    second = registry.save(TASK, {"w": 2}, {**CARD, "estimator": "logistic"})
    registry.promote(TASK, second, "challenger", reason="shadow")
    return first, second


def test_models_page_shows_cards_curves_and_thresholds(browser: Callable[[str], FlaskClient], registry: Registry,
                                                       tmp_path: Path) -> None:
    first, second = _models(registry, tmp_path)
    page = browser("data_scientist").get("/ui/models", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert first in text and second in text and "Champion" in text and "Challenger" in text
    assert "0.810" in text and "0.780" in text  # AUROC with its CI
    assert "Calibration: observed outcome rate" in text and "ROC: sensitivity" in text
    assert "(chosen)" in text and "4.2" in text and "6.5 h" in text  # the threshold table with alert burden
    assert "Promote to champion" in text


def test_promote_needs_confirmation_a_reason_and_the_permission(
        browser: Callable[[str], FlaskClient], registry: Registry, tmp_path: Path, store: Store,
        predictor: FakePredictor) -> None:
    first, second = _models(registry, tmp_path)
    clinician = browser("clinician")  # may read models, not manage them
    assert "Promote to champion" not in clinician.get("/ui/models", headers=HTML).text
    assert clinician.get(f"/ui/models/{TASK}/promote?version={second}", headers=HTML).status_code == 403
    scientist = browser("data_scientist")
    confirm = scientist.get(f"/ui/models/{TASK}/promote?version={second}", headers=HTML)
    assert confirm.status_code == 200 and f"Promote <code>{second}</code>" in confirm.text
    assert registry.aliases(TASK)["champion"] == first  # nothing changes before the confirmation
    token = session_csrf(scientist)
    no_reason = scientist.post(f"/ui/models/{TASK}/promote", data={"version": second, "csrf_token": token},
                               headers=HTML)
    assert no_reason.status_code == 422 and registry.aliases(TASK)["champion"] == first
    refreshes = predictor.refreshes
    done = scientist.post(f"/ui/models/{TASK}/promote", data={"version": second, "reason": "better calibrated",
                                                              "csrf_token": token}, headers=HTML)
    assert done.status_code == 302 and registry.aliases(TASK)["champion"] == second
    assert predictor.refreshes > refreshes and actions(store)[-1] == "model:promote"
    back = scientist.post(f"/ui/models/{TASK}/rollback", data={"reason": "alert rate too high",
                                                               "csrf_token": token}, headers=HTML)
    assert back.status_code == 302 and registry.aliases(TASK)["champion"] == first
    assert actions(store)[-1] == "model:rollback"


def test_admin_creates_users_sets_units_and_manages_tokens(browser: Callable[[str], FlaskClient], store: Store,
                                                           client: FlaskClient, hospital: Hospital) -> None:
    admin = browser("admin")
    token = session_csrf(admin)
    made = admin.post("/ui/admin/users", data={"username": "night-nurse", "role": "nurse", "units": "Ward B",
                                               "password": "a long enough password", "csrf_token": token},
                      headers=HTML)
    assert made.status_code == 302 and actions(store)[-1] == "user:create"
    weak = admin.post("/ui/admin/users", data={"username": "weak", "role": "nurse", "password": "short",
                                               "csrf_token": token}, headers=HTML)
    assert weak.status_code == 422 and "at least 12 characters" in weak.text
    users = admin.get("/ui/admin/users", headers=HTML).text
    assert "night-nurse" in users and 'value="Ward B"' in users
    assert admin.post("/ui/admin/users/night-nurse/units", data={"units": "Ward A, Ward B", "csrf_token": token},
                      headers=HTML).status_code == 302
    assert 'value="Ward A, Ward B"' in admin.get("/ui/admin/users", headers=HTML).text
    assert "Ward B" in admin.get("/ui/admin/units", headers=HTML).text
    roles = admin.get("/ui/admin/roles", headers=HTML).text
    assert "<code>audit:read</code>" in roles and "auditor" in roles

    issued = admin.post("/ui/admin/tokens", data={"username": "night-nurse", "name": "scanner", "ttl_hours": "12",
                                                  "scopes": ["patient:read"], "csrf_token": token}, headers=HTML)
    assert issued.status_code == 201 and actions(store)[-1] == "token:issue"
    new = re.search(r'id="new-token">(cc_[^<]+)<', issued.text)
    assert new is not None
    assert client.get("/api/v1/patients", headers=bearer(new.group(1))).status_code == 200  # scoped, works
    assert new.group(1) not in admin.get("/ui/admin/tokens", headers=HTML).text  # shown once only
    token_id = re.findall(r"/ui/admin/tokens/(\d+)/revoke", admin.get("/ui/admin/tokens", headers=HTML).text)[-1]
    assert admin.post(f"/ui/admin/tokens/{token_id}/revoke", data={"csrf_token": token},
                      headers=HTML).status_code == 302
    assert client.get("/api/v1/patients", headers=bearer(new.group(1))).status_code == 401


def test_auditor_filters_the_log_and_exports_csv(browser: Callable[[str], FlaskClient], store: Store,
                                                 hospital: Hospital) -> None:
    nurse = browser("nurse")
    nurse.get(f"/ui/patients/{hospital.uids['a1']}", headers=HTML)
    nurse.get(f"/ui/patients/{hospital.uids['b1']}", headers=HTML)  # refused: auth:denied
    auditor = browser("auditor")
    page = auditor.get("/ui/audit", headers=HTML)
    assert page.status_code == 200 and "patient:read" in page.text and "auth:denied" in page.text
    assert actions(store)[-1] == "audit:read"
    only = auditor.get("/ui/audit?action=patient:read&username=test-nurse", headers=HTML).text
    table = only.split('id="audit-table"', 1)[1]
    assert "patient:read" in table and "auth:denied" not in table
    denied = auditor.get("/ui/audit?outcome=denied", headers=HTML).text.split('id="audit-table"', 1)[1]
    assert "auth:denied" in denied and "patient:read</code>" not in denied
    assert auditor.get("/ui/audit?since=yesterday", headers=HTML).status_code == 400

    before = audit_count(store)
    export = auditor.get("/ui/audit.csv?username=test-nurse", headers=HTML)
    assert export.status_code == 200 and export.mimetype == "text/csv"
    assert "attachment" in export.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert {r["action"] for r in rows} >= {"patient:read", "auth:denied", "auth:login"}
    assert {r["username"] for r in rows} == {"test-nurse"}
    assert any(r["patient_uid"] == hospital.uids["b1"] for r in rows)
    assert audit_count(store) == before + 1 and actions(store)[-1] == "audit:export"
    assert browser("nurse").get("/ui/audit.csv", headers=HTML).status_code == 403
