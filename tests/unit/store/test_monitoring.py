"""Monitoring queries and `check_performance` on SQLite and PostgreSQL, over a hand-built hospital whose
predictions, outcomes and card feedback are known exactly."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import insert

from carecast.cli import main
from carecast.crypto import write_key_file
from carecast.models.registry import Registry
from carecast.monitoring.drift import ALERT_EXIT_CODE, MonitoringError
from carecast.monitoring.performance import check_performance, default_thresholds
from carecast.store import Store, alert_feedback
from carecast.store import schema as S
from carecast.store.monitoring import (
    card_feedback_counts,
    data_end,
    outcomes_of_predicted_encounters,
    patients_in_hospital,
    predictions_with_context,
)

T0 = datetime(2026, 1, 5, tzinfo=UTC)
TASK = "inhospital_mortality"
N = 120  # patients; the first 100 stays are over (died at 48 h or went home at 72 h), the last 20 still open
THRESHOLD = 0.3


@dataclass
class Built:
    version: str
    registry: Registry
    risk: np.ndarray
    died: np.ndarray
    sex: np.ndarray
    patient_ids: list[int]


def _h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def _build(store: Store, tmp_path: Path) -> Built:
    rng = np.random.default_rng(7)
    registry = Registry(tmp_path / "models")
    version = registry.save(TASK, {"stand-in": "estimator"}, {"threshold": {"threshold": THRESHOLD}})
    truth = rng.uniform(0.05, 0.7, N)
    died = (rng.random(N) < truth) & (np.arange(N) < 100)
    sex = np.where(np.arange(N) % 2 == 0, "female", "male")
    risk = truth.copy()
    risk[sex == "male"] = rng.permutation(truth[sex == "male"])  # men's risks carry no ranking
    now = datetime.now(UTC)
    k = store.keyring
    with store.engine.begin() as conn:
        patient_ids = []
        for i in range(N):
            pid = conn.execute(insert(S.table(S.Patient)).values(
                uid=str(uuid.uuid4()), source_key=uuid.uuid4().hex, content_hash=uuid.uuid4().hex, sex=str(sex[i]),
                race="White" if i % 3 else "Asian", ethnicity="Not Hispanic or Latino",
                birth_date_enc=k.encrypt(f"{1940 + i % 50}-03-01", "patients.birth_date"),
                created_at=now, updated_at=now).returning(S.table(S.Patient).c.id)).scalar_one()
            patient_ids.append(int(pid))
            open_stay = i >= 100
            discharged = None if open_stay else _h(i + (48 if died[i] else 72))
            eid = conn.execute(insert(S.table(S.Encounter)).values(
                uid=str(uuid.uuid4()), source_key=uuid.uuid4().hex, content_hash=uuid.uuid4().hex, patient_id=pid,
                status="in-progress" if open_stay else "finished", encounter_class="IMP", admitted_at=_h(i),
                discharged_at=discharged, disposition=None if open_stay else ("exp" if died[i] else "home"),
                created_at=now, updated_at=now).returning(S.table(S.Encounter).c.id)).scalar_one()
            if died[i]:
                conn.execute(insert(S.table(S.Outcome)).values(
                    source_key=uuid.uuid4().hex, patient_id=pid, encounter_id=eid, kind="death",
                    occurred_at=_h(i + 48)))
            conn.execute(insert(S.table(S.Prediction)).values(
                patient_id=pid, encounter_id=eid, task=TASK, model_version=version, risk=float(risk[i]),
                band="high" if risk[i] >= THRESHOLD else "low", factors="[]", data_time=_h(i + 24),
                computed_at=now, shadow=False))
            if i % 4 == 0:  # a challenger scoring in the shadow
                conn.execute(insert(S.table(S.Prediction)).values(
                    patient_id=pid, encounter_id=eid, task=TASK, model_version="shadow-v", risk=0.5, band="high",
                    factors="[]", data_time=_h(i + 24), computed_at=now, shadow=True))
        for j, outcome in enumerate(["accepted", "accepted", "accepted", "overridden"]):
            conn.execute(insert(S.table(S.CdsFeedback)).values(
                client_iss="https://ehr.example", service="carecast-deterioration", card_uuid=str(uuid.uuid4()),
                outcome=outcome, outcome_at=_h(150 + j), received_at=now))
    return Built(version=version, registry=registry, risk=risk, died=died, sex=sex, patient_ids=patient_ids)


@pytest.fixture
def built(store: Store, tmp_path: Path) -> Built:
    return _build(store, tmp_path)


def test_queries(store: Store, built: Built) -> None:
    # the latest moment: the last discharge (patient 99, home at 99 + 72 h) or death
    last_discharge = max(i + (48 if built.died[i] else 72) for i in range(100))
    assert data_end(store.engine) == _h(max(last_discharge, N - 1))
    # in hospital during (150 h, 160 h]: discharged after 150 h, or still in
    expected = [built.patient_ids[i] for i in range(N)
                if i >= 100 or i + (48 if built.died[i] else 72) > 150]
    assert patients_in_hospital(store.engine, _h(150), _h(160)) == sorted(expected)
    preds = predictions_with_context(store.engine, store.keyring, TASK)
    assert len(preds) == N + len(range(0, N, 4))
    assert preds["shadow"].sum() == len(range(0, N, 4))
    first = preds[(preds["patient_id"] == built.patient_ids[1]) & ~preds["shadow"]].iloc[0]
    assert first["birth_date"] == pd.Timestamp("1941-03-01", tz="UTC")
    assert first["data_time"] == pd.Timestamp(_h(25)) and first["admitted_at"] == pd.Timestamp(_h(1))
    assert first["sex"] == "male" and first["race"] == "White"
    assert len(predictions_with_context(store.engine, store.keyring, TASK, since=_h(30), until=_h(40))) == \
        sum(1 for i in range(N) if 30 <= i + 24 <= 40) + sum(1 for i in range(0, N, 4) if 30 <= i + 24 <= 40)
    assert predictions_with_context(store.engine, store.keyring, "readmission_30d").empty
    outcomes = outcomes_of_predicted_encounters(store.engine, TASK)
    assert len(outcomes) == int(built.died.sum()) and set(outcomes["kind"]) == {"death"}
    assert card_feedback_counts(store.engine) == {"accepted": 3, "overridden": 1}
    assert card_feedback_counts(store.engine, since=_h(152)) == {"accepted": 1, "overridden": 1}
    # web-UI acknowledgements share the table but are not CDS Hooks cards
    alert_feedback.record(store.engine, store.keyring, prediction_id=int(preds["prediction_id"].iloc[0]), task=TASK,
                          outcome=alert_feedback.ACKNOWLEDGED, now=_h(153))
    assert card_feedback_counts(store.engine) == {"accepted": 3, "overridden": 1}


def test_check_performance(store: Store, built: Built) -> None:
    th = replace(default_thresholds(), window_days=30, min_outcomes=5, min_subgroup_n=20)
    report = check_performance(store, built.registry, TASK, thresholds=th)
    by_version = {(m["model_version"], m["shadow"]): m for m in report.models}
    assert set(by_version) == {(built.version, False), ("shadow-v", True)}
    live = by_version[(built.version, False)]
    assert live["threshold"] == THRESHOLD
    latest = live["windows"][-1]
    assert report.as_of is not None and latest["end"] == report.as_of.isoformat()
    resolved = np.arange(N) < 100
    assert latest["n"] == N and latest["n_resolved"] == 100 and latest["n_pending"] == 20
    assert latest["pending_share"] == pytest.approx(20 / N)
    assert latest["expected_events_pending"] == pytest.approx(built.risk[~resolved].sum())
    y, p = built.died[resolved].astype(float), built.risk[resolved]
    assert latest["events"] == int(y.sum())
    assert latest["ppv"] == pytest.approx(y[p >= THRESHOLD].mean())
    assert latest["observed_expected"] == pytest.approx(y.sum() / p.sum())
    # men's risks are shuffled: the sex gap alerts, and only live models' alerts count
    assert latest["subgroup_auroc_gaps"]["sex"]["lowest"] == "male"
    assert report.status == "alert"
    assert any(a["kind"] == "subgroup_gap" and a["detail"].startswith("sex:") for a in report.alerts)
    assert all(a["model_version"] == built.version for a in report.alerts)
    assert report.feedback == {"accepted": 3, "overridden": 1, "override_share": 0.25}
    text = "\n".join(report.lines())
    assert built.version in text and "ALERT subgroup_gap" in text and "(shadow)" in text
    body = report.to_dict()
    assert body["status"] == "alert" and body["models"][0]["windows"]


def test_check_performance_empty_and_unknown(store: Store, tmp_path: Path) -> None:
    report = check_performance(store, Registry(tmp_path / "models"), TASK)
    assert report.status == "no_predictions" and report.models == []
    with pytest.raises(MonitoringError):
        check_performance(store, None, "nope")


def test_cli_performance(store: Store, built: Built, database_url: str, tmp_path: Path) -> None:
    write_key_file(tmp_path / "keyring.json", store.keyring)
    env = {"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_DATABASE_URL": database_url,
           "CARECAST_KEY_FILE": str(tmp_path / "keyring.json"), "CARECAST_MODEL_REGISTRY": built.registry.root}
    result = CliRunner().invoke(main, ["monitor", "performance", "--task", TASK, "--window-days", "30", "--json"],
                                env=env)
    # default thresholds (30 resolved per subgroup, 10 outcomes): the 50 men still show the gap
    assert result.exit_code == ALERT_EXIT_CODE, result.output
    assert json.loads(result.output)["feedback"]["overridden"] == 1
    quiet = CliRunner().invoke(main, ["monitor", "performance", "--task", "long_stay_7d"], env=env)
    assert quiet.exit_code == 0, quiet.output
    assert "long_stay_7d" in quiet.output and "NO_PREDICTIONS" in quiet.output
