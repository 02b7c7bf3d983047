"""The predictor against the real trained pipeline: same probabilities, bands from the card's threshold,
a promoted champion picked up without restart while a request in flight finishes on the old one."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from carecast.errors import NotFoundError
from carecast.models.registry import Registry
from carecast.scoring.predictor import DEFAULT_THRESHOLD, FeatureError, Predictor, band_of
from tests.unit.scoring import TASK, TrainedModels, registry_copy


@pytest.fixture(scope="module")
def predictor(models: TrainedModels) -> Predictor:
    return Predictor(Registry(models.root))


def test_loads_the_champion(predictor: Predictor, models: TrainedModels) -> None:
    assert predictor.ready
    assert predictor.versions() == {TASK: models.champion}
    assert predictor.versions("challenger") == {}
    card = predictor.model(TASK).card
    assert predictor.model(TASK).threshold == pytest.approx(card["threshold"]["threshold"])
    names = predictor.feature_names(TASK)
    assert predictor.feature_set(TASK) == frozenset(names) and len(names) == len(set(names)) > 0


def test_predict_matches_the_pipeline(predictor: Predictor, models: TrainedModels) -> None:
    estimator = predictor.model(TASK).estimator
    expected = estimator.predict_proba(models.X)[:, 1]
    for i in range(len(models.X)):
        scored = predictor.predict(TASK, models.X.iloc[i])  # a Series
        assert abs(scored.risk - expected[i]) < 1e-6
        assert scored.model_version == models.champion
        assert scored.band == band_of(scored.risk, scored.threshold)
    as_frame = predictor.predict(TASK, models.X.iloc[[3]])
    as_mapping = predictor.predict(TASK, models.X.iloc[3].to_dict())
    assert as_frame.risk == as_mapping.risk == pytest.approx(expected[3], abs=1e-6)


def test_factors_are_explained_in_words(predictor: Predictor, models: TrainedModels) -> None:
    scored = predictor.predict(TASK, models.X.iloc[0])
    assert 0 < len(scored.factors) <= 5
    sizes = [abs(f["contribution"]) for f in scored.factors]
    assert sizes == sorted(sizes, reverse=True)
    for factor in scored.factors:
        assert set(factor) == {"feature", "contribution", "value", "text"}
        assert factor["feature"] in models.X.columns
        assert factor["text"] and "_" not in factor["text"]


def test_bands_follow_the_threshold() -> None:
    assert band_of(0.30, 0.2) == "high"
    assert band_of(0.20, 0.2) == "high"
    assert band_of(0.10, 0.2) == "medium"
    assert band_of(0.099, 0.2) == "low"
    assert 0 < DEFAULT_THRESHOLD < 1


def test_rows_it_cannot_score_are_refused_without_echoing_values(predictor: Predictor,
                                                                 models: TrainedModels) -> None:
    row = models.X.iloc[0].to_dict()
    missing = {k: v for k, v in row.items() if k != "heart_rate_last_4h"}
    with pytest.raises(FeatureError, match="heart_rate_last_4h"):
        predictor.predict(TASK, missing)
    filled = predictor.predict(TASK, missing, fill_missing=True)
    assert 0 <= filled.risk <= 1
    with pytest.raises(FeatureError) as err:
        predictor.predict(TASK, {**row, "heart_rate_last_4h": "SECRET-7731"})
    assert "SECRET" not in str(err.value) and "heart_rate_last_4h" in str(err.value)
    with pytest.raises(FeatureError, match="age"):
        predictor.predict(TASK, {**row, "age": math.inf})
    with pytest.raises(FeatureError, match="heart_rate_last_4h"):  # a number in a string is not a number
        predictor.predict(TASK, {**row, "heart_rate_last_4h": "88"})
    as_none = predictor.predict(TASK, {**row, "heart_rate_last_4h": None})
    as_nan = predictor.predict(TASK, {**row, "heart_rate_last_4h": math.nan})
    assert as_none.risk == as_nan.risk  # None is missing, like NaN
    assert predictor.predict(TASK, {**row, "age": 70}).risk == predictor.predict(TASK, {**row, "age": 70.0}).risk


def test_a_task_without_champion(models: TrainedModels) -> None:
    predictor = Predictor(Registry(models.root), tasks=(TASK, "readmission_30d"))
    assert predictor.versions() == {TASK: models.champion}
    with pytest.raises(NotFoundError, match="no champion model for readmission_30d"):
        predictor.predict("readmission_30d", models.X.iloc[0])
    empty = Predictor(Registry(models.root), tasks=("readmission_30d",))
    assert not empty.ready


def test_hot_swap_keeps_requests_in_flight_on_the_old_model(models: TrainedModels, tmp_path: Path) -> None:
    registry = registry_copy(models, tmp_path / "models")
    predictor = Predictor(registry)
    old = predictor.model(TASK)
    row = models.X.iloc[0]
    expected_old = old.estimator.predict_proba(models.X.iloc[[0]])[0, 1]
    assert not predictor.refresh()  # nothing changed

    entered, release = threading.Event(), threading.Event()
    original = old.fast.predict_one

    def slow_predict_one(*args: object, **kwargs: object) -> object:
        entered.set()
        assert release.wait(10)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    old.fast.predict_one = slow_predict_one  # type: ignore[method-assign]
    results: list[object] = []
    in_flight = threading.Thread(target=lambda: results.append(predictor.predict(TASK, row)))
    in_flight.start()
    assert entered.wait(10)

    registry.promote(TASK, models.other, reason="better model")
    assert predictor.maybe_refresh(min_interval_s=0.0)
    assert predictor.versions() == {TASK: models.other}
    new = predictor.predict(TASK, row)  # new requests use the new model at once
    assert new.model_version == models.other

    release.set()
    in_flight.join(10)
    (finished,) = results
    assert finished.model_version == models.champion  # type: ignore[attr-defined]
    assert abs(finished.risk - expected_old) < 1e-6  # type: ignore[attr-defined]
    assert not predictor.maybe_refresh(min_interval_s=3600)  # time-gated


def test_a_champion_that_fails_to_load_does_not_replace_the_working_one(models: TrainedModels,
                                                                        tmp_path: Path) -> None:
    registry = registry_copy(models, tmp_path / "models")
    predictor = Predictor(registry)
    (tmp_path / "models" / TASK / models.other / "model.joblib").write_bytes(b"tampered")
    registry.promote(TASK, models.other)
    predictor.refresh()
    assert predictor.versions() == {TASK: models.champion}
    assert predictor.predict(TASK, models.X.iloc[0]).model_version == models.champion


def test_challenger_scores_in_shadow(models: TrainedModels, tmp_path: Path) -> None:
    registry = registry_copy(models, tmp_path / "models")
    registry.promote(TASK, models.other, alias="challenger")
    predictor = Predictor(registry, challengers=True)
    assert predictor.versions("challenger") == {TASK: models.other}
    shadow = predictor.predict(TASK, models.X.iloc[0], alias="challenger")
    assert shadow.shadow and shadow.model_version == models.other
    expected = predictor.model(TASK, "challenger").estimator.predict_proba(models.X.iloc[[0]])[0, 1]
    assert np.isclose(shadow.risk, expected, atol=1e-6)
