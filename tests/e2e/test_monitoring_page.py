"""The monitoring page in a real browser, over the e2e site (a trained champion and a challenger, a small
simulated hospital scored by the embedded worker): a data scientist sees every section, a clinician is refused.
Its screenshot goes where CARECAST_SCREENSHOTS says (make screenshots: docs/images)."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from sqlalchemy import select

from carecast.scoring.predictor import Predictor
from carecast.scoring.scorer import score_patients
from carecast.serving.context import EXTENSION
from carecast.store import alert_feedback
from carecast.store import schema as S
from tests.unit.scoring import TASK
from tests.unit.serving.ui.test_monitoring_page import _decision

from .conftest import Site, shot, sign_in


def _shadow_feedback_and_a_decision(site: Site) -> None:
    """The challenger's shadow scores of the in-house patients (as `carecast worker` stores them), a retraining
    decision of the challenger and some clinician feedback, as they would be recorded."""
    registry = site.app.extensions[EXTENSION].registry
    aliases = registry.aliases(TASK)
    with site.store.engine.connect() as conn:
        in_house = sorted(set(conn.execute(select(S.Encounter.patient_id)
                                           .where(S.Encounter.discharged_at.is_(None))).scalars()))
    scored = score_patients(site.store, Predictor(registry, challengers=True), in_house, shadow_challenger=True)
    assert not [r for r in scored.values() if isinstance(r, Exception)]
    registry.record_decision(TASK, aliases["challenger"], _decision(aliases["challenger"], aliases["champion"]))
    with site.store.engine.connect() as conn:
        ids = list(conn.execute(select(S.Prediction.id).where(S.Prediction.shadow.is_(False))
                                .order_by(S.Prediction.id).limit(3)).scalars())
    assert len(ids) == 3, "the embedded worker has scored the in-house patients"
    k = site.store.keyring
    alert_feedback.record(site.store.engine, k, prediction_id=ids[0], task=TASK, outcome=alert_feedback.ACKNOWLEDGED)
    alert_feedback.record(site.store.engine, k, prediction_id=ids[1], task=TASK, outcome=alert_feedback.DISMISSED,
                          reason_code="already-treated")
    alert_feedback.record(site.store.engine, k, prediction_id=ids[2], task=TASK, outcome=alert_feedback.DISMISSED,
                          reason_code="data-artefact")


def test_monitoring_page(page: Page, site: Site) -> None:
    _shadow_feedback_and_a_decision(site)
    sign_in(page, site.url, "data_scientist")
    page.get_by_role("link", name="Monitoring").click()
    expect(page.get_by_role("heading", name="Monitoring", exact=True)).to_be_visible()
    for section in ("Input drift of the champion", "Performance as outcomes arrive",
                    "Champion against challenger (shadow)", "Retraining decisions"):
        expect(page.get_by_role("heading", name=section)).to_be_visible()
    expect(page.locator("#decisions")).to_contain_text("not promoted")
    expect(page.locator("#feedback-rates")).to_contain_text("1 acknowledged, 2 dismissed")
    expect(page.locator("#shadow")).to_contain_text("Same alert decision")  # paired scores exist
    shot(page, "monitoring", full=True)


def test_a_clinician_is_refused(page: Page, site: Site) -> None:
    sign_in(page, site.url, "clinician")
    expect(page.get_by_role("link", name="Monitoring")).to_have_count(0)
    answer = page.goto(f"{site.url}/ui/monitoring")
    assert answer is not None and answer.status == 403
