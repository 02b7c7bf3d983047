"""Drift: PSI and missing share against a model card's reference; the scoring moments of each task; quiet on
an independent same-distribution hospital, firing on a shifted one; the `carecast monitor drift` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from carecast.cli import main
from carecast.models.registry import Registry
from carecast.models.tasks import TASKS
from carecast.models.training import reference_distributions
from carecast.monitoring.drift import (
    ALERT_EXIT_CODE,
    MonitoringError,
    check_drift,
    compare_with_reference,
    default_thresholds,
    feature_drift,
    population_stability_index,
    scoring_moments,
    with_thresholds,
)
from tests.unit.monitoring import TASK, Hospital, hospital, trained_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return trained_registry(tmp_path_factory)


@pytest.fixture(scope="module")
def unshifted(tmp_path_factory: pytest.TempPathFactory) -> Hospital:
    return hospital(tmp_path_factory, 21)


@pytest.fixture(scope="module")
def older(tmp_path_factory: pytest.TempPathFactory) -> Hospital:
    return hospital(tmp_path_factory, 22, "older")


# -- PSI and one feature -------------------------------------------------------------------------------------

def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift() -> None:
    assert population_stability_index([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == pytest.approx(0.0)
    small = population_stability_index([0.5, 0.5], [0.55, 0.45])
    large = population_stability_index([0.5, 0.5], [0.8, 0.2])
    assert 0 < small < large
    # (0.8-0.5) ln(0.8/0.5) + (0.2-0.5) ln(0.2/0.5)
    assert large == pytest.approx(0.3 * np.log(1.6) + 0.3 * np.log(2.5))
    # An empty bin counts as the floor: finite, and large
    assert 1.0 < population_stability_index([0.5, 0.5], [1.0, 0.0], floor=1e-4) < 10


def _heart_rates(rng: np.random.Generator, n: int) -> np.ndarray:
    values = rng.normal(80, 12, n)
    values[rng.random(n) < 0.1] = np.nan
    return values


def _reference(rng: np.random.Generator) -> dict:
    X = pd.DataFrame({"heart_rate": rng.normal(80, 12, 5000), "sex": rng.choice(["female", "male"], 5000)})
    X.loc[rng.random(5000) < 0.1, "heart_rate"] = np.nan
    return reference_distributions(X, ["heart_rate"], ["sex"])


def test_same_distribution_is_ok_and_a_shifted_mean_alerts() -> None:
    rng = np.random.default_rng(0)
    ref = _reference(rng)
    th = default_thresholds()
    values = rng.normal(80, 12, 3000)
    values[:300] = np.nan  # the reference's 10% missing
    same = feature_drift("heart_rate", ref["heart_rate"], pd.Series(values), th)
    assert same.level == "ok" and same.psi is not None and same.psi < th.psi_warn
    assert abs(same.missing_change) < 0.03
    moved = feature_drift("heart_rate", ref["heart_rate"], pd.Series(values + 15), th)
    assert moved.level == "alert" and moved.psi is not None and moved.psi >= th.psi_alert
    assert any("PSI" in r for r in moved.reasons)


def test_missing_share_change_is_flagged_without_echoing_values() -> None:
    rng = np.random.default_rng(1)
    ref = _reference(rng)
    values = rng.normal(80, 12, 2000)
    values[:900] = np.nan  # 45% missing against the reference's 10%
    drift = feature_drift("heart_rate", ref["heart_rate"], pd.Series(values), default_thresholds())
    assert drift.level == "alert"
    assert drift.missing_change == pytest.approx(0.45 - drift.reference_missing)
    assert drift.reasons and all("missing share" in r or "PSI" in r for r in drift.reasons)


def test_categorical_new_level_and_report_verdicts() -> None:
    rng = np.random.default_rng(2)
    ref = _reference(rng)
    X = pd.DataFrame({"heart_rate": _heart_rates(rng, 400), "sex": ["unknown"] * 400})
    report = compare_with_reference(ref, X, task=TASK, n_patients=400)
    assert report.status == "alert" and report.alerted
    assert [f.feature for f in report.flagged] == ["sex"]
    assert report.to_dict()["flagged"][0]["feature"] == "sex"
    # The same data with too few patients is not judged
    assert compare_with_reference(ref, X, task=TASK, n_patients=10).status == "insufficient_data"
    # A feature the recent matrix lacks counts as wholly missing
    lacking = compare_with_reference(ref, X[["sex"]].assign(sex=rng.choice(["female", "male"], 400)),
                                     task=TASK, n_patients=400)
    assert [f.feature for f in lacking.flagged] == ["heart_rate"]
    assert lacking.flagged[0].recent_missing == 1.0
    # Thresholds are data, and can be changed for one run
    assert compare_with_reference(ref, X, n_patients=400,
                                  thresholds=with_thresholds(psi_alert=1e9, psi_warn=1e9)).status == "ok"


# -- scoring moments --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", sorted(TASKS))
def test_scoring_moments_are_the_cohort_plus_the_censored_latest(task: str, unshifted: Hospital) -> None:
    frames = unshifted.frames
    cohort = TASKS[task].cohort(frames)
    moments = scoring_moments(frames, task)
    key = ["encounter_id", "t"]
    merged = cohort[key].merge(moments[key], how="left", indicator=True)
    assert (merged["_merge"] == "both").all(), "every cohort moment is a scoring moment"
    extra = moments.merge(cohort[key], how="left", indicator=True)
    extra = extra[extra["_merge"] == "left_only"]
    end = max(frames.observations["effective_at"].max(), frames.encounters["admitted_at"].max(),
              frames.encounters["discharged_at"].max(), frames.outcomes["occurred_at"].max())
    enc = frames.encounters.set_index("encounter_id").reindex(extra["encounter_id"])
    if task in ("deterioration_24h", "readmission_30d"):
        horizon = TASKS[task].horizon
        assert horizon is not None
        assert (extra["t"] + horizon > end).all(), "moments left out of the cohort are censored ones"
    else:
        assert enc["discharged_at"].isna().all(), "moments left out of the cohort are open stays"
    assert len(extra) > 0 or task == "readmission_30d"


def test_unknown_task_and_card_without_reference(registry: Registry, unshifted: Hospital) -> None:
    store = unshifted.store()
    try:
        with pytest.raises(MonitoringError, match="unknown task"):
            check_drift(store, registry, "no_such_task")
        with pytest.raises(MonitoringError, match="positive"):
            check_drift(store, registry, TASK, since_hours=0)
    finally:
        store.close()
    with pytest.raises(MonitoringError, match="unknown task"):
        scoring_moments(unshifted.frames, "no_such_task")


# -- the measurement at small scale ------------------------------------------------------------------------------

def test_quiet_on_an_unshifted_hospital_and_fires_on_an_older_one(registry: Registry, unshifted: Hospital,
                                                                   older: Hospital) -> None:
    stores = unshifted.store(), older.store()
    try:
        quiet = check_drift(stores[0], registry, TASK, since_hours=24 * 30)
        fired = check_drift(stores[1], registry, TASK, since_hours=24 * 30)
    finally:
        for s in stores:
            s.close()
    assert quiet.n_patients >= 250 and quiet.n_rows >= 2000
    assert quiet.status in ("ok", "warn"), [f.to_dict() for f in quiet.flagged]
    assert not quiet.alerted
    assert fired.alerted
    levels = {f.feature: f.level for f in fired.flagged}
    assert levels.get("age") == "alert"  # the shift moves the mean age by 12 years
    assert fired.model_version == registry.aliases(TASK)["champion"]


def test_a_short_window_holds_only_recent_moments(registry: Registry, unshifted: Hospital) -> None:
    store = unshifted.store()
    try:
        whole = check_drift(store, registry, TASK, since_hours=24 * 30)
        day = check_drift(store, registry, TASK, since_hours=24)
    finally:
        store.close()
    assert day.window_end == whole.window_end
    assert day.window_start is not None and day.window_end is not None
    assert day.window_end - day.window_start == pd.Timedelta(hours=24)
    assert 0 < day.n_rows < whole.n_rows


# -- the command line --------------------------------------------------------------------------------------------

def _env(h: Hospital, registry: Registry, tmp_path: Path) -> dict[str, str]:
    return {"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_DATABASE_URL": h.url,
            "CARECAST_KEY_FILE": str(h.key_file), "CARECAST_MODEL_REGISTRY": registry.root}


def test_cli_exit_code_tells_an_alert_apart(registry: Registry, unshifted: Hospital, older: Hospital,
                                            tmp_path: Path) -> None:
    runner = CliRunner()
    fired = runner.invoke(main, ["monitor", "drift", "--task", TASK, "--since", "720", "--json"],
                          env=_env(older, registry, tmp_path))
    assert fired.exit_code == ALERT_EXIT_CODE, fired.output
    body = json.loads(fired.output)
    assert body["status"] == "alert" and "features" not in body
    assert any(f["feature"] == "age" and f["level"] == "alert" for f in body["flagged"])
    quiet = runner.invoke(main, ["monitor", "drift", "--task", TASK, "--since", "720"],
                          env=_env(unshifted, registry, tmp_path))
    assert quiet.exit_code == 0, quiet.output
    assert f"{TASK} (model " in quiet.output and "ALERT" not in quiet.output
    listed = runner.invoke(main, ["monitor", "drift", "--task", TASK, "--since", "720", "--all-features", "--json"],
                           env=_env(unshifted, registry, tmp_path))
    assert len(json.loads(listed.output)["features"]) == json.loads(listed.output)["n_features"] > 100


def test_docstring_examples() -> None:
    import doctest

    import carecast.monitoring.drift as drift

    result = doctest.testmod(drift)
    assert result.attempted > 0 and result.failed == 0
