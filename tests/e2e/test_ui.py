"""The web UI in a real browser: sign in, the ward sorted by risk and updated live by a new reading, the
patient view (risk chart, factors, alerts), break-glass, CSRF, idle logoff, audit log and CSV, the models,
admin and population pages, and a nurse refused the admin page.
Screenshots: see conftest.py (`make screenshots` writes docs/images)."""

from __future__ import annotations

import csv
import io
import time
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from carecast.config import Settings
from carecast.security.audit import flush_spools
from carecast.security.users import create_user
from carecast.serving import create_app
from carecast.serving.app import shutdown
from carecast.store import schema as S
from tests import factories as F
from tests.unit.scoring import ingest, small_hospital

from .conftest import WAIT_MS, WIDE, Site, _serve, _store, shot, sign_in

TARGET_S = 2.0


def _risks(page: Page) -> list[float]:
    return [float(x) for x in page.locator("#ward-rows tr[data-uid]").evaluate_all(
        "rows => rows.map(r => r.dataset.risk)")]


def _fhir_patient(site: Site, hospital: Path, unit: str) -> tuple[str, str, int]:
    """FHIR id, public uid and row id of an in-house patient of `unit` in the simulated files."""
    for line in (hospital / "Encounter.ndjson").read_bytes().splitlines():
        enc = orjson.loads(line)
        if enc["status"] != "in-progress":
            continue
        fhir_id = enc["subject"]["reference"].removeprefix("Patient/")
        key = site.store.keyring.record_key(f"Patient/{fhir_id}")
        with site.store.engine.connect() as conn:
            row = conn.execute(select(S.Patient.id, S.Patient.uid, S.Encounter.unit)
                               .join(S.Encounter, S.Encounter.patient_id == S.Patient.id)
                               .where(S.Patient.source_key == key, S.Encounter.discharged_at.is_(None))).first()
        if row is not None and row.unit == unit:
            return fhir_id, row.uid, int(row.id)
    raise AssertionError("no in-house patient on that unit")


def test_sign_in_and_the_ward_is_sorted_by_risk(page: Page, site: Site) -> None:
    page.goto(f"{site.url}/ui/ward")
    expect(page).to_have_url(f"{site.url}/ui/login?next=/ui/ward")
    shot(page, "login")
    sign_in(page, site.url, "nurse")
    expect(page.get_by_role("heading", name="Ward")).to_be_visible()
    expect(page.locator("#live-status")).to_have_text("Live", timeout=WAIT_MS)
    risks = _risks(page)
    assert len(risks) >= 2 and risks == sorted(risks, reverse=True)
    assert page.locator("#ward-rows svg.spark").count() == len(risks)
    shot(page, "ward", tablet=True)


def test_a_new_reading_updates_the_open_ward_without_reload(page: Page, site: Site,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    fhir_id, uid, pid = _fhir_patient(site, small_hospital(tmp_path_factory), site.units[0])
    sign_in(page, site.url, "nurse")
    expect(page.locator("#live-status")).to_have_text("Live", timeout=WAIT_MS)
    page.evaluate("window.__notReloaded = true")
    cell = page.locator(f'#ward-rows tr[data-uid="{uid}"] [data-field="risk"]')
    row = page.locator(f'#ward-rows tr[data-uid="{uid}"]')
    before = row.get_attribute("data-risk")
    when = site.latest_observation(pid) + timedelta(minutes=9)
    stamp = when.isoformat().replace("+00:00", "Z")
    vitals = [F.vital("e2e-hr", "8867-4", 148, "/min", pid=fhir_id, eid=None, when=stamp),
              F.vital("e2e-rr", "9279-1", 34, "/min", pid=fhir_id, eid=None, when=stamp),
              F.vital("e2e-sbp", "8480-6", 82, "mm[Hg]", pid=fhir_id, eid=None, when=stamp)]
    began = time.perf_counter()
    site.post_json("/api/v1/ingest/fhir", site.tokens["nurse"], F.bundle(vitals), "application/fhir+json")
    expect(row).not_to_have_attribute("data-risk", before or "", timeout=WAIT_MS)
    took = time.perf_counter() - began
    print(f"\nnew reading -> ward row updated in the browser: {took * 1000:.0f} ms (target {TARGET_S:.0f} s)")
    assert page.evaluate("window.__notReloaded") is True  # the same page: no reload happened
    assert cell.inner_text().endswith("%")
    risks = _risks(page)
    assert risks == sorted(risks, reverse=True)  # still sorted after the live update


def test_patient_view_shows_risk_chart_factors_and_alerts(page: Page, site: Site,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    _, uid, pid = _fhir_patient(site, small_hospital(tmp_path_factory), site.units[0])
    site.add_high_risk(pid)
    sign_in(page, site.url, "clinician")
    page.locator(f'#ward-rows tr[data-uid="{uid}"] a').click()
    expect(page.get_by_role("heading", name="Risk", exact=False).first).to_be_visible()
    expect(page.locator("#risk-panel svg.chart line.threshold").first).to_be_attached()
    expect(page.locator("#risk-panel ul.factors li").first).to_be_visible()
    expect(page.locator("#vitals-h")).to_be_visible()
    assert page.locator("section svg.chart rect.normal").count() >= 1
    shot(page, "patient", tablet=True, full=True)
    # dismiss the alert with a reason: stored as feedback
    page.get_by_label("Reason to dismiss").first.select_option("data-artefact")
    page.get_by_role("button", name="Dismiss").first.click()
    expect(page.locator("#alerts")).to_contain_text("dismissed")
    with site.store.engine.connect() as conn:
        rows = conn.execute(select(S.CdsFeedback.outcome, S.CdsFeedback.reason_code)).all()
    assert ("overridden", "data-artefact") in [tuple(r) for r in rows]


def test_out_of_unit_patient_requires_break_glass(page: Page, site: Site,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    _, uid, _ = _fhir_patient(site, small_hospital(tmp_path_factory), site.units[1])
    sign_in(page, site.url, "nurse")
    page.goto(f"{site.url}/ui/patients/{uid}")
    expect(page.get_by_role("heading", name="This patient is not on your units")).to_be_visible()
    shot(page, "break-glass")
    page.get_by_label("Reason (at least 10 characters)").fill("rapid response call on the other ward")
    page.get_by_role("button", name="Open the record (emergency access)").click()
    expect(page.locator("#vitals-h")).to_be_visible()
    flush_spools(site.store.engine)
    with site.store.engine.connect() as conn:
        actions = conn.execute(select(S.AuditEvent.action).where(S.AuditEvent.patient_uid == uid)).scalars().all()
    assert "auth:denied" in actions and "patient:break-glass" in actions and actions[-1] == "patient:read"


def test_a_post_without_the_csrf_token_is_refused(page: Page, site: Site) -> None:
    sign_in(page, site.url, "admin")
    answer = page.request.post(f"{site.url}/ui/admin/users", form={
        "username": "intruder", "role": "admin", "password": "a long enough password"})
    assert answer.status == 403
    assert "intruder" not in page.goto(f"{site.url}/ui/admin/users").text()
    shot(page, "admin-users")


def test_nurse_cannot_open_the_admin_page(page: Page, site: Site) -> None:
    sign_in(page, site.url, "nurse")
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    answer = page.goto(f"{site.url}/ui/admin/users")
    assert answer is not None and answer.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()


def test_auditor_sees_the_audit_log_and_exports_csv(page: Page, site: Site) -> None:
    sign_in(page, site.url, "auditor")
    expect(page.locator("#audit-table tbody tr").first).to_be_visible()
    expect(page.locator("#audit-table")).to_contain_text("auth:login")
    page.get_by_label("Action").fill("auth:login")
    page.get_by_role("button", name="Filter").click()
    shot(page, "audit")
    with page.expect_download() as info:
        page.get_by_role("link", name="Export CSV").click()
    text = Path(info.value.path()).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and {r["action"] for r in rows} == {"auth:login"}


def test_models_and_population_pages(page: Page, site: Site) -> None:
    sign_in(page, site.url, "data_scientist")
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    expect(page.get_by_text("Champion", exact=False).first).to_be_visible()
    expect(page.get_by_role("link", name="Promote to champion…")).to_be_visible()
    shot(page, "models", full=True)
    page.goto(f"{site.url}/ui/population")
    csv_text = ("State,Date,Total Cases,Total Deaths,Total Hospitalizations,Population\n"
                "NY,2021-02-01,3000,90,400,1000000\nCA,2021-02-01,4000,40,300,2000000\n"
                "TX,2021-02-01,1500,30,100,500000\nFL,2021-02-01,2500,60,250,1500000\n")
    page.get_by_label("Or a CSV with the columns", exact=False).set_input_files(
        files=[{"name": "states.csv", "mimeType": "text/csv", "buffer": csv_text.encode()}])
    page.get_by_role("button", name="Use this file").click()
    expect(page.locator("svg.chart rect.bar").first).to_be_visible()
    assert page.locator("svg.chart rect.bar").count() == 12
    expect(page.locator("svg.chart line.fit")).to_have_count(1)
    shot(page, "population", full=True)


def test_idle_session_warns_then_signs_out(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("idle")
    store = _store(root / "carecast.db")
    ingest(store, small_hospital(tmp_path_factory))
    create_user(store.engine, "e2e-nurse", "correct horse battery staple", "nurse", ["nowhere"])
    settings = Settings.from_env({"CARECAST_DATA_DIR": str(root / "var"), "CARECAST_ENV": "development",
                                  "CARECAST_SESSION_IDLE_MINUTES": "0.15"})  # 9 s, the warning 4.5 s before
    app = create_app(settings, store=store)
    server, thread = _serve(app)
    context = browser.new_context(viewport=WIDE)
    try:
        page = context.new_page()
        base = f"http://127.0.0.1:{server.server_port}"
        sign_in(page, base, "nurse")
        expect(page.locator("#idle-warning")).to_be_visible(timeout=WAIT_MS)
        shot(page, "idle-warning")
        expect(page).to_have_url(f"{base}/ui/login?reason=idle", timeout=WAIT_MS)
        expect(page.get_by_role("status")).to_contain_text("signed out after a period without activity")
        answer = page.goto(f"{base}/ui/ward")
        assert answer is not None and "/ui/login" in page.url
        flush_spools(store.engine)
        with store.engine.connect() as conn:
            actions = conn.execute(select(S.AuditEvent.action)).scalars().all()
        assert "auth:logoff-idle" in actions
    finally:
        context.close()
        shutdown(app)
        server.shutdown()
        server.server_close()
        thread.join(5)
        store.close()
