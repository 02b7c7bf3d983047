"""The monitoring page: drift of the champion, performance per model version over rolling windows with charts,
pending labels, subgroup gaps, shadow comparison, retraining decisions and feedback rates, over a hand-built
hospital whose data are known; who may open it; the cache of the slow checks; the feedback query."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import insert

from carecast.models.gates import Candidate, Holdout, PromotionGates, evaluate_gates
from carecast.models.registry import Registry
from carecast.models.training import reference_distributions
from carecast.monitoring.drift import compare_with_reference
from carecast.serving.ui import monitoring_page
from carecast.serving.ui.monitoring_page import ResultCache
from carecast.store import Store, alert_feedback
from carecast.store import schema as S
from carecast.store.feedback_rates import FeedbackCount, feedback_counts
from tests.unit.serving.conftest import Hospital, assert_no_secrets

from .conftest import HTML

TASK = "inhospital_mortality"
N = 240  # patients admitted every 30 minutes; the first 200 stays are over, the last 40 still open
OPEN_FROM = 200
THRESHOLD = 0.3
T0 = datetime(2026, 1, 5, tzinfo=UTC)


def _h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


@dataclass
class World:
    champion: str
    challenger: str
    registry: Registry
    died: np.ndarray
    prediction_ids: list[int]


def _reference() -> dict[str, Any]:
    """The training data of the card: ages around 30 (the stored patients are 36 to 86: drift), half women
    and half men (as stored: no drift), a heart rate present in 90 % of rows (never stored: missing drift)."""
    rng = np.random.default_rng(3)
    X = pd.DataFrame({"age": rng.normal(30, 4, 2000), "sex": np.where(np.arange(2000) % 2 == 0, "female", "male"),
                      "heart_rate_last_4h": rng.normal(80, 10, 2000)})
    X.loc[rng.random(2000) < 0.1, "heart_rate_last_4h"] = np.nan
    return reference_distributions(X, ["age", "heart_rate_last_4h"], ["sex"])


def _decision(challenger: str, champion: str) -> dict[str, Any]:
    """A real gate decision: a challenger that ranks no better than chance against an informative champion."""
    rng = np.random.default_rng(11)
    n = 400
    y = (rng.random(n) < 0.25).astype(np.int64)
    attributes = pd.DataFrame({"sex": np.where(np.arange(n) % 2 == 0, "female", "male"), "age_band": "40-64",
                               "race": "White", "ethnicity": "Not Hispanic or Latino"})
    holdout = Holdout(y=y, groups=np.arange(n) // 2, attributes=attributes)
    schema = {"columns": ["age"], "numeric": ["age"], "categorical": []}
    good = np.clip(0.15 + 0.4 * y + rng.normal(0, 0.1, n), 0.01, 0.99)
    decision = evaluate_gates(holdout, Candidate(challenger, rng.uniform(0.05, 0.6, n), schema),
                              Candidate(champion, good, schema), available_columns=["age"],
                              gates=PromotionGates(n_boot=50, subgroup_n_boot=20))
    return {**decision.to_dict(), "promoted": False, "holdout": {"n": n, "patients": n // 2, "positives": int(y.sum())}}


def build(store: Store, registry: Registry) -> World:
    rng = np.random.default_rng(7)
    card = {"threshold": {"threshold": THRESHOLD}, "reference": _reference()}
    champion = registry.save(TASK, {"stand-in": "champion"}, card)
    registry.promote(TASK, champion, "champion", reason="first")
    challenger = registry.save(TASK, {"stand-in": "challenger"}, card)
    registry.promote(TASK, challenger, "challenger", reason="shadow")
    registry.record_decision(TASK, challenger, _decision(challenger, champion))
    truth = rng.uniform(0.05, 0.7, N)
    died = (rng.random(N) < truth) & (np.arange(N) < OPEN_FROM)
    sex = np.where(np.arange(N) % 2 == 0, "female", "male")
    risk = truth.copy()
    risk[sex == "male"] = rng.permutation(truth[sex == "male"])  # the men's risks rank nothing: a subgroup gap
    now = datetime.now(UTC)
    k = store.keyring
    prediction_ids = []
    P = S.table(S.Prediction)
    with store.engine.begin() as conn:
        for i in range(N):
            admitted = _h(i * 0.5)
            pid = conn.execute(insert(S.table(S.Patient)).values(
                uid=str(uuid.uuid4()), source_key=uuid.uuid4().hex, content_hash=uuid.uuid4().hex, sex=str(sex[i]),
                race="White" if i % 3 else "Asian", ethnicity="Not Hispanic or Latino",
                birth_date_enc=k.encrypt(f"{1940 + i % 50}-03-01", "patients.birth_date"),
                created_at=now, updated_at=now).returning(S.table(S.Patient).c.id)).scalar_one()
            open_stay = i >= OPEN_FROM
            discharged = None if open_stay else admitted + timedelta(hours=48 if died[i] else 72)
            eid = conn.execute(insert(S.table(S.Encounter)).values(
                uid=str(uuid.uuid4()), source_key=uuid.uuid4().hex, content_hash=uuid.uuid4().hex, patient_id=pid,
                status="in-progress" if open_stay else "finished", encounter_class="IMP", admitted_at=admitted,
                discharged_at=discharged, disposition=None if open_stay else ("exp" if died[i] else "home"),
                created_at=now, updated_at=now).returning(S.table(S.Encounter).c.id)).scalar_one()
            if died[i]:
                conn.execute(insert(S.table(S.Outcome)).values(
                    source_key=uuid.uuid4().hex, patient_id=pid, encounter_id=eid, kind="death",
                    occurred_at=admitted + timedelta(hours=48)))
            at = admitted + timedelta(hours=24)
            prediction_ids.append(int(conn.execute(insert(P).values(
                patient_id=pid, encounter_id=eid, task=TASK, model_version=champion, risk=float(risk[i]),
                band="high" if risk[i] >= THRESHOLD else "low", factors="[]", data_time=at, computed_at=now,
                shadow=False).returning(P.c.id)).scalar_one()))
            if i % 2 == 0:  # the challenger scores every other row in the shadow, with the true risks
                conn.execute(insert(P).values(
                    patient_id=pid, encounter_id=eid, task=TASK, model_version=challenger, risk=float(truth[i]),
                    band="high" if truth[i] >= THRESHOLD else "low", factors="[]", data_time=at, computed_at=now,
                    shadow=True))
        for j, (outcome, reason) in enumerate([("accepted", None), ("accepted", None), ("accepted", None),
                                               ("overridden", "too-many-alerts")]):
            conn.execute(insert(S.table(S.CdsFeedback)).values(
                client_iss="https://ehr.example", service="carecast-mortality", card_uuid=str(uuid.uuid4()),
                outcome=outcome, reason_code=reason, outcome_at=now - timedelta(hours=j), received_at=now))
        conn.execute(insert(S.table(S.CdsFeedback)).values(  # a month ago: counted in "all time" only
            client_iss="https://ehr.example", service="carecast-mortality", card_uuid=str(uuid.uuid4()),
            outcome="overridden", reason_code=None, outcome_at=now - timedelta(days=30), received_at=now))
    ui = alert_feedback
    ui.record(store.engine, k, prediction_id=prediction_ids[0], task=TASK, outcome=ui.ACKNOWLEDGED)
    ui.record(store.engine, k, prediction_id=prediction_ids[1], task=TASK, outcome=ui.DISMISSED,
              reason_code="data-artefact", comment="private words that stay out of the page")
    ui.record(store.engine, k, prediction_id=prediction_ids[2], task=TASK, outcome=ui.DISMISSED,
              reason_code="data-artefact")
    return World(champion=champion, challenger=challenger, registry=registry, died=died,
                 prediction_ids=prediction_ids)


@pytest.fixture
def world(store: Store, registry: Registry) -> World:
    return build(store, registry)  # the app's registry (tests/unit/serving/conftest.py)


def test_the_page_shows_every_check_of_the_task(browser: Callable[[str], FlaskClient], world: World,
                                                store: Store) -> None:
    page = browser("data_scientist").get("/ui/monitoring", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert f"<h2 id=\"task-head\">{TASK}" in text and world.champion in text and world.challenger in text
    # drift: 240 moments of 240 patients; age shifted (PSI alert), heart rate never stored (missing share
    # alert), sex as trained
    assert "240 scoring moments of 240 patients" in text
    drift = text.split('id="drift"')[1].split('id="performance"')[0]
    assert 'Status <span class="band band-high">alert</span>' in drift
    flagged = drift.split('id="drift-flagged"')[1]
    assert "<th scope=\"row\">age</th>" in flagged and "<th scope=\"row\">heart_rate_last_4h</th>" in flagged
    assert "<th scope=\"row\">sex</th>" not in flagged
    assert "10.1% → 100.0%" in flagged  # heart rate missing share, training (seeded) to recent
    assert "Population stability index of the 2 most shifted features" in drift  # age, sex (no heart rate)
    # performance: the champion's window, its charts, pending labels and the subgroup gap by sex
    perf = text.split('id="performance"')[1].split('id="shadow"')[0]
    assert f"Model <code>{world.champion}</code>" in perf
    assert f"Model <code>{world.challenger}</code> (challenger" in perf
    assert "Realised AUROC of model" in perf and "Observed / expected events of model" in perf
    assert "PPV at the alert threshold of model" in perf and "outcome still pending" in perf
    assert f"<td>{N}</td><td>{N - OPEN_FROM} (17%)</td>" in perf  # 40 of 240 still in hospital: pending
    gaps = perf.split('class="subgroup-gaps"')[1].split("</table>")[0]
    assert "<th scope=\"row\">sex</th>" in gaps and "(female vs male)" in gaps and "badge alert" in gaps
    assert "subgroup gap" in perf.split('id="performance-alerts"')[1]
    # shadow: every other row paired
    shadow = text.split('id="shadow"')[1].split('id="decisions"')[0]
    assert f"{N // 2} rows scored by both" in shadow and "Same alert decision" in shadow
    # the decision with each gate's reason
    decisions = text.split('id="decisions"')[1].split('id="feedback"')[0]
    assert "not promoted" in decisions and "refused by discrimination" in decisions
    assert '<span class="band band-high">fail</span> discrimination' in decisions
    assert '<span class="band band-low">pass</span> schema' in decisions
    # feedback: CDS 3 accepted and 1 overridden this week (plus an old override); UI 1 acknowledged, 2 dismissed
    feedback = text.split('id="feedback-rates"')[1]
    assert "3 accepted, 1 overridden (25% overridden)" in feedback  # last 7 days
    assert "3 accepted, 2 overridden (40% overridden)" in feedback  # all time
    assert "1 acknowledged, 2 dismissed (67% dismissed)" in feedback
    assert "Measurement error or artefact: 2" in feedback and "too-many-alerts: 1" in feedback
    assert "private words" not in text
    assert 'aria-current="page">Monitoring</a>' in text


def test_no_patient_identifier_reaches_the_page(hospital: Hospital, browser: Callable[[str], FlaskClient],
                                                world: World) -> None:
    # `hospital` first: it seeds named patients into the empty store, then `world` adds its own
    text = browser("admin").get(f"/ui/monitoring?task={TASK}", headers=HTML).text
    assert world.champion in text
    assert_no_secrets(text)
    for uid in hospital.uids.values():
        assert uid not in text


@pytest.mark.parametrize("role", ["clinician", "nurse", "auditor"])
def test_roles_without_metrics_read_are_refused(browser: Callable[[str], FlaskClient], role: str) -> None:
    client = browser(role)
    assert client.get("/ui/monitoring", headers=HTML).status_code == 403
    home = client.get("/ui/account", headers=HTML).text
    assert "/ui/monitoring" not in home  # no link in the navigation either


def test_data_scientists_and_admins_see_the_link_and_signed_out_browsers_sign_in(
        browser: Callable[[str], FlaskClient], app: Flask) -> None:
    for role in ("data_scientist", "admin"):
        text = browser(role).get("/ui/account", headers=HTML).text
        assert 'href="/ui/monitoring"' in text
    answer = app.test_client().get("/ui/monitoring", headers=HTML)
    assert answer.status_code == 302 and "/ui/login" in answer.headers["Location"]


def test_without_a_model_the_page_says_so_and_an_unknown_task_is_not_found(
        browser: Callable[[str], FlaskClient], store: Store) -> None:
    client = browser("data_scientist")
    page = client.get("/ui/monitoring", headers=HTML)
    assert page.status_code == 200 and "No model is registered yet" in page.text
    assert "Clinician feedback on alerts" in page.text  # feedback needs no model
    assert client.get("/ui/monitoring?task=no_such_task", headers=HTML).status_code == 404


def test_a_task_without_a_reference_explains_itself(hospital: Hospital, browser: Callable[[str], FlaskClient],
                                                    registry: Registry) -> None:
    version = registry.save("deterioration_24h", {"w": 1}, {"threshold": {"threshold": 0.3}})
    registry.promote("deterioration_24h", version, "champion", reason="first")
    text = browser("data_scientist").get("/ui/monitoring", headers=HTML).text
    assert "has no reference distributions" in text  # the drift check's own message
    # the seeded hospital's scores are stamped after its data end: no window holds them yet
    assert "No stored prediction of this task yet." in text
    assert "No challenger is scoring in shadow" in text and "No retraining run has been recorded" in text


def test_checks_are_cached_and_refresh_recomputes(browser: Callable[[str], FlaskClient], world: World,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = monitoring_page.check_drift

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(monitoring_page, "check_drift", counting)
    client = browser("data_scientist")
    for _ in range(2):
        assert client.get("/ui/monitoring", headers=HTML).status_code == 200
    assert calls == [TASK]
    again = client.get("/ui/monitoring?refresh=1", headers=HTML)
    assert again.status_code == 200 and calls == [TASK, TASK]


def test_many_flagged_features_are_listed_worst_first_the_rest_behind_a_disclosure(
        browser: Callable[[str], FlaskClient], world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    names = [f"feature_{i:02d}" for i in range(20)]
    train = pd.DataFrame({n: rng.normal(0, 1, 2000) for n in names})
    recent = pd.DataFrame({n: rng.normal(0.1 * (i + 5), 1, 500) for i, n in enumerate(names)})  # growing shifts
    report = compare_with_reference(reference_distributions(train, names, []), recent, task=TASK, n_patients=500,
                                    model_version=world.champion)
    assert len(report.flagged) == 20
    monkeypatch.setattr(monitoring_page, "check_drift", lambda *_a, **_k: report)
    text = browser("data_scientist").get("/ui/monitoring", headers=HTML).text
    shown = text.split('id="drift-flagged"')[1].split("</table>")[0]
    more = text.split('id="drift-flagged-more"')[1].split("</table>")[0]
    assert "the first 15 of 20" in shown and "5 more features over a threshold" in text
    assert shown.index("feature_19") < shown.index("feature_05") and "feature_04" not in shown
    assert all(f"feature_{i:02d}" in more for i in range(5))


def test_result_cache_expires() -> None:
    now = [100.0]
    cache = ResultCache(seconds=60, clock=lambda: now[0])
    made: list[int] = []

    def compute() -> int:
        made.append(len(made))
        return len(made)

    assert cache.get(("a",), compute) == (1, 0.0)
    now[0] += 30
    assert cache.get(("a",), compute) == (1, 30.0)
    assert cache.get(("b",), compute) == (2, 0.0)  # another key
    now[0] += 31
    assert cache.get(("a",), compute) == (3, 0.0)  # stale: computed again
    assert cache.get(("a",), compute, refresh=True) == (4, 0.0)


def test_feedback_counts_by_channel_outcome_and_reason(store: Store, tmp_path: Path) -> None:
    built = build(store, Registry(tmp_path / "models"))
    assert built.prediction_ids
    now = datetime.now(UTC)
    recent = feedback_counts(store.engine, since=now - timedelta(days=7), until=now + timedelta(minutes=1))
    assert recent == [
        FeedbackCount("cds", "accepted", None, 3),
        FeedbackCount("cds", "overridden", "too-many-alerts", 1),
        FeedbackCount("ui", "accepted", None, 1),
        FeedbackCount("ui", "overridden", "data-artefact", 2),
    ]
    ever = feedback_counts(store.engine)
    assert FeedbackCount("cds", "overridden", None, 1) in ever and len(ever) == 5
