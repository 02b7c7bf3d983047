"""Validation metrics against known truths: scikit-learn's reference implementations, data simulated from a known
logistic model, and hand-worked examples whose expected values are written out below."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from carecast.models import metrics as M
from carecast.models.metrics import (
    age_band,
    auroc,
    binary_metrics,
    compare_auroc,
    reliability_curve,
    score_auroc,
    subgroup_metrics,
    threshold_table,
)


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


@pytest.fixture(scope="module")
def calibrated() -> tuple[np.ndarray, np.ndarray]:
    """Risks from a known logistic model and outcomes drawn from them: calibrated by construction."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=20_000)
    p = _expit(-2.0 + 1.3 * x)
    y = (rng.random(p.size) < p).astype(int)
    return y, p


def _contains(entry: dict[str, float], value: float) -> bool:
    return entry["ci_low"] <= value <= entry["ci_high"]


# --- binary_metrics ---------------------------------------------------------------------------------------------------


def test_calibrated_model_has_slope_one_and_intercept_zero_within_ci(calibrated):
    y, p = calibrated
    m = binary_metrics(y, p, n_boot=200, seed=1)
    assert _contains(m["calibration_slope"], 1.0)
    assert _contains(m["calibration_intercept"], 0.0)
    assert m["calibration_slope"]["value"] == pytest.approx(1.0, abs=0.08)
    assert m["calibration_intercept"]["value"] == pytest.approx(0.0, abs=0.08)
    for key in ("auroc", "auprc", "brier", "calibration_slope", "calibration_intercept"):
        assert m[key]["ci_low"] <= m[key]["value"] <= m[key]["ci_high"], key
    assert m["n"] == {"value": 20_000.0}
    assert m["prevalence"]["value"] == pytest.approx(y.mean())


def test_point_estimates_match_scikit_learn(calibrated):
    y, p = calibrated
    m = binary_metrics(y, p, n_boot=0)
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["auprc"]["value"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["brier"]["value"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(_logit(p)[:, None], y)
    assert m["calibration_slope"]["value"] == pytest.approx(lr.coef_[0, 0], abs=1e-4)
    assert math.isnan(m["auroc"]["ci_low"])  # no resamples, no interval


def test_calibration_intercept_solves_the_offset_score_equation(calibrated):
    y, p = calibrated
    a = binary_metrics(y, p**2, n_boot=0)["calibration_intercept"]["value"]
    # Maximum likelihood with the offset: the fitted risks sum to the observed events.
    assert np.sum(_expit(a + _logit(p**2))) == pytest.approx(y.sum(), rel=1e-9)


def test_too_extreme_and_too_timid_predictions_move_the_slope_the_expected_way(calibrated):
    y, p = calibrated
    extreme = binary_metrics(y, _expit(2.0 * _logit(p)), n_boot=100)["calibration_slope"]
    timid = binary_metrics(y, _expit(0.5 * _logit(p)), n_boot=100)["calibration_slope"]
    assert extreme["ci_high"] < 1.0
    assert extreme["value"] == pytest.approx(0.5, abs=0.05)
    assert timid["ci_low"] > 1.0
    assert timid["value"] == pytest.approx(2.0, abs=0.2)


def test_under_predicted_risk_gives_positive_intercept(calibrated):
    y, p = calibrated
    m = binary_metrics(y, p**2, n_boot=100)
    assert m["calibration_intercept"]["ci_low"] > 0.0


def test_perfect_separation():
    y = np.r_[np.zeros(50), np.ones(50)]
    p = np.r_[np.linspace(0.01, 0.4, 50), np.linspace(0.6, 0.99, 50)]
    m = binary_metrics(y, p, n_boot=50)
    assert m["auroc"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert m["auprc"]["value"] == 1.0
    assert math.isnan(m["calibration_slope"]["value"])  # the maximum-likelihood slope is infinite


def test_single_class_gives_nan_rank_metrics_but_a_brier_score():
    m = binary_metrics(np.zeros(20), np.full(20, 0.1), n_boot=20)
    assert math.isnan(m["auroc"]["value"])
    assert math.isnan(m["auroc"]["ci_low"])
    assert math.isnan(m["calibration_intercept"]["value"])
    assert m["brier"]["value"] == pytest.approx(0.01)


def test_resamples_with_one_class_are_skipped_not_fatal():
    # One event in 40 rows: many resamples hold no event at all.
    y = np.zeros(40)
    y[3] = 1
    p = np.linspace(0.05, 0.5, 40)
    m = binary_metrics(y, p, n_boot=200, seed=3)
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert 0.0 <= m["auroc"]["ci_low"] <= m["auroc"]["ci_high"] <= 1.0


def test_cluster_bootstrap_is_wider_when_patients_repeat():
    rng = np.random.default_rng(11)
    p_patient = _expit(rng.normal(-1.0, 1.0, size=300))
    y_patient = (rng.random(300) < p_patient).astype(int)
    # Each patient contributes ten identical predictions: 3,000 rows but only 300 independent units.
    y, p, ids = np.repeat(y_patient, 10), np.repeat(p_patient, 10), np.repeat(np.arange(300), 10)
    naive = binary_metrics(y, p, n_boot=300, seed=5)
    cluster = binary_metrics(y, p, ids, n_boot=300, seed=5)
    for key in ("auroc", "brier", "calibration_slope"):
        naive_width = naive[key]["ci_high"] - naive[key]["ci_low"]
        cluster_width = cluster[key]["ci_high"] - cluster[key]["ci_low"]
        assert cluster_width > 2.0 * naive_width, key  # about sqrt(10) times wider
    assert cluster["auroc"]["value"] == naive["auroc"]["value"]


def test_one_row_per_group_is_the_ordinary_bootstrap(calibrated):
    y, p = calibrated
    y, p = y[:2000], p[:2000]
    assert binary_metrics(y, p, np.arange(2000), n_boot=50) == binary_metrics(y, p, n_boot=50)


def test_bootstrap_is_reproducible_from_its_seed(calibrated):
    y, p = calibrated
    y, p = y[:3000], p[:3000]
    assert binary_metrics(y, p, n_boot=60, seed=2) == binary_metrics(y, p, n_boot=60, seed=2)
    assert binary_metrics(y, p, n_boot=60, seed=2) != binary_metrics(y, p, n_boot=60, seed=3)


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "0 or 1"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "finite"),
        ([0, 1, 1], [0.1, 1.2, 0.3], r"\[0, 1\]"),
        ([0, 1, 1], [0.1, 0.2], "as long as"),
        ([], [], "no predictions"),
    ],
)
def test_bad_input_is_rejected(y, p, message):
    with pytest.raises(ValueError, match=message):
        binary_metrics(y, p, n_boot=0)


# --- auroc and compare_auroc ------------------------------------------------------------------------------------------


def test_auroc_averages_ties_like_scikit_learn():
    rng = np.random.default_rng(2)
    score = rng.integers(0, 8, size=500)  # a NEWS2-like integer score: many ties
    y = (rng.random(500) < 0.05 + 0.08 * score).astype(int)
    assert auroc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert auroc([0, 1], [0.3, 0.3]) == 0.5
    assert auroc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert auroc([1, 1, 0], [0.1, 0.2, 0.3]) == 0.0
    assert math.isnan(auroc([1, 1], [0.1, 0.2]))


def test_model_against_itself_differs_by_zero(calibrated):
    y, p = calibrated
    r = compare_auroc(y, p, p, n_boot=100)
    assert r["difference"] == 0.0
    assert r["ci_low"] <= 0.0 <= r["ci_high"]
    assert r["model_auroc"] == r["baseline_auroc"] == pytest.approx(roc_auc_score(y, p))


def test_better_model_beats_a_noisier_baseline(calibrated):
    y, p = calibrated
    rng = np.random.default_rng(4)
    noisy = _logit(p) + rng.normal(0.0, 1.5, size=p.size)  # any real-valued score may be compared
    r = compare_auroc(y, p, noisy, np.arange(y.size) // 4, n_boot=150)
    assert r["difference"] == pytest.approx(roc_auc_score(y, p) - roc_auc_score(y, noisy))
    assert r["ci_low"] > 0.0


# --- reliability_curve ------------------------------------------------------------------------------------------------


def test_reliability_curve_of_a_calibrated_model(calibrated):
    y, p = calibrated
    bins = reliability_curve(y, p, bins=10)
    assert len(bins) == 10
    assert sum(b["n"] for b in bins) == y.size
    assert all(b["n"] == pytest.approx(y.size / 10, abs=1) for b in bins)
    means = [b["mean_predicted"] for b in bins]
    assert means == sorted(means)
    for b in bins:
        assert b["low"] <= b["observed"] <= b["high"]
        assert b["observed"] == pytest.approx(b["mean_predicted"], abs=0.04)


def test_reliability_curve_keeps_ties_together_and_uses_wilson_intervals():
    p = np.r_[np.full(20, 0.1), np.full(20, 0.5), np.full(20, 0.9)]
    y = np.r_[np.zeros(20), np.r_[np.ones(10), np.zeros(10)], np.ones(20)]
    bins = reliability_curve(y, p, bins=10)
    assert [b["mean_predicted"] for b in bins] == pytest.approx([0.1, 0.5, 0.9])
    assert [b["n"] for b in bins] == [20.0, 20.0, 20.0]
    # Wilson 95% interval for 0 of 20: [0, z^2 / (n + z^2)] = [0, 0.161125]; for 10 of 20: 0.5 -/+ 0.200702.
    assert bins[0]["low"] == 0.0
    assert bins[0]["high"] == pytest.approx(0.161125, abs=1e-6)
    assert (bins[1]["low"], bins[1]["high"]) == pytest.approx((0.299298, 0.700702), abs=1e-6)
    assert bins[2]["high"] == 1.0


# --- threshold_table --------------------------------------------------------------------------------------------------

T0 = pd.Timestamp("2024-03-01T08:00", tz="UTC")


def _ward() -> pd.DataFrame:
    """Four encounters, nine predictions; the outcome is an event within 24 h.

    A: predictions at +0, +2, +4 h; event at +6 h (all three within 24 h: label 1).
    B: no event.
    C: predictions at +0 h (30 h before its event: label 0) and +10 h (20 h before: label 1); event at +30 h.
    D: no event.
    """
    h = pd.Timedelta(hours=1)
    rows = [
        ("A", T0, 1, 0.20, T0 + 6 * h),
        ("A", T0 + 2 * h, 1, 0.70, T0 + 6 * h),
        ("A", T0 + 4 * h, 1, 0.90, T0 + 6 * h),
        ("B", T0, 0, 0.80, pd.NaT),
        ("B", T0 + 1 * h, 0, 0.10, pd.NaT),
        ("C", T0, 0, 0.95, T0 + 30 * h),
        ("C", T0 + 10 * h, 1, 0.30, T0 + 30 * h),
        ("D", T0, 0, 0.05, pd.NaT),
        ("D", T0 + 5 * h, 0, 0.60, pd.NaT),
    ]
    frame = pd.DataFrame(rows, columns=["encounter", "t", "y", "p", "event_at"])
    frame["event_at"] = pd.to_datetime(frame["event_at"], utc=True)
    return frame


def _table(frame: pd.DataFrame, thresholds: list[float]) -> list[dict[str, float]]:
    return threshold_table(
        frame["y"], frame["p"], times=frame["t"], event_times=frame["event_at"],
        encounter_ids=frame["encounter"], patient_days=2.5, thresholds=thresholds,
    )


def test_threshold_table_hand_worked_example():
    at_050, at_025, at_015, at_099 = _table(_ward(), [0.5, 0.25, 0.15, 0.99])
    # p >= 0.5 flags A+2h, A+4h (true), B+0h, C+0h, D+5h (false): TP 2, FP 3, FN 2, TN 2.
    assert at_050 == pytest.approx({
        "threshold": 0.5, "flagged_share": 5 / 9, "sensitivity": 0.5, "specificity": 0.4, "ppv": 0.4, "npv": 0.5,
        "alerts": 5.0, "alerts_per_100_patient_days": 200.0, "encounters_with_event": 2.0,
        # Only A is warned in time (C's alert at +0 h came 30 h ahead, outside the horizon); first alert 4 h ahead.
        "encounters_with_event_alerted": 0.5, "median_lead_time_hours": 4.0,
    })
    # p >= 0.25 adds C+10h: TP 3, FP 3; A warned 4 h ahead, C 20 h ahead.
    assert at_025["sensitivity"] == 0.75
    assert at_025["ppv"] == 0.5
    assert at_025["npv"] == pytest.approx(2 / 3)
    assert at_025["encounters_with_event_alerted"] == 1.0
    assert at_025["median_lead_time_hours"] == 12.0
    # p >= 0.15 also flags A+0h: A's first alert is now 6 h ahead.
    assert at_015["median_lead_time_hours"] == 13.0
    assert at_015["alerts_per_100_patient_days"] == 280.0
    # Nothing flagged: no PPV, no lead time.
    assert at_099["alerts"] == 0.0
    assert at_099["sensitivity"] == 0.0
    assert math.isnan(at_099["ppv"])
    assert math.isnan(at_099["median_lead_time_hours"])
    assert at_099["encounters_with_event_alerted"] == 0.0


def test_threshold_table_does_not_depend_on_row_order():
    frame = _ward()
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert _table(shuffled, [0.5, 0.25, 0.15]) == _table(frame, [0.5, 0.25, 0.15])


def test_default_thresholds_cover_alert_budgets():
    rng = np.random.default_rng(8)
    n = 1000
    p = rng.random(n) * 0.45  # 0.5 flags nobody: it comes last
    y = (rng.random(n) < p).astype(int)
    times = pd.Series(pd.date_range(T0, periods=n, freq="h"))
    rows = threshold_table(
        y, p, times=times, event_times=pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns, UTC]"),
        encounter_ids=np.arange(n) // 10, patient_days=n / 24,
    )
    shares = [r["flagged_share"] for r in rows if r["threshold"] != 0.5]
    assert shares == pytest.approx([0.01, 0.02, 0.05, 0.10, 0.20, 0.30])
    assert [r["threshold"] for r in rows] == sorted((r["threshold"] for r in rows), reverse=True)
    assert 0.5 in [r["threshold"] for r in rows]
    assert all(math.isnan(r["median_lead_time_hours"]) for r in rows)


def test_threshold_table_needs_patient_days():
    frame = _ward()
    with pytest.raises(ValueError, match="patient_days"):
        threshold_table(
            frame["y"], frame["p"], times=frame["t"], event_times=frame["event_at"],
            encounter_ids=frame["encounter"], patient_days=0,
        )


# --- subgroups and age bands ------------------------------------------------------------------------------------------


def test_age_band_boundaries():
    bands = age_band([17, 18, 44, 45, 64, 65, 79, 80, np.nan, 44.9, 101, -1, None])
    assert bands.tolist() == [
        "<18", "18-44", "18-44", "45-64", "45-64", "65-79", "65-79", "80+", "unknown", "18-44", "80+", "unknown",
        "unknown",
    ]


def test_subgroup_metrics_reports_small_groups_by_size_only(calibrated):
    y, p = calibrated
    y, p = y[:250], p[:250]
    sex = np.array(["female"] * 120 + ["male"] * 110 + ["other"] * 12 + [None] * 8, dtype=object)
    attributes = pd.DataFrame({"sex": sex, "age_band": age_band(np.linspace(20, 90, 250))})
    out = subgroup_metrics(y, p, attributes, min_n=30, n_boot=50)
    assert set(out) == {"sex", "age_band"}
    assert out["sex"]["other"] == {"n": 12.0, "too_small": 1.0}
    assert out["sex"]["unknown"] == {"n": 8.0, "too_small": 1.0}
    female = out["sex"]["female"]
    assert female["n"] == 120.0
    assert female["too_small"] == 0.0
    assert female["prevalence"] == pytest.approx(y[:120].mean())
    assert female["auroc"] == pytest.approx(roc_auc_score(y[:120], p[:120]))
    assert female["auroc_ci_low"] <= female["auroc"] <= female["auroc_ci_high"]
    assert female["observed_expected"] == pytest.approx(y[:120].sum() / p[:120].sum())
    assert female["mean_predicted"] == pytest.approx(p[:120].mean())
    assert sum(level["n"] for level in out["age_band"].values()) == 250


def test_subgroup_metrics_matches_rows_by_position(calibrated):
    y, p = calibrated
    y, p = y[:100], p[:100]
    attributes = pd.DataFrame({"sex": ["female"] * 50 + ["male"] * 50}, index=np.arange(100, 200))
    out = subgroup_metrics(y, p, attributes, min_n=10, groups=np.arange(100) // 2, n_boot=20)
    assert out["sex"]["male"]["mean_predicted"] == pytest.approx(p[50:].mean())


def test_score_auroc_of_an_integer_score_with_ci() -> None:
    rng = np.random.default_rng(11)
    score = rng.integers(0, 10, 2000).astype(float)  # like a NEWS2 total: ties, not a probability
    y = (rng.random(2000) < 0.05 + 0.05 * score).astype(int)
    groups = np.repeat(np.arange(500), 4)
    out = score_auroc(y, score, groups, n_boot=200, seed=1)
    assert out["value"] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert out["ci_low"] < out["value"] < out["ci_high"]
    assert 0.6 < out["value"] < 0.9


def test_compare_auroc_reports_the_baselines_own_ci() -> None:
    rng = np.random.default_rng(5)
    score = rng.integers(0, 8, 1500).astype(float)
    y = (rng.random(1500) < 0.04 + 0.06 * score).astype(int)
    model = score + rng.normal(0, 1, 1500)
    groups = np.repeat(np.arange(300), 5)
    diff = compare_auroc(y, _expit(model - 4), score, groups, n_boot=200, seed=3)
    alone = score_auroc(y, score, groups, n_boot=200, seed=3)  # the same resamples
    assert diff["baseline_ci_low"] == pytest.approx(alone["ci_low"])
    assert diff["baseline_ci_high"] == pytest.approx(alone["ci_high"])
    assert diff["baseline_auroc"] == pytest.approx(alone["value"])


def test_wilson_interval_known_values() -> None:
    low, high = M.wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)  # the textbook 95% Wilson interval
    assert M.wilson_interval(0, 10)[0] == 0.0 and all(math.isnan(v) for v in M.wilson_interval(0, 0))
