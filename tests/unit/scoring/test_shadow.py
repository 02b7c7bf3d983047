"""Shadow mode on SQLite and PostgreSQL: the challenger's scores are stored beside the champion's, never shown
as the current risk, and compared with them (agreement now, AUROC of both once the outcomes are known)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert, select

from carecast.domain.frames import ClinicalFrames
from carecast.models.tasks import COHORT_COLUMNS, TASKS, Task
from carecast.scoring.predictor import Predictor
from carecast.scoring.scorer import latest_predictions, score_patient
from carecast.scoring.shadow import agreement, compare_shadow, label_pairs, paired_scores
from carecast.store import Store
from carecast.store import schema as S
from tests.unit.scoring import TASK, TrainedModels, ingest, patient_ids, registry_copy, small_hospital


@pytest.fixture
def hospital(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Store:
    ingest(store, small_hospital(tmp_path_factory))
    return store


def test_the_challenger_is_scored_in_shadow_and_compared(hospital: Store, models: TrainedModels,
                                                         tmp_path: Path) -> None:
    registry = registry_copy(models, tmp_path / "models")
    registry.promote(TASK, models.other, alias="challenger")
    predictor = Predictor(registry, challengers=True)
    stored = []
    for pid in patient_ids(hospital):
        now = score_patient(hospital, predictor, pid, shadow_challenger=True)
        stored += now
        if now:
            stored += score_patient(hospital, predictor, pid, shadow_challenger=True,
                                    at=now[0].data_time - timedelta(hours=2))
    shadow = [p for p in stored if p.shadow]
    shown = [p for p in stored if not p.shadow]
    assert shadow and len(shadow) == len(shown)
    assert {p.model_version for p in shadow} == {models.other} and {p.model_version for p in shown} == {models.champion}
    for pid in {p.patient_id for p in stored}:
        assert latest_predictions(hospital.engine, pid)[TASK].model_version == models.champion

    pairs = paired_scores(hospital.engine, TASK, models.champion, models.other)
    assert len(pairs) == len(shown)
    by_key = {(p.patient_id, pd.Timestamp(p.data_time)): p.risk for p in shadow}
    assert all(by_key[(r.patient_id, r.data_time)] == pytest.approx(r.risk_challenger) for r in pairs.itertuples())

    found = compare_shadow(hospital, TASK, models.champion, models.other, n_boot=50)
    assert found.pairs == len(shown) and found.labelled + found.pending == found.pairs
    assert 0 <= found.agreement["alert_agreement"] <= 1 and 0 <= found.agreement["band_agreement"] <= 1
    assert found.agreement["mean_abs_risk_difference"] > 0  # two different models
    assert json.loads(json.dumps(found.to_dict(), allow_nan=False))["champion"] == models.champion

    later = datetime.now(UTC) + timedelta(days=1)
    assert compare_shadow(hospital, TASK, models.champion, models.other, since=later).pairs == 0


class _KnownOutcomes(Task):
    """A cohort with fixed labels for chosen (encounter, time) moments."""

    name = TASK
    description = "test outcomes"

    def __init__(self, rows: pd.DataFrame) -> None:
        self.rows = rows

    def cohort(self, frames: ClinicalFrames) -> pd.DataFrame:
        return self.rows[COHORT_COLUMNS]


def test_once_outcomes_arrive_both_aurocs_are_compared(hospital: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with hospital.engine.connect() as conn:
        stays = conn.execute(select(S.Encounter.id, S.Encounter.patient_id).order_by(S.Encounter.id)).all()
    base = datetime(2026, 2, 1, tzinfo=UTC)
    rng = np.random.default_rng(0)
    rows, cohort = [], []
    for i, stay in enumerate(stays):
        for k in range(6):
            t = base + timedelta(days=i, hours=4 * k)
            label = int((i + k) % 3 == 0)
            for version, risk in (("champ", 0.7 if label else 0.2), ("chall", float(rng.random()))):
                rows.append({"patient_id": stay.patient_id, "encounter_id": stay.id, "task": TASK,
                             "model_version": version, "risk": risk, "band": "high" if risk >= 0.5 else "low",
                             "news2": None, "factors": "[]", "data_time": t, "computed_at": base,
                             "shadow": version == "chall"})
            if k < 5:  # the last moment's outcome window is still open: pending
                cohort.append({"patient_id": stay.patient_id, "encounter_id": stay.id, "t": pd.Timestamp(t),
                               "label": label, "event_at": pd.NaT, "split_time": pd.Timestamp(base)})
    with hospital.engine.begin() as conn:
        conn.execute(insert(S.Prediction), rows)
    monkeypatch.setitem(TASKS, TASK, _KnownOutcomes(pd.DataFrame(cohort)))

    found = compare_shadow(hospital, TASK, "champ", "chall", n_boot=100)
    n = len(stays) * 6
    assert found.pairs == n and found.pending == len(stays) and found.labelled == n - len(stays)
    assert found.positives == sum(c["label"] for c in cohort)
    assert found.auroc is not None
    assert found.auroc["champion"] == 1.0 and found.auroc["challenger"] < 0.8
    assert found.auroc["difference"] == pytest.approx(found.auroc["challenger"] - 1.0)
    assert found.auroc["difference_ci_low"] <= found.auroc["difference"] <= found.auroc["difference_ci_high"]


def test_agreement_and_labels_are_plain_functions() -> None:
    t = pd.Timestamp("2026-02-01T00:00:00Z")
    pairs = pd.DataFrame({"patient_id": [1, 1, 2], "encounter_id": pd.array([10, 10, 20], dtype="Int64"),
                          "data_time": [t, t + pd.Timedelta(hours=1), t],
                          "risk_champion": [0.9, 0.1, 0.4], "band_champion": ["high", "low", "medium"],
                          "risk_challenger": [0.8, 0.6, 0.4], "band_challenger": ["high", "high", "medium"]})
    a = agreement(pairs)
    assert a["alert_agreement"] == pytest.approx(2 / 3) and a["band_agreement"] == pytest.approx(2 / 3)
    assert a["mean_abs_risk_difference"] == pytest.approx(0.6 / 3) and a["max_abs_risk_difference"] == 0.5
    assert agreement(pairs.iloc[:0]) == {}
    cohort = pd.DataFrame({"encounter_id": [10, 20], "t": [t, t], "label": [1, 0]})
    labels = label_pairs(pairs, cohort)
    assert labels[0] == 1 and np.isnan(labels[1]) and labels[2] == 0
