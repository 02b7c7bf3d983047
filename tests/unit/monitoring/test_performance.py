"""Performance as outcomes arrive (no database here; tests/unit/store/test_monitoring.py runs it on the store):
labels as the tasks define them, pending and ineligible predictions, realised metrics, subgroup gaps, windows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from carecast.models import metrics as M
from carecast.models.tasks import TASKS
from carecast.monitoring.drift import MonitoringError
from carecast.monitoring.performance import (
    INELIGIBLE,
    PENDING,
    RESOLVED,
    card_threshold,
    default_thresholds,
    evaluate,
    label_predictions,
    measure,
    rolling_windows,
)
from tests.unit.monitoring import Hospital, hospital

T0 = pd.Timestamp("2026-01-05T00:00:00Z")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Hospital:
    return hospital(tmp_path_factory, 21)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_labels_agree_with_the_task_cohort(task: str, sim: Hospital) -> None:
    frames = sim.frames
    end = max(frames.observations["effective_at"].max(), frames.encounters["admitted_at"].max(),
              frames.encounters["discharged_at"].max(), frames.outcomes["occurred_at"].max())
    # One wearable reading 31 days on: every 30-day readmission window is then observed (8 simulated days
    # would otherwise censor them all); a wearable reading adds no scoring moment.
    end = end + pd.Timedelta(days=31)
    late = pd.DataFrame({"patient_id": [int(frames.patients["patient_id"].iloc[0])], "encounter_id": [np.nan],
                         "variable": ["steps"], "value": [0.0], "effective_at": [end], "source": ["wearable"]})
    frames = replace(frames, observations=pd.concat([frames.observations, late], ignore_index=True)).conformed()
    cohort = TASKS[task].cohort(frames)
    assert len(cohort) > 20 and cohort["label"].sum() > 0
    enc = frames.encounters.set_index("encounter_id").reindex(cohort["encounter_id"])
    predictions = pd.DataFrame({
        "encounter_id": cohort["encounter_id"].astype("float64").to_numpy(), "data_time": cohort["t"].to_numpy(),
        "admitted_at": enc["admitted_at"].to_numpy(), "discharged_at": enc["discharged_at"].to_numpy(),
        "disposition": enc["disposition"].to_numpy()})
    labels = label_predictions(predictions, frames.outcomes, task, end)
    assert (labels["label_status"] == RESOLVED).all()
    assert (labels["label"].to_numpy() == cohort["label"].to_numpy()).all()


def _stays(rows: list[tuple[float, float | None, float, str | None]]) -> pd.DataFrame:
    """(admitted hour, discharged hour or None, prediction hour, disposition) -> prediction rows."""
    return pd.DataFrame({
        "encounter_id": np.arange(1, len(rows) + 1, dtype="float64"),
        "admitted_at": [T0 + pd.Timedelta(hours=a) for a, _, _, _ in rows],
        "discharged_at": pd.to_datetime([None if d is None else T0 + pd.Timedelta(hours=d) for _, d, _, _ in rows],
                                        utc=True),
        "data_time": [T0 + pd.Timedelta(hours=t) for _, _, t, _ in rows],
        "disposition": [x for _, _, _, x in rows]})


def _outcomes(rows: list[tuple[int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame({"encounter_id": [float(e) for e, _, _ in rows], "kind": [k for _, k, _ in rows],
                         "occurred_at": [T0 + pd.Timedelta(hours=h) for _, _, h in rows]})


def test_deterioration_labels_pending_and_ineligible() -> None:
    preds = _stays([(0, None, 10, None), (0, 100, 10, None), (0, None, 90, None), (0, None, 50, None),
                    (0, None, 10, None)])
    outcomes = _outcomes([(1, "icu_transfer", 20), (4, "death", 40), (5, "icu_transfer", 40)])
    end = T0 + pd.Timedelta(hours=100)
    labels = label_predictions(preds, outcomes, "deterioration_24h", end)
    # event 10 h later; nothing within 24 h and the window observed; window still open; after the event;
    # event 30 h later (outside the 24 h)
    assert list(labels["label_status"]) == [RESOLVED, RESOLVED, PENDING, INELIGIBLE, RESOLVED]
    assert list(labels["label"].fillna(-1)) == [1, 0, -1, -1, 0]


def test_encounter_level_labels() -> None:
    preds = _stays([(0, 200, 24, None), (0, 100, 24, "home"), (0, None, 24, None), (0, 60, 24, "exp")])
    outcomes = _outcomes([(1, "death", 150), (2, "readmission", 500), (4, "death", 60)])
    end = T0 + pd.Timedelta(hours=400)
    mortality = label_predictions(preds, outcomes, "inhospital_mortality", end)
    assert list(mortality["label"].fillna(-1)) == [1, 0, -1, 1]
    assert list(mortality["label_status"]) == [RESOLVED, RESOLVED, PENDING, RESOLVED]
    readmission = label_predictions(preds, outcomes, "readmission_30d", end)
    # discharged at 200 h: 30 days not yet over and no readmission -> pending; readmitted 400 h after discharge
    # (within 30 days); still in hospital -> pending; died -> ineligible
    assert list(readmission["label_status"]) == [PENDING, RESOLVED, PENDING, INELIGIBLE]
    assert readmission["label"].iloc[1] == 1
    long_stay = label_predictions(preds, outcomes, "long_stay_7d", end)
    # 200 h > 168 h; 100 h; open at 400 h > 168 h; 60 h
    assert list(long_stay["label"]) == [1, 0, 1, 0]
    assert (long_stay["label_status"] == RESOLVED).all()
    with pytest.raises(MonitoringError, match="unknown task"):
        label_predictions(preds, outcomes, "nope", end)


def _rows(n: int, seed: int, *, informative_male: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sex = np.where(np.arange(n) % 2 == 0, "female", "male")
    truth = rng.uniform(0.02, 0.6, n)
    y = (rng.random(n) < truth).astype(float)
    risk = truth.copy()
    if not informative_male:
        risk[sex == "male"] = rng.permutation(truth[sex == "male"])  # same calibration in the large, no ranking
    status = np.where(np.arange(n) % 5 == 4, PENDING, RESOLVED)
    y[status == PENDING] = np.nan
    return pd.DataFrame({
        "patient_id": np.arange(n), "risk": risk, "label": y, "label_status": status,
        "data_time": [T0 + pd.Timedelta(hours=int(h)) for h in rng.integers(0, 24 * 6, n)],
        "birth_date": [T0 - pd.Timedelta(days=365.25 * a) for a in rng.integers(20, 90, n)],
        "sex": sex, "race": "white", "ethnicity": "not hispanic or latino"})


def test_measure_realised_metrics_pending_share_and_ppv() -> None:
    rows = _rows(1000, 0)
    th = default_thresholds()
    out = measure(rows, 0.4, th)
    resolved = rows[rows["label_status"] == RESOLVED]
    y, p = resolved["label"].to_numpy(), resolved["risk"].to_numpy()
    assert out["n"] == 1000 and out["n_pending"] == 200 and out["n_resolved"] == 800
    assert out["pending_share"] == pytest.approx(0.2)
    pending = rows[rows["label_status"] == PENDING]
    assert out["expected_events_pending"] == pytest.approx(pending["risk"].sum())
    assert out["expected_event_rate"] == pytest.approx(rows["risk"].mean())
    assert out["auroc"] == pytest.approx(M.auroc(y, p))
    assert out["observed_expected"] == pytest.approx(y.sum() / p.sum())
    assert out["ppv"] == pytest.approx(y[p >= 0.4].mean())
    assert out["sensitivity"] == pytest.approx(y[p >= 0.4].sum() / y.sum())
    assert 0.7 < out["calibration_slope"] < 1.4  # the risks are the true probabilities
    assert out["alerts"] == []
    assert set(out["subgroups"]) == {"sex", "age_band", "race", "ethnicity"}
    assert out["subgroup_auroc_gaps"]["sex"]["gap"] < th.subgroup_auroc_gap_alert


def test_a_subgroup_gap_and_miscalibration_raise_alerts() -> None:
    th = default_thresholds()
    gap = measure(_rows(1000, 1, informative_male=False), 0.4, th)
    assert {a["kind"] for a in gap["alerts"]} == {"subgroup_gap"}
    assert gap["subgroup_auroc_gaps"]["sex"]["lowest"] == "male"
    assert gap["subgroup_auroc_gaps"]["sex"]["gap"] > th.subgroup_auroc_gap_alert
    assert any(a["detail"].startswith("sex:") for a in gap["alerts"])
    under = _rows(1000, 2)
    under["risk"] = under["risk"] / 3  # predicts a third of the events
    assert "calibration" in [a["kind"] for a in measure(under, 0.4, th)["alerts"]]
    # Too few outcomes: no AUROC, no alert, but counts and the expected rate
    few = measure(_rows(30, 3), 0.4, replace(th, min_outcomes=50))
    assert few["auroc"] is None and few["alerts"] == [] and few["expected_event_rate"] is not None


def test_rolling_windows_and_evaluate_per_version() -> None:
    th = replace(default_thresholds(), window_days=2, step_days=1)
    end = T0 + pd.Timedelta(days=6)
    windows = rolling_windows(T0, end, th)
    assert windows[-1] == (end - pd.Timedelta(days=2), end)
    assert [b - a for a, b in windows] == [pd.Timedelta(days=2)] * len(windows) and len(windows) == 7
    with pytest.raises(MonitoringError):
        rolling_windows(T0, end, replace(th, step_days=0))
    rows = _rows(400, 4)
    preds = rows.assign(encounter_id=np.arange(1, 401, dtype="float64"), admitted_at=T0 - pd.Timedelta(days=1),
                        discharged_at=pd.NaT, disposition=None, model_version=np.where(rows.index < 300, "a", "b"),
                        shadow=False).drop(columns=["label", "label_status"])
    models = evaluate(preds, _outcomes([]), "inhospital_mortality", end, {"a": 0.3}, th)
    assert [(m["model_version"], m["threshold"]) for m in models] == [("a", 0.3), ("b", None)]
    a_windows = models[0]["windows"]
    assert sum(1 for w in a_windows if w["end"] == end.isoformat()) == 1
    # Every prediction is pending (open stays, nobody died): the estimate is the mean predicted risk
    latest = a_windows[-1]
    inside = preds[(preds["model_version"] == "a") & (preds["data_time"] > end - pd.Timedelta(days=2))]
    assert latest["pending_share"] == 1.0 and latest["n"] == len(inside)
    assert latest["expected_event_rate"] == pytest.approx(inside["risk"].mean())


def test_card_threshold() -> None:
    assert card_threshold({"threshold": {"threshold": 0.2, "flagged_share": 0.05}}) == 0.2
    assert card_threshold({"threshold": {}}) is None
    assert card_threshold({}) is None and card_threshold(None) is None
    assert card_threshold({"threshold": {"threshold": 1.5}}) is None
