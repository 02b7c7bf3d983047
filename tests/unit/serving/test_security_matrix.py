"""Figure 3, authorization: every endpoint of the app's URL map (API, UI, CDS Hooks, health, metrics, static)
x every verb it serves x every role and no credentials, and for routes that take a patient, x a patient of
another unit. Whether a request may pass is computed from the view's declaration (`@requires`, `page`,
`@public`, `@authenticated_by`) and the role's permissions, never listed by hand; the table below only says
how to call each route. A route without an entry fails `test_every_route_and_verb_has_a_matrix_entry`.

Also: mass assignment. Bodies carrying fields the request schema does not allow (unit, role, risk,
model_version, user_id, patient_id) are refused with 422 and change no row of any table.

`run_matrix` is shared with tests/verify/test_security_proofs.py, which runs it on both backends with the
session and bearer credentials crossed too and prints the figure.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from carecast.security.audit import flush_spools
from carecast.security.permissions import ROLE_PERMISSIONS, ROLES, UNIT_RESTRICTED, Permission
from carecast.security.tokens import issue_token
from carecast.security.users import create_user
from carecast.serving.auth import SIGN_IN_LIMITER, authentication_of, is_public, permission_of
from carecast.serving.context import services
from carecast.serving.ratelimit import TokenBucketLimiter
from carecast.store import Store
from carecast.store import schema as S
from tests import factories as F
from tests.unit.serving.ui.conftest import HTML, sign_in

from .conftest import PASSWORD, Hospital, audit_rows, bearer
from .test_matrix import CALLS as API_CALLS

TASK = "deterioration_24h"
NO_CREDENTIALS = "none"
SUBJECTS = (*ROLES, NO_CREDENTIALS)


@dataclass
class World:
    """What the calls refer to: the seeded patients, a spare user and token the admin pages may change."""

    hospital: Hospital
    spare_user: str
    spare_token_id: int
    tmp: Path

    def fill(self, path: str, patient: str) -> str:
        return path.format(p=self.hospital.uids[patient], task=TASK, user=self.spare_user, tok=self.spare_token_id,
                           service="carecast-deterioration")


@dataclass(frozen=True)
class Call:
    """How to call one route with one verb: the path ("{p}" the patient, "{task}", "{user}", "{tok}") and the
    keyword arguments of the test client (a function of the World, for bodies that need files)."""

    path: str
    kwargs: Callable[[World], dict[str, Any]] = lambda _w: {}
    isolated: bool = False  # changes the caller's own session (sign-in, sign-out): run on a fresh client
    break_glass: bool = False  # the way to reach a patient of another unit: allowed there by design


def _api(endpoint: str) -> Call:
    """The API calls of the existing matrix (tests/unit/serving/test_matrix.py), reused."""
    old = API_CALLS[endpoint]
    return Call(old.path.replace("{p}", "{p}"), kwargs=lambda w, old=old: old.kwargs(w.tmp),
                break_glass=endpoint.endswith("break_glass"))


def _form(**fields: Any) -> Callable[[World], dict[str, Any]]:
    return lambda _w: {"data": dict(fields), "headers": HTML}


def _cds_call(_w: World) -> dict[str, Any]:
    return {"json": {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                     "context": {"userId": "Practitioner/dr-7", "patientId": "x9"}}}


def _cds_feedback(_w: World) -> dict[str, Any]:
    return {"json": {"feedback": [{"card": str(uuid.uuid4()), "outcome": "accepted",
                                   "outcomeTimestamp": "2026-01-05T10:00:00Z"}]}}


GET = "GET"
POST = "POST"
# (endpoint, verb) -> how to call it. HEAD is called like GET wherever GET is served.
CALLS: dict[tuple[str, str], Call] = {
    **{(e, c.method): _api(e) for e, c in API_CALLS.items()},
    ("cds_hooks.discovery", GET): Call("/cds-services"),
    ("cds_hooks.call_service", POST): Call("/cds-services/{service}", kwargs=_cds_call),
    ("cds_hooks.feedback", POST): Call("/cds-services/{service}/feedback", kwargs=_cds_feedback),
    ("health.livez", GET): Call("/livez"),
    ("health.readyz", GET): Call("/readyz"),
    ("metrics.metrics_view", GET): Call("/metrics"),
    ("root", GET): Call("/"),
    ("static", GET): Call("/static/nothing.css"),
    ("ui.static", GET): Call("/ui/static/ui.css"),
    ("ui.login", GET): Call("/ui/login", kwargs=lambda _w: {"headers": HTML}),
    ("ui.login", POST): Call("/ui/login", _form(username="matrix-nobody", password="not the password"), isolated=True),
    ("ui.logout", POST): Call("/ui/logout", _form(), isolated=True),
    ("ui.home", GET): Call("/ui/", kwargs=lambda _w: {"headers": HTML}),
    ("ui.account", GET): Call("/ui/account", kwargs=lambda _w: {"headers": HTML}),
    ("ui.keepalive", POST): Call("/ui/session/keepalive"),
    ("ui.session_status", GET): Call("/ui/session/status"),
    ("ui.ward", GET): Call("/ui/ward", kwargs=lambda _w: {"headers": HTML}),
    ("ui.ward_table", GET): Call("/ui/ward/table"),
    ("ui.patient", GET): Call("/ui/patients/{p}", kwargs=lambda _w: {"headers": HTML}),
    ("ui.patient_risk", GET): Call("/ui/patients/{p}/risk"),
    ("ui.break_glass", POST): Call("/ui/patients/{p}/break-glass",
                                   _form(reason="rapid response call on 4W", minutes="60"), break_glass=True),
    ("ui.alert_feedback_view", POST): Call("/ui/patients/{p}/alerts/999999", _form(action="acknowledge")),
    ("ui.stream", GET): Call("/ui/stream", kwargs=lambda _w: {"headers": {"Accept": "text/event-stream"}}),
    ("ui.models", GET): Call("/ui/models", kwargs=lambda _w: {"headers": HTML}),
    ("ui.model_promote", GET): Call("/ui/models/{task}/promote", kwargs=lambda _w: {"headers": HTML}),
    ("ui.model_promote", POST): Call("/ui/models/{task}/promote", _form(version="none", reason="matrix test")),
    ("ui.model_rollback", GET): Call("/ui/models/{task}/rollback", kwargs=lambda _w: {"headers": HTML}),
    ("ui.model_rollback", POST): Call("/ui/models/{task}/rollback", _form(reason="matrix test")),
    ("ui.population", GET): Call("/ui/population", kwargs=lambda _w: {"headers": HTML}),
    ("ui.population", POST): Call("/ui/population", _form(codes="U07.1")),
    ("ui.monitoring", GET): Call("/ui/monitoring", kwargs=lambda _w: {"headers": HTML}),
    ("ui.admin_users", GET): Call("/ui/admin/users", kwargs=lambda _w: {"headers": HTML}),
    ("ui.admin_create_user", POST): Call("/ui/admin/users", _form(username="matrix-made", role="auditor",
                                                                  password="a long enough password")),
    ("ui.admin_set_units", POST): Call("/ui/admin/users/{user}/units", _form(units="Ward C")),
    ("ui.admin_roles", GET): Call("/ui/admin/roles", kwargs=lambda _w: {"headers": HTML}),
    ("ui.admin_units", GET): Call("/ui/admin/units", kwargs=lambda _w: {"headers": HTML}),
    ("ui.admin_tokens", GET): Call("/ui/admin/tokens", kwargs=lambda _w: {"headers": HTML}),
    ("ui.admin_issue_token", POST): Call("/ui/admin/tokens", _form(username="{user}", ttl_hours="1", name="m")),
    ("ui.admin_revoke_token", POST): Call("/ui/admin/tokens/{tok}/revoke", _form()),
    ("ui.audit", GET): Call("/ui/audit", kwargs=lambda _w: {"headers": HTML}),
    ("ui.audit_csv", GET): Call("/ui/audit.csv"),
}


def served(app: Flask) -> set[tuple[str, str]]:
    """(endpoint, verb) of every rule in the URL map; HEAD and OPTIONS are answered with GET's guard or by Flask."""
    return {(rule.endpoint, method) for rule in app.url_map.iter_rules()
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}


def _verbs(app: Flask, endpoint: str, method: str) -> list[str]:
    methods = {m for r in app.url_map.iter_rules() if r.endpoint == endpoint for m in (r.methods or set())}
    return [method, "HEAD"] if method == GET and "HEAD" in methods else [method]


def _family(endpoint: str) -> str:
    if endpoint.startswith("ui.") or endpoint == "root":
        return "ui"
    return "cds" if endpoint.startswith("cds_hooks.") else "api"


def _takes_patient(app: Flask, endpoint: str) -> bool:
    return any("<uid>" in r.rule for r in app.url_map.iter_rules() if r.endpoint == endpoint)


def may_pass(app: Flask, endpoint: str, subject: str, *, other_unit: bool, break_glass: bool) -> bool:
    """Should this subject get past the route's guard? From the declaration and the role's permissions only."""
    view = app.view_functions[endpoint]
    if endpoint == "static" or is_public(view):
        return True
    if subject == NO_CREDENTIALS:
        return False
    scheme = authentication_of(view)
    if scheme is not None:
        return scheme == "session"  # any signed-in user; the EHR's JWT is never a user's credential
    permission = permission_of(view)
    assert permission is not None, endpoint
    if permission not in ROLE_PERMISSIONS[subject]:
        return False
    return not (other_unit and subject in UNIT_RESTRICTED and not break_glass)


def _denied(response: Any, public: bool) -> bool:
    """Refused: 401, 403, or a guarded page sending the browser to sign in (signing out does that too)."""
    if response.status_code in (401, 403):
        return True
    to_login = response.status_code == 302 and response.headers.get("Location", "").startswith("/ui/login")
    return to_login and not public


@dataclass
class Tally:
    cases: int = 0
    wrongly_allowed: list[str] = field(default_factory=list)
    wrongly_denied: list[str] = field(default_factory=list)
    audit_problems: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.wrongly_allowed + self.wrongly_denied + self.audit_problems


class Callers:
    """A credential per subject: a bearer token (API, CDS Hooks) and a signed-in browser (UI)."""

    def __init__(self, app: Flask, tokens: dict[str, str]) -> None:
        self.app = app
        self.tokens = tokens
        self.browsers: dict[str, FlaskClient] = {}

    def browser(self, subject: str, *, fresh: bool = False) -> FlaskClient:
        if subject in self.browsers and not fresh:
            return self.browsers[subject]
        client = self.app.test_client()
        if subject == NO_CREDENTIALS:
            client.get("/ui/login", headers=HTML)  # a CSRF token in a signed-out session, so the guard decides
        else:
            assert sign_in(client, f"test-{subject}").status_code == 302
        if not fresh:
            self.browsers[subject] = client
        return client

    def request(self, endpoint: str, subject: str, *, fresh: bool, crossed: bool) -> tuple[FlaskClient, dict[str, str]]:
        """The client and headers of this subject for this route. `crossed` swaps the schemes: the session
        cookie on the API and CDS Hooks, the bearer token on the UI (both must count as no credentials)."""
        ui = _family(endpoint) == "ui"
        signed_out = subject == NO_CREDENTIALS
        if ui:
            client = self.browser(NO_CREDENTIALS if crossed else subject, fresh=fresh)
            headers = bearer(self.tokens[subject]) if crossed and not signed_out else {}
            with client.session_transaction() as sess:
                csrf = sess.get("csrf")
            if csrf:
                headers["X-CSRF-Token"] = csrf
            return client, headers
        if crossed and not signed_out:
            return self.browser(subject), {}
        return self.app.test_client(), ({} if signed_out else bearer(self.tokens[subject]))


def _audit_tail(store: Store, before: int) -> list[Any]:
    return audit_rows(store)[before:]


def run_matrix(app: Flask, store: Store, world: World, tokens: dict[str, str], *, crossed: bool = False,
               subjects: tuple[str, ...] = SUBJECTS) -> Tally:
    """Every (endpoint, verb) x subject, and for patient routes also on a patient of another unit. With
    `crossed`, every subject presents the other family's credential and must be treated as signed out."""
    tally = Tally()
    callers = Callers(app, tokens)
    plan: list[tuple[str, str, Call, bool]] = []
    for (endpoint, method), call in sorted(CALLS.items()):
        plan.append((endpoint, method, call, False))
        if _takes_patient(app, endpoint):
            plan.append((endpoint, method, call, True))
    # break-glass calls on the other unit's patient last: they grant the access the other calls must not have
    plan.sort(key=lambda item: item[3] and item[2].break_glass)
    for endpoint, method, call, other_unit in plan:
        patient = "b1" if other_unit else "a1"
        for verb in _verbs(app, endpoint, method):
            for subject in subjects:
                expected = (not crossed or is_public(app.view_functions[endpoint]) or endpoint == "static") and \
                    may_pass(app, endpoint, subject, other_unit=other_unit, break_glass=call.break_glass)
                kwargs = call.kwargs(world)
                client, headers = callers.request(endpoint, subject, fresh=call.isolated, crossed=crossed)
                headers = {**kwargs.pop("headers", {}), **headers}
                if "data" in kwargs and isinstance(kwargs["data"], dict):
                    kwargs["data"] = {k: world.fill(v, patient) if isinstance(v, str) else v
                                      for k, v in kwargs["data"].items()}
                    csrf = headers.get("X-CSRF-Token")
                    if csrf:
                        kwargs["data"]["csrf_token"] = csrf
                before = len(audit_rows(store))
                response = client.open(world.fill(call.path, patient), method=verb, headers=headers, **kwargs)
                status = response.status_code
                response.close()
                tally.cases += 1
                label = (f"{verb} {endpoint} as {subject}{' (crossed)' if crossed else ''}"
                         f"{' on another unit' if other_unit else ''}: {status}")
                denied = _denied(response, is_public(app.view_functions[endpoint]))
                if status >= 500:
                    tally.wrongly_denied.append(label + " (server error)")
                elif expected and denied and not (endpoint == "ui.login" and status == 401):
                    tally.wrongly_denied.append(label)
                elif not expected and not denied:
                    tally.wrongly_allowed.append(label)
                rows = [r for r in _audit_tail(store, before) if r.action not in ("auth:login",)]
                refusals = [r for r in rows if r.outcome == "denied"]
                if not expected and len(refusals) != 1:
                    tally.audit_problems.append(f"{label}: {len(refusals)} refusal audit rows")
                if not expected and other_unit and not crossed and refusals and refusals[0].patient_uid is None \
                        and _family(endpoint) != "cds" and subject in UNIT_RESTRICTED \
                        and Permission(str(permission_of(app.view_functions[endpoint]))) in ROLE_PERMISSIONS[subject]:
                    tally.audit_problems.append(f"{label}: the refusal names no patient")
    return tally


@pytest.fixture
def world(store: Store, hospital: Hospital, tokens: dict[str, str], tmp_path: Path) -> World:
    uid = create_user(store.engine, "matrix-spare", PASSWORD, "nurse", ["Ward A"])
    issue_token(store.engine, uid, "spare", [], ttl_hours=1)
    with store.engine.connect() as conn:
        token_id = int(conn.execute(select(func.max(S.ApiToken.id))).scalar_one())
    return World(hospital=hospital, spare_user="matrix-spare", spare_token_id=token_id, tmp=tmp_path)


@pytest.fixture
def generous_limits(app: Flask) -> Iterator[None]:
    """The matrix sends hundreds of requests and failed sign-ins from one address: lift the limits for it."""
    with app.app_context():
        services().limiter = TokenBucketLimiter(per_minute=10**6, burst=10**6)
    app.extensions[SIGN_IN_LIMITER] = TokenBucketLimiter(per_minute=10**6, burst=10**6)
    yield


def test_every_route_and_verb_has_a_matrix_entry(app: Flask) -> None:
    missing = served(app) - set(CALLS)
    assert not missing, f"routes without an authorization-matrix entry: {sorted(missing)}"
    assert not set(CALLS) - served(app), "matrix entries for routes that no longer exist"


def test_authorization_matrix(app: Flask, store: Store, world: World, tokens: dict[str, str],
                              generous_limits: None) -> None:
    tally = run_matrix(app, store, world, tokens)
    assert tally.cases > 400
    assert not tally.problems, "\n".join(tally.problems)


def test_a_session_cookie_does_not_open_the_api_nor_a_token_the_ui(app: Flask, store: Store, world: World,
                                                                    tokens: dict[str, str],
                                                                    generous_limits: None) -> None:
    tally = run_matrix(app, store, world, tokens, crossed=True, subjects=("admin", "clinician"))
    assert not tally.problems, "\n".join(tally.problems)


def test_options_is_answered_without_running_a_view(client: Any, store: Store, world: World) -> None:
    before = len(audit_rows(store))
    for path in ("/api/v1/patients", "/ui/ward", "/cds-services/carecast-deterioration", "/metrics"):
        response = client.options(path)
        assert response.status_code == 200 and response.get_data() == b""
    assert len(audit_rows(store)) == before


# -- mass assignment ------------------------------------------------------------------------------------------

# audit_spool is the audit trail's own bookkeeping (how far each spool file is shipped)
COUNTED = tuple(t for t in S.Base.metadata.sorted_tables if t.name != "audit_spool")
SMUGGLED = {"unit": "Ward B", "role": "admin", "risk": 0.99, "model_version": "forged", "user_id": 1,
            "patient_id": 1}


def table_counts(store: Store) -> dict[str, int]:
    flush_spools(store.engine)
    with store.engine.connect() as conn:
        return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in COUNTED}


def test_mass_assignment_is_refused_and_changes_nothing(client: Any, store: Store, hospital: Hospital,
                                                        tokens: dict[str, str]) -> None:
    a1, b1 = hospital.uids["a1"], hospital.uids["b1"]
    clinician = bearer(tokens["clinician"])
    nurse = bearer(tokens["nurse"])
    bodies: list[tuple[str, dict[str, str], dict[str, Any]]] = []
    for name, value in SMUGGLED.items():
        bodies += [
            ("/api/v1/predict", clinician, {"task": TASK, "features": {"age": 70}, name: value}),
            ("/api/v1/predict", clinician, {"task": TASK, "features": {"age": 70, name: value}}),
            ("/api/v1/predict/batch", clinician, {"task": TASK, "rows": [{"age": 70}], name: value}),
            ("/api/v1/predict/batch", clinician, {"task": TASK, "rows": [{"age": 70, name: value}]}),
            (f"/api/v1/patients/{b1}/break-glass", nurse, {"reason": "rapid response call on 4W", name: value}),
            (f"/api/v1/patients/{a1}/break-glass", nurse, {"reason": "rapid response call on 4W", name: value}),
        ]
    before = table_counts(store)
    audit_before = before["audit_events"]
    for path, headers, body in bodies:
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == 422, (path, sorted(body), response.status_code)
        problems = response.json["error"]["fields"]
        assert problems and all(str(SMUGGLED.get(p["field"], "\x00")) not in str(p) or p["field"] in SMUGGLED
                                for p in problems)
        assert "forged" not in response.get_data(as_text=True) and "Ward B" not in response.get_data(as_text=True)
    after = table_counts(store)
    assert {k: v for k, v in after.items() if k != "audit_events"} == \
        {k: v for k, v in before.items() if k != "audit_events"}
    assert after["audit_events"] == audit_before  # a refused body is not a read or write of patient data
    # the nurse still cannot see Ward B: no grant was smuggled in
    assert client.get(f"/api/v1/patients/{b1}", headers=nurse).status_code == 403


def test_smuggled_ingest_fields_change_no_unit_or_user(client: Any, store: Store, hospital: Hospital,
                                                       tokens: dict[str, str]) -> None:
    """A Bundle may carry extensions; fields CareCast does not map are dropped, never written anywhere."""
    bundle = F.bundle([F.vital("mass1", "8867-4", 101, "/min", pid="a1", eid="ea1")], "batch")
    bundle.update({"role": "admin", "user_id": 1, "unit": "Ward B"})
    bundle["entry"][0]["resource"].update({"risk": 0.99, "model_version": "forged"})
    with store.engine.connect() as conn:
        users_before = conn.execute(select(S.User.id, S.User.role)).all()
        units_before = conn.execute(select(S.Encounter.id, S.Encounter.unit)).all()
    response = client.post("/api/v1/ingest/fhir", data=orjson.dumps(bundle), content_type="application/fhir+json",
                           headers=bearer(tokens["nurse"]))
    assert response.status_code in (200, 422)
    with store.engine.connect() as conn:
        assert conn.execute(select(S.User.id, S.User.role)).all() == users_before
        assert conn.execute(select(S.Encounter.id, S.Encounter.unit)).all() == units_before
        assert conn.execute(select(func.count()).select_from(S.Prediction)
                            .where(S.Prediction.model_version == "forged")).scalar_one() == 0
