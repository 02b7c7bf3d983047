"""CDS Hooks over HTTP: discovery, the patient-view card from a prefetch (a patient never stored, nothing
written) and from the store, feedback with encrypted comments, and every JWT refusal answered 401 and
audited exactly once, on both backends."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from carecast.serving.auth import authentication_of, is_public, permission_of
from carecast.store import Store
from carecast.store import schema as S
from tests import factories as F
from tests.unit.security.test_cds_jwt import (
    AUD,
    ISS,
    Signer,
    alg_none_token,
    ec_signer,
    hs256_confusion_token,
    make_token,
    register,
    rsa_signer,
)

from .conftest import SECRETS, Hospital, assert_no_secrets, audit_rows, seed_hospital

SERVICE = "/cds-services/carecast-deterioration"
FEEDBACK = SERVICE + "/feedback"
COUNTED = (S.Patient, S.Encounter, S.Observation, S.Condition, S.Prediction, S.IngestBatch, S.IngestRecord)


@pytest.fixture
def ehr(store: Store) -> Signer:
    signer = ec_signer()
    register(store, signer)
    return signer


def _hours_ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"http://ehr.example/fhir/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in resources]}


def _prefetch(pid: str = "x9", *, heart_rate: float = 130, discharged: bool = False,
              vitals: bool = True) -> dict[str, Any]:
    """What an EHR prefetches for a patient admitted 10 hours ago, with vitals taken an hour ago."""
    admitted = _hours_ago(10)
    taken = _hours_ago(1)
    eid = f"enc-{pid}"
    encounter = F.encounter(eid, pid, start=admitted, units=(("Ward C", admitted),),
                            end=_hours_ago(0.5) if discharged else None)
    observations = [F.vital(f"{pid}-hr", "8867-4", heart_rate, "/min", pid=pid, eid=eid, when=taken),
                    F.vital(f"{pid}-rr", "9279-1", 24, "/min", pid=pid, eid=eid, when=taken),
                    F.vital(f"{pid}-xx", "99999-9", 1, "/min", pid=pid, eid=eid, when=taken)] if vitals else []
    return {"patient": F.patient(pid), "encounters": _searchset(encounter), "vitals": _searchset(*observations),
            "labs": _searchset(), "conditions": _searchset(F.condition(f"{pid}-c1", "I50.9", pid=pid)),
            "unused": None}


def _call(patient_id: str = "x9", prefetch: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                            "fhirServer": "https://ehr.example/fhir",
                            "fhirAuthorization": {"access_token": "some-opaque-token", "token_type": "Bearer",
                                                  "expires_in": 300, "scope": "patient/*.read",
                                                  "subject": "carecast"},
                            "context": {"userId": "Practitioner/dr-7", "patientId": patient_id}}
    if prefetch is not None:
        body["prefetch"] = prefetch
    body.update(extra)
    return body


def _post(client: FlaskClient, token: str | None, body: Any, path: str = SERVICE) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post(path, json=body, headers=headers)


def _counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {t.__tablename__: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in COUNTED}


# -- discovery and declarations -----------------------------------------------------------------------------------

def test_discovery_is_public_and_describes_the_service(client: FlaskClient, store: Store) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    [service] = response.json["services"]
    assert service["hook"] == "patient-view" and service["id"] == "carecast-deterioration"
    assert service["title"] and service["description"]
    assert service["prefetch"] == {
        "patient": "Patient/{{context.patientId}}",
        "encounters": "Encounter?patient={{context.patientId}}&status=in-progress",
        "vitals": "Observation?patient={{context.patientId}}&category=vital-signs&_sort=-date&_count=100",
        "labs": "Observation?patient={{context.patientId}}&category=laboratory&_sort=-date&_count=100",
        "conditions": "Condition?patient={{context.patientId}}",
    }
    assert audit_rows(store) == []


def test_the_service_views_declare_jwt_authentication(app: Flask) -> None:
    views = app.view_functions
    assert is_public(views["cds_hooks.discovery"])
    for name in ("cds_hooks.call_service", "cds_hooks.feedback"):
        assert authentication_of(views[name]) == "cds-jwt"
        assert permission_of(views[name]) is None and not is_public(views[name])


# -- the card -----------------------------------------------------------------------------------------------------

def test_prefetch_scores_a_patient_never_stored_and_writes_nothing(client: FlaskClient, store: Store,
                                                                   ehr: Signer) -> None:
    before = _counts(store)
    response = _post(client, make_token(ehr), _call(prefetch=_prefetch(heart_rate=130)))
    assert response.status_code == 200, response.get_data(as_text=True)
    [card] = response.json["cards"]
    assert re.fullmatch(r"Deterioration risk 70% \(high\) - NEWS2 \d+", card["summary"]), card["summary"]
    assert len(card["summary"]) < 140
    assert card["indicator"] == "critical"
    uuid.UUID(card["uuid"])
    assert card["source"] == {"label": "CareCast", "url": "http://localhost/api/v1/docs"}
    assert "links" not in card  # not stored: no CareCast page to open
    detail = card["detail"]
    assert "**Deterioration risk 70%** (high band)" in detail and "heart rate" in detail
    assert "ICU transfer or death within 24 h" in detail
    assert "NEWS2" in detail and "20260101T000000-fake0001" in detail and "not a diagnosis" in detail
    assert {r["code"] for r in card["overrideReasons"]} >= {"already-aware", "other"}
    assert_no_secrets(response.get_data(as_text=True))
    assert _counts(store) == before  # scored in memory only
    [row] = audit_rows(store)
    assert (row.action, row.outcome, row.patient_uid, row.username) == ("cds:patient-view", "success", None,
                                                                        "cds-client:1")
    assert "via=prefetch" in row.detail and f"card={card['uuid']}" in row.detail
    assert "user=Practitioner/dr-7" in row.detail
    # Random ids (hook instance, card uuid) may contain any digits by chance: leave them out of the check.
    detail_without_ids = re.sub(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", "",
                                row.detail or "")
    for secret in [*SECRETS, "130", "x9", ISS]:
        assert secret not in detail_without_ids


def test_repeated_prefetch_calls_each_answer(client: FlaskClient, store: Store, ehr: Signer) -> None:
    # (Speed is a benchmark's business on these shared machines; this checks repeated calls with fresh tokens.)
    for _ in range(2):
        response = _post(client, make_token(ehr), _call(prefetch=_prefetch()))
        assert response.status_code == 200 and len(response.json["cards"]) == 1


@pytest.mark.parametrize(("name", "summary", "indicator"), [
    ("a2", "Deterioration risk 60% (high) - NEWS2 7", "critical"),
    ("a1", "Deterioration risk 20% (medium) - NEWS2 5", "warning"),
    ("b1", "Deterioration risk 10% (low) - NEWS2 2", "info"),
])
def test_without_prefetch_a_stored_patient_gets_their_latest_risk(client: FlaskClient, store: Store, ehr: Signer,
                                                                  hospital: Hospital, name: str, summary: str,
                                                                  indicator: str) -> None:
    response = _post(client, make_token(ehr), _call(name))
    assert response.status_code == 200, response.get_data(as_text=True)
    [card] = response.json["cards"]
    assert card["summary"] == summary and card["indicator"] == indicator
    assert card["links"] == [{"label": "Open patient in CareCast",
                              "url": f"http://localhost/ui/patients/{hospital.uids[name]}", "type": "absolute"}]
    assert "heart rate 120/min (raises the risk)" in card["detail"] and "version `v1`" in card["detail"]
    [row] = audit_rows(store)
    assert (row.action, row.patient_uid) == ("cds:patient-view", hospital.uids[name]) and "via=store" in row.detail
    # the link leads to the patient's page (the sign-in page first for a browser without a session)
    opened = client.get(card["links"][0]["url"].removeprefix("http://localhost"), headers={"Accept": "text/html"})
    assert opened.status_code == 302 and "/ui/login" in opened.headers["Location"]


def test_without_a_stored_prediction_the_stored_data_is_scored_read_only(client: FlaskClient, store: Store,
                                                                         ehr: Signer) -> None:
    hospital = seed_hospital(store)  # patients and vitals, no predictions
    before = _counts(store)
    response = _post(client, make_token(ehr), _call("a1"))
    assert response.status_code == 200
    [card] = response.json["cards"]
    assert card["summary"].startswith("Deterioration risk 60% (high)")  # heart rate 120 with the fake model
    assert card["links"][0]["url"].endswith(hospital.uids["a1"])
    assert _counts(store) == before


def test_prefetch_of_a_stored_patient_links_to_it(client: FlaskClient, store: Store, ehr: Signer,
                                                  hospital: Hospital) -> None:
    response = _post(client, make_token(ehr), _call("a1", _prefetch("a1", heart_rate=80)))
    [card] = response.json["cards"]
    assert card["summary"].startswith("Deterioration risk 20% (medium)")  # the prefetch, fresher than the store
    assert card["links"][0]["url"] == f"http://localhost/ui/patients/{hospital.uids['a1']}"
    assert audit_rows(store)[-1].patient_uid == hospital.uids["a1"]


@pytest.mark.parametrize("prefetch", [_prefetch(vitals=False), _prefetch(discharged=True),
                                      {"patient": F.patient("x9")}, {**_prefetch(), "encounters": None}],
                         ids=["no vitals", "discharged", "patient only", "no encounter"])
def test_nothing_to_say_is_an_empty_card_list(client: FlaskClient, store: Store, ehr: Signer,
                                              prefetch: dict[str, Any]) -> None:
    response = _post(client, make_token(ehr), _call(prefetch=prefetch))
    assert response.status_code == 200 and response.json == {"cards": []}
    [row] = audit_rows(store)
    assert row.outcome == "success" and "cards=0" in row.detail


def test_no_prefetch_for_an_unknown_patient_is_412(client: FlaskClient, store: Store, ehr: Signer) -> None:
    for prefetch in (None, {"patient": None, "vitals": None}):
        response = _post(client, make_token(ehr), _call("never-seen", prefetch))
        assert response.status_code == 412 and response.json["error"]["code"] == "precondition_failed"
    assert [(r.action, r.outcome, r.detail) for r in audit_rows(store)] == [
        ("cds:patient-view", "failed", "412 precondition_failed")] * 2


def test_no_model_is_503(client: FlaskClient, store: Store, ehr: Signer, predictor: Any) -> None:
    predictor.loaded = False
    response = _post(client, make_token(ehr), _call(prefetch=_prefetch()))
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert [(r.action, r.outcome) for r in audit_rows(store)] == [("cds:patient-view", "failed")]


# -- malformed requests -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "fields"), [
    ({"hook": "patient-view"}, {"hookInstance", "context"}),
    (_call(context={"userId": "Practitioner/1"}), {"context.patientId"}),
    (_call(hook="order-sign"), {"hook"}),
    (_call(hookInstance="Zyxwvutson"), {"hookInstance"}),
    (_call("Zyxwvutson Quillamena"), {"context.patientId"}),
    (_call(prefetch=["not", "an", "object"]), {"prefetch"}),
    (_call(prefetch={"patient": F.patient("someone-else")}), {"prefetch.patient"}),
    ([], {"(body)"}),
])
def test_malformed_requests_are_400_with_the_failing_fields(client: FlaskClient, store: Store, ehr: Signer,
                                                            body: Any, fields: set[str]) -> None:
    response = _post(client, make_token(ehr), body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert {f["field"] for f in response.json["error"]["fields"]} == fields
    assert_no_secrets(response.get_data(as_text=True))
    assert "Zyxwvutson" not in response.get_data(as_text=True)
    assert [(r.action, r.outcome) for r in audit_rows(store)] == [("cds:patient-view", "failed")]


def test_not_json_is_400_and_wrong_content_type_415(client: FlaskClient, store: Store, ehr: Signer) -> None:
    headers = {"Authorization": f"Bearer {make_token(ehr)}", "Content-Type": "application/json"}
    assert client.post(SERVICE, data=b"{not json", headers=headers).status_code == 400
    headers = {"Authorization": f"Bearer {make_token(ehr)}", "Content-Type": "text/plain"}
    assert client.post(SERVICE, data=b"{}", headers=headers).status_code == 415


def test_an_unknown_service_is_404(client: FlaskClient, store: Store, ehr: Signer) -> None:
    response = _post(client, make_token(ehr, aud="http://localhost/cds-services/nope"), _call(),
                     path="/cds-services/nope")
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    assert _post(client, None, {}, path="/cds-services/nope/feedback").status_code == 404
    assert client.get(SERVICE).status_code == 405


# -- JWT refusals over HTTP ---------------------------------------------------------------------------------------

def _negative_tokens(ehr: Signer) -> dict[str, tuple[str | None, str]]:
    now = int(time.time())
    return {
        "missing token": (None, "no bearer token"),
        "expired": (make_token(ehr, exp=now - 60, iat=now - 360), "expired token"),
        "wrong audience": (make_token(ehr, aud="http://localhost/cds-services/other"), "wrong audience"),
        "alg none": (alg_none_token(ehr.kid), "algorithm not allowed"),
        "HS256 with the public key": (hs256_confusion_token(ehr), "algorithm not allowed"),
        "bad signature": (make_token(Signer(ec_signer().key, "ES384", ehr.kid)), "bad signature"),
        "unknown iss": (make_token(ehr, iss="https://stranger.example"), "unknown issuer"),
        "unknown kid": (make_token(rsa_signer("rsa-unregistered")), "unknown key id"),
    }


@pytest.mark.parametrize("case", list(_negative_tokens(ec_signer())))
def test_each_bad_token_is_401_and_audited_once(client: FlaskClient, store: Store, ehr: Signer, case: str) -> None:
    token, reason = _negative_tokens(ehr)[case]
    for path, body in ((SERVICE, _call(prefetch=_prefetch())),
                       (FEEDBACK, {"feedback": [{"card": str(uuid.uuid4()), "outcome": "accepted",
                                                 "outcomeTimestamp": "2026-01-05T10:00:00Z"}]})):
        before = len(audit_rows(store))
        response = _post(client, token, body, path=path)
        assert response.status_code == 401, response.get_data(as_text=True)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json["error"]["code"] == "unauthorized"
        text = response.get_data(as_text=True)
        assert ISS not in text and (token is None or token not in text)
        rows = audit_rows(store)[before:]
        assert [(r.action, r.outcome, r.detail) for r in rows] == [("auth:failed", "denied", f"cds-jwt: {reason}")]
        assert rows[0].patient_uid is None
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(S.CdsFeedback)).scalar_one() == 0


def test_a_replayed_token_is_401(client: FlaskClient, store: Store, ehr: Signer) -> None:
    token = make_token(ehr)
    assert _post(client, token, _call(prefetch=_prefetch())).status_code == 200
    assert _post(client, token, _call(prefetch=_prefetch())).status_code == 401
    assert [(r.action, r.outcome, r.username) for r in audit_rows(store)] == [
        ("cds:patient-view", "success", "cds-client:1"), ("auth:failed", "denied", "cds-client:1")]
    assert audit_rows(store)[-1].detail == "cds-jwt: replayed token (jti already used)"


def test_rs384_clients_are_accepted_too(client: FlaskClient, store: Store) -> None:
    signer = rsa_signer()
    register(store, signer, iss="https://rsa-ehr.example")
    response = _post(client, make_token(signer, iss="https://rsa-ehr.example"), _call(prefetch=_prefetch()))
    assert response.status_code == 200 and len(response.json["cards"]) == 1


# -- feedback -----------------------------------------------------------------------------------------------------

def test_feedback_is_stored_with_the_comment_encrypted(client: FlaskClient, store: Store, ehr: Signer) -> None:
    accepted, overridden = str(uuid.uuid4()), str(uuid.uuid4())
    comment = "Spoke with Zyxwvutson family, already on the ICU list"
    body = {"feedback": [
        {"card": accepted, "outcome": "accepted", "outcomeTimestamp": "2026-01-05T10:00:00Z"},
        {"card": overridden, "outcome": "overridden", "outcomeTimestamp": "2026-01-05T10:05:00+01:00",
         "overrideReasons": [{"reason": {"system": "urn:carecast:cds:override-reason", "code": "already-aware",
                                         "display": "Already aware of the patient's condition"},
                              "userComment": comment}]},
    ]}
    response = _post(client, make_token(ehr, aud=AUD + "/feedback"), body, path=FEEDBACK)
    assert response.status_code == 200 and response.json == {"received": 2}
    with store.engine.connect() as conn:
        rows = conn.execute(select(S.CdsFeedback).order_by(S.CdsFeedback.id)).all()
    assert [(r.card_uuid, r.outcome, r.reason_code, r.client_iss, r.service) for r in rows] == [
        (accepted, "accepted", None, ISS, "carecast-deterioration"),
        (overridden, "overridden", "already-aware", ISS, "carecast-deterioration")]
    assert rows[0].comment_enc is None
    assert b"Zyxwvutson" not in rows[1].comment_enc
    assert store.keyring.decrypt(rows[1].comment_enc, "cds_feedback.comment") == comment
    assert rows[1].outcome_at == datetime(2026, 1, 5, 9, 5, tzinfo=UTC)
    [row] = audit_rows(store)
    assert (row.action, row.outcome, row.detail) == ("cds:feedback", "success", "items=2 accepted=1 overridden=1")


def test_feedback_accepts_the_service_url_as_audience_and_a_single_override_reason(
        client: FlaskClient, store: Store, ehr: Signer) -> None:
    body = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                          "outcomeTimestamp": "2026-01-05T10:00:00Z",
                          "overrideReason": {"reason": {"code": "not-clinically-relevant"}}}]}
    assert _post(client, make_token(ehr), body, path=FEEDBACK).status_code == 200
    with store.engine.connect() as conn:
        assert conn.execute(select(S.CdsFeedback.reason_code)).scalar_one() == "not-clinically-relevant"


@pytest.mark.parametrize(("item", "field"), [
    ({"card": "not-a-uuid", "outcome": "accepted", "outcomeTimestamp": "2026-01-05T10:00:00Z"}, "feedback[0].card"),
    ({"card": str(uuid.uuid4()), "outcome": "maybe", "outcomeTimestamp": "2026-01-05T10:00:00Z"},
     "feedback[0].outcome"),
    ({"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": "yesterday"},
     "feedback[0].outcomeTimestamp"),
    ({"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": "2026-01-05T10:00:00"},
     "feedback[0].outcomeTimestamp"),
    ({"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": "2026-01-05T10:00:00Z",
      "overrideReason": {"reason": {"code": "other"}}}, "feedback[0].overrideReason"),
    ({"outcome": "accepted", "outcomeTimestamp": "2026-01-05T10:00:00Z"}, "feedback[0].card"),
])
def test_malformed_feedback_is_400_and_nothing_is_stored(client: FlaskClient, store: Store, ehr: Signer,
                                                         item: dict[str, Any], field: str) -> None:
    good = {"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": "2026-01-05T10:00:00Z"}
    response = _post(client, make_token(ehr), {"feedback": [item, good]}, path=FEEDBACK)
    assert response.status_code == 400
    assert [f["field"] for f in response.json["error"]["fields"]] == [field]
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(S.CdsFeedback)).scalar_one() == 0
    assert [(r.action, r.outcome) for r in audit_rows(store)] == [("cds:feedback", "failed")]
