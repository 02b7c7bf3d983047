"""Ward and patient pages: the user's units only, sorted by risk, one audit row per page, break-glass,
alerts acknowledged or dismissed with a reason (stored as feedback), and the live fragments."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from sqlalchemy import select

from carecast.models.registry import Registry
from carecast.models.tasks import TASKS
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.alert_feedback import REASON_SYSTEM, UI_SOURCE
from tests.unit.serving.conftest import SECRETS, Hospital, assert_no_secrets, audit_count, audit_rows

from .conftest import HTML, actions, session_csrf

FRAGMENT = {"Accept": "application/x-carecast-fragment"}


def _order(html: str, hospital: Hospital) -> list[str]:
    found = sorted((html.find(f'data-uid="{uid}"'), name) for name, uid in hospital.uids.items()
                   if f'data-uid="{uid}"' in html)
    return [name for _, name in found]


def test_ward_lists_own_units_highest_risk_first_with_one_audit_row(
        browser: Callable[[str], FlaskClient], hospital: Hospital, store: Store) -> None:
    nurse = browser("nurse")
    before = audit_count(store)
    page = nurse.get("/ui/ward", headers=HTML)
    assert page.status_code == 200
    assert _order(page.text, hospital) == ["a2", "a1"]  # a2 (60%) above a1 (20%); b1 is on Ward B
    assert "60%" in page.text and "20%" in page.text and 'class="spark"' in page.text
    assert "NEWS2" in page.text
    rows = audit_rows(store)[before:]
    assert [r.action for r in rows] == ["patient:list"] and rows[0].username == "test-nurse"


def test_ward_shows_names_to_roles_with_demographics(browser: Callable[[str], FlaskClient],
                                                     hospital: Hospital) -> None:
    page = browser("clinician").get("/ui/ward", headers=HTML)
    assert "Zyxwvutson" in page.text and "MRN-7731-QX-a2" in page.text


def test_ward_unit_filter_stays_within_the_users_units(browser: Callable[[str], FlaskClient], hospital: Hospital,
                                                       store: Store) -> None:
    nurse = browser("nurse")
    assert nurse.get("/ui/ward?unit=Ward+B", headers=HTML).status_code == 403
    assert actions(store)[-1] == "auth:denied"
    assert browser("admin").get("/ui/ward", headers=HTML).status_code == 403  # no patient:read


def test_ward_table_fragment_is_audited(browser: Callable[[str], FlaskClient], hospital: Hospital,
                                        store: Store) -> None:
    nurse = browser("nurse")
    before = audit_count(store)
    rows = nurse.get("/ui/ward/table", headers=FRAGMENT)
    assert rows.status_code == 200 and "<html" not in rows.text and _order(rows.text, hospital) == ["a2", "a1"]
    assert audit_count(store) == before + 1 and actions(store)[-1] == "patient:list"


def test_patient_page_shows_risk_chart_threshold_factors_and_vitals(
        browser: Callable[[str], FlaskClient], hospital: Hospital, store: Store) -> None:
    nurse = browser("nurse")
    uid = hospital.uids["a1"]
    before = audit_count(store)
    page = nurse.get(f"/ui/patients/{uid}", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert "Risk over the last 7 days" in text and 'class="threshold"' in text  # trajectory with threshold line
    assert "heart rate 120/min" in text and "raises the risk" in text  # factors in clinical words
    assert "Heart rate" in text and 'class="normal"' in text  # vitals with the normal range shaded
    assert "v1" in text  # model version
    rows = audit_rows(store)[before:]
    assert [(r.action, r.patient_uid) for r in rows] == [("patient:read", uid)]


def test_out_of_unit_patient_needs_break_glass(browser: Callable[[str], FlaskClient], hospital: Hospital,
                                               store: Store) -> None:
    nurse = browser("nurse")
    uid = hospital.uids["b1"]
    before = audit_count(store)
    page = nurse.get(f"/ui/patients/{uid}", headers=HTML)
    assert page.status_code == 403 and "not on your units" in page.text
    assert_no_secrets(page.text)
    assert [(r.action, r.patient_uid) for r in audit_rows(store)[before:]] == [("auth:denied", uid)]
    token = session_csrf(nurse)
    short = nurse.post(f"/ui/patients/{uid}/break-glass", data={"reason": "because", "minutes": "30",
                                                                 "csrf_token": token}, headers=HTML)
    assert short.status_code == 422 and "at least 10 characters" in short.text
    granted = nurse.post(f"/ui/patients/{uid}/break-glass", data={
        "reason": "covering the cardiac arrest call", "minutes": "30", "csrf_token": token}, headers=HTML)
    assert granted.status_code == 302 and granted.headers["Location"] == f"/ui/patients/{uid}"
    assert actions(store)[-1] == "patient:break-glass"
    with store.engine.connect() as conn:
        reason = conn.execute(select(S.BreakGlass.reason_enc)).scalar_one()
    assert b"cardiac" not in reason  # kept encrypted
    assert nurse.get(f"/ui/patients/{uid}", headers=HTML).status_code == 200


def test_unknown_patient_is_a_404_page(browser: Callable[[str], FlaskClient], hospital: Hospital) -> None:
    page = browser("nurse").get("/ui/patients/not-a-patient", headers=HTML)
    assert page.status_code == 404 and page.mimetype == "text/html" and "Not found" in page.text


def _alert_url(hospital: Hospital, store: Store, name: str) -> str:
    with store.engine.connect() as conn:
        pid = conn.execute(select(S.Prediction.id).where(S.Prediction.patient_id == hospital.ids[name])
                           .order_by(S.Prediction.data_time.desc())).scalars().first()
    return f"/ui/patients/{hospital.uids[name]}/alerts/{pid}"


def test_alert_acknowledge_and_dismiss_are_stored_as_feedback(
        browser: Callable[[str], FlaskClient], hospital: Hospital, store: Store) -> None:
    nurse = browser("nurse")
    uid = hospital.uids["a2"]
    page = nurse.get(f"/ui/patients/{uid}", headers=HTML)
    assert "Acknowledge" in page.text and "Reason to dismiss" in page.text  # a2 is in the high band
    url = _alert_url(hospital, store, "a2")
    token = session_csrf(nurse)
    missing = nurse.post(url, data={"action": "dismiss", "csrf_token": token}, headers=HTML)
    assert missing.status_code == 422
    counted = {o: REGISTRY.get_sample_value("carecast_feedback_total", {"channel": "ui", "outcome": o}) or 0.0
               for o in ("dismissed", "acknowledged")}
    dismissed = nurse.post(url, data={"action": "dismiss", "reason": "data-artefact", "comment": "probe fell off",
                                      "csrf_token": token}, headers=HTML)
    assert dismissed.status_code == 302
    assert actions(store)[-1] == "alert:dismiss"
    acknowledged = nurse.post(url, data={"action": "acknowledge", "csrf_token": token}, headers=HTML)
    assert acknowledged.status_code == 302
    with store.engine.connect() as conn:
        rows = conn.execute(select(S.CdsFeedback).order_by(S.CdsFeedback.id)).all()
    assert [(r.client_iss, r.service, r.outcome, r.reason_system, r.reason_code) for r in rows] == [
        (UI_SOURCE, "deterioration_24h", "overridden", REASON_SYSTEM, "data-artefact"),
        (UI_SOURCE, "deterioration_24h", "accepted", None, None)]
    assert rows[0].comment_enc is not None and b"probe" not in rows[0].comment_enc
    assert rows[0].card_uuid == rows[1].card_uuid
    for outcome, before in counted.items():  # the feedback metric the monitoring rules read
        assert REGISTRY.get_sample_value("carecast_feedback_total", {"channel": "ui", "outcome": outcome}) \
            == before + 1
    assert "Status: <strong>acknowledged</strong>" in nurse.get(f"/ui/patients/{uid}", headers=HTML).text


def test_alerts_of_other_patients_or_low_scores_are_refused(
        browser: Callable[[str], FlaskClient], hospital: Hospital, store: Store) -> None:
    nurse = browser("nurse")
    token = session_csrf(nurse)
    low = _alert_url(hospital, store, "a1")  # medium band: no alert
    assert nurse.post(low, data={"action": "acknowledge", "csrf_token": token}, headers=HTML).status_code == 404
    other = _alert_url(hospital, store, "b1")
    assert nurse.post(other, data={"action": "acknowledge", "csrf_token": token}, headers=HTML).status_code == 403
    with store.engine.connect() as conn:
        assert conn.execute(select(S.CdsFeedback.id)).first() is None


def test_risk_panel_fragment_is_audited_and_guarded(browser: Callable[[str], FlaskClient], hospital: Hospital,
                                                    store: Store) -> None:
    nurse = browser("nurse")
    panel = nurse.get(f"/ui/patients/{hospital.uids['a1']}/risk", headers=FRAGMENT)
    assert panel.status_code == 200 and "<html" not in panel.text and "heart rate 120/min" in panel.text
    assert actions(store)[-1] == "prediction:read"
    assert nurse.get(f"/ui/patients/{hospital.uids['b1']}/risk", headers=FRAGMENT).status_code == 403


def test_pages_never_log_or_echo_identifiers_to_roles_without_them(
        browser: Callable[[str], FlaskClient], hospital: Hospital) -> None:
    for role in ("data_scientist", "admin", "auditor"):
        page = browser(role).get(f"/ui/patients/{hospital.uids['a1']}", headers=HTML)
        assert page.status_code == 403
        for secret in SECRETS:
            assert secret not in page.text


def test_the_ward_page_reads_each_champion_card_once(browser: Callable[[str], FlaskClient], hospital: Hospital,
                                                    registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    card = registry.card

    def counted(task: str, version: str = "champion") -> dict[str, object]:
        read.append(task)
        return card(task, version)

    monkeypatch.setattr(registry, "card", counted)
    assert browser("nurse").get("/ui/ward", headers=HTML).status_code == 200
    assert sorted(read) == sorted(TASKS)  # the thresholds, once per request, however many places need them


def test_the_ward_reads_the_risks_in_a_fixed_number_of_queries(browser: Callable[[str], FlaskClient],
                                                              hospital: Hospital, store: Store) -> None:
    """One query per task for the current risks and one for every sparkline, however many patients."""
    from sqlalchemy import event

    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        page = browser("nurse").get("/ui/ward", headers=HTML)
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert page.status_code == 200 and _order(page.text, hospital) == ["a2", "a1"]
    assert sum(1 for s in statements if "FROM predictions" in s) == len(TASKS) + 1
