"""The compiled single-row scorer against the real fitted pipelines it stands for: same probabilities (NaNs,
unseen, infrequent and absent levels), explanations that add up to the log-odds and point at the feature
that drives the outcome, and a clear refusal of pipeline shapes it cannot reproduce."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

from carecast.models.calibration import PlattCalibrated
from carecast.models.fastpath import (
    FastModel,
    RowError,
    UnsupportedModelError,
    _largest,
    _lowest_zero_bit_plus_one,
    compile_model,
)
from carecast.models.pipeline import candidates, make_preprocessor

DRIVER = "lactate_max"
NUMERIC = [DRIVER, "heart_rate_mean_4h", "spo2_min_4h", "never_missing", "never_observed"] + [
    f"lab_{i}_last" for i in range(15)]
CATEGORICAL = ["admission_type", "sex", "ward"]
# admission_type: "rare_a".."rare_c" are seen fewer than min_frequency=5 times, so one-hot shares one
# "infrequent" column among them; sex is never missing in training, so "missing" is an unseen level for it.
ADMISSION = (["emergency"] * 50 + ["elective"] * 30 + ["urgent"] * 15 + [None] * 5, ["rare_a", "rare_b", "rare_c"])
SEX = ["female", "male"]
WARD = ["medical", "surgical", "icu"]
SLOPE, INTERCEPT = 0.8, -0.3


def training_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, len(NUMERIC))), columns=NUMERIC)
    for name in NUMERIC:
        if name != "never_missing":
            X.loc[rng.random(n) < 0.2, name] = np.nan
    X["never_observed"] = np.nan
    common, rare = ADMISSION
    admission = rng.choice(np.array(common, dtype=object), size=n)
    admission[:3] = rare  # each rare level once
    X["admission_type"] = admission
    X["sex"] = rng.choice(np.array(SEX, dtype=object), size=n)
    X["ward"] = rng.choice(np.array(WARD, dtype=object), size=n)
    margin = -1.0 + 2.0 * np.nan_to_num(X[DRIVER].to_numpy()) + 0.5 * (X["ward"] == "icu").to_numpy()
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-margin))).astype(int)
    return X, y


def scoring_frame(n: int, seed: int) -> pd.DataFrame:
    """Rows harder than the training data: more NaN, unseen levels, absent levels of every spelling."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(scale=1.5, size=(n, len(NUMERIC))), columns=NUMERIC)
    X = X.mask(rng.random(X.shape) < 0.3)
    admission = ["emergency", "elective", "urgent", "rare_a", "rare_c", "never_seen", None, np.nan, "missing"]
    X["admission_type"] = rng.choice(np.array(admission, dtype=object), size=n)
    X["sex"] = rng.choice(np.array([*SEX, None, "other"], dtype=object), size=n)
    X["ward"] = rng.choice(np.array([*WARD, None], dtype=object), size=n)
    X.loc[0, NUMERIC] = np.nan  # one row with no numeric value at all
    return X


def fit(kind: str, X: pd.DataFrame, y: np.ndarray, **params: object) -> PlattCalibrated:
    pipeline = candidates(NUMERIC, CATEGORICAL)[kind]
    pipeline.set_params(**params)
    return PlattCalibrated(pipeline, slope=SLOPE, intercept=INTERCEPT).fit(X, y)


def one_row(fast: FastModel, frame: pd.DataFrame, i: int) -> tuple[np.ndarray, list]:
    row = frame.iloc[i]
    return row[list(fast.numeric_names)].to_numpy(dtype=np.float64), list(row[list(fast.categorical_names)])


@pytest.fixture(scope="module")
def training() -> tuple[pd.DataFrame, np.ndarray]:
    return training_frame(2500, seed=3)


@pytest.fixture(scope="module", params=["logistic", "hist_gradient_boosting"])
def fitted(request, training) -> tuple[PlattCalibrated, FastModel]:
    model = fit(request.param, *training)
    return model, compile_model(model)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return scoring_frame(300, seed=11)


def test_probability_matches_the_pipeline_row_by_row(fitted, rows) -> None:
    model, fast = fitted
    expected = model.predict_proba(rows)[:, 1]
    got = np.array([fast.predict_one(*one_row(fast, rows, i)).probability for i in range(len(rows))])
    assert np.abs(got - expected).max() < 1e-9


def test_frame_and_mapping_inputs_match_the_pipeline(fitted, rows) -> None:
    model, fast = fitted
    expected = model.predict_proba(rows)[:, 1]
    assert np.abs(fast.predict_frame(rows) - expected).max() < 1e-9
    for i in range(20):
        row = rows.iloc[i].to_dict()
        assert fast.predict_features(row).probability == pytest.approx(expected[i], abs=1e-9)


def test_a_mapping_row_explains_as_the_arrays_do(fitted, rows) -> None:
    """predict_features (a logistic model: one affine term per feature, no arrays) gives predict_one's answer:
    probability, log-odds, the same factors in the same order with the same values, the same remainder."""
    _, fast = fitted
    for i in range(len(rows)):
        row = rows.iloc[i].to_dict()
        for top_k in (5, 1, 0, None):
            want = fast.predict_one(*one_row(fast, rows, i), top_k=top_k)
            got = fast.predict_features(row, top_k=top_k)
            assert got.probability == pytest.approx(want.probability, abs=1e-12)
            assert got.log_odds == pytest.approx(want.log_odds, abs=1e-9)
            assert got.remainder == pytest.approx(want.remainder, abs=1e-9)
            named = [(c.feature, c.value) for c in got.contributions]
            assert named == [(c.feature, c.value) for c in want.contributions]
            assert [c.contribution for c in got.contributions] == pytest.approx(
                [c.contribution for c in want.contributions], abs=1e-9)


def test_a_mapping_row_takes_json_values_and_names_the_bad_feature(fitted, rows) -> None:
    _, fast = fitted
    row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rows.iloc[7].to_dict().items()}
    expected = fast.predict_features(row).probability
    # ints and bools are numbers; absent (with fill_missing), None and NaN are all "missing"
    as_ints = {**row, "never_missing": 2, "lab_0_last": True}
    assert fast.predict_features(as_ints).probability == pytest.approx(
        fast.predict_features({**row, "never_missing": 2.0, "lab_0_last": 1.0}).probability, abs=1e-15)
    sparse = {k: v for k, v in row.items() if v is not None}
    assert fast.predict_features(sparse, fill_missing=True).probability == pytest.approx(expected, abs=1e-15)
    for absent in (np.nan, pd.NA, np.float64("nan")):
        assert fast.predict_features({**row, DRIVER: absent}).probability == pytest.approx(
            fast.predict_features({**row, DRIVER: None}).probability, abs=1e-15)
    assert fast.predict_features({**row, DRIVER: np.float32(1.5)}).probability == pytest.approx(
        fast.predict_features({**row, DRIVER: 1.5}).probability, abs=1e-15)
    for bad, reason in ((np.inf, "must be finite"), (-math.inf, "must be finite"), ("7.5", "must be a number or null"),
                        ([1], "must be a number"), (np.array([1.0, 2.0]), "must be a number")):
        with pytest.raises(RowError, match=f"feature {DRIVER} {reason}") as caught:
            fast.predict_features({**row, DRIVER: bad})
        assert "7.5" not in str(caught.value)
    with pytest.raises(RowError, match="missing: sex"):
        fast.predict_features({k: v for k, v in row.items() if k != "sex"})


def test_the_largest_parts_by_size_with_ties_in_feature_order() -> None:
    rng = random.Random(5)
    for _ in range(3000):
        parts = [rng.choice([0.0, -0.0, 1.0, -1.0, 2.5, -2.5]) if rng.random() < 0.5 else rng.gauss(0.0, 1.0)
                 for _ in range(rng.randint(0, 25))]
        for top_k in (None, 0, 1, 2, 3, 5, 40):
            every = sorted((j for j, p in enumerate(parts) if p != 0.0), key=lambda j: (-abs(parts[j]), j))
            assert _largest(parts, top_k) == (every if top_k is None else every[:top_k]), (parts, top_k)


def test_absent_levels_are_one_level_and_infrequent_levels_share_a_column(fitted, rows) -> None:
    _, fast = fitted
    numeric, _ = one_row(fast, rows, 5)

    def p(admission: object) -> float:
        return fast.predict_one(numeric, [admission, "female", "icu"]).probability

    assert p(None) == p(np.nan) == p("missing")  # as the pipeline's `_as_level` spells every absence
    assert p("rare_a") == p("rare_b") == p("rare_c")
    if fast.kind == "logistic":  # trees need not split on a given column; the coefficients always weigh it
        assert p("rare_a") != p("never_seen") != p("emergency")


def test_contributions_add_up_to_the_calibrated_log_odds(fitted, rows) -> None:
    _, fast = fitted
    for i in range(len(rows)):
        numeric, categorical = one_row(fast, rows, i)
        every = fast.predict_one(numeric, categorical, top_k=None)
        assert every.remainder == pytest.approx(0.0, abs=1e-12)
        assert every.base_value + math.fsum(c.contribution for c in every.contributions) == pytest.approx(
            every.log_odds, abs=1e-9)
        top = fast.predict_one(numeric, categorical)
        assert len(top.contributions) <= 5
        assert top.base_value + math.fsum(c.contribution for c in top.contributions) + top.remainder == pytest.approx(
            top.log_odds, abs=1e-9)
        assert top.contributions == every.contributions[: len(top.contributions)]
        sizes = [abs(c.contribution) for c in every.contributions]
        assert sizes == sorted(sizes, reverse=True)
        # Away from the calibration wrapper's clip, log_odds is the logit of the probability.
        assert every.log_odds == pytest.approx(math.log(every.probability / (1 - every.probability)), abs=1e-9)


def original_feature(column: str) -> str:
    """The input feature a transformed column comes from, by scikit-learn's output naming."""
    if column in NUMERIC:
        return column
    if column.startswith("missingindicator_"):
        return column.removeprefix("missingindicator_")
    return next(name for name in CATEGORICAL if column.startswith(name + "_"))


def saabas_reference(estimator, xt: np.ndarray, owner: list[str]) -> tuple[float, dict[str, float]]:
    """Saabas by hand, tree by tree: (sum of root expectations, credits per feature on the raw scale)."""
    base, credits = 0.0, dict.fromkeys(NUMERIC + CATEGORICAL, 0.0)
    for (predictor,) in estimator._predictors:
        nodes = predictor.nodes

        def expectation(i: int, nodes=nodes) -> float:  # training-count-weighted mean of the leaves below
            if nodes["is_leaf"][i]:
                return float(nodes["value"][i])
            left, right = int(nodes["left"][i]), int(nodes["right"][i])
            n_left, n_right = float(nodes["count"][left]), float(nodes["count"][right])
            return (n_left * expectation(left) + n_right * expectation(right)) / (n_left + n_right)

        i = 0
        base += expectation(0)
        while not nodes["is_leaf"][i]:
            value = xt[nodes["feature_idx"][i]]
            left = value <= nodes["num_threshold"][i] if not np.isnan(value) else nodes["missing_go_to_left"][i]
            child = int(nodes["left"][i] if left else nodes["right"][i])
            credits[owner[nodes["feature_idx"][i]]] += expectation(child) - expectation(i)
            i = child
    return base, credits


def test_contributions_match_a_reference_computed_from_sklearn_objects(fitted, rows) -> None:
    model, fast = fitted
    prep, estimator = model.estimator_.named_steps["prep"], model.estimator_.named_steps["model"]
    owner = [original_feature(c) for c in prep.get_feature_names_out()]
    for i in range(0, len(rows), 30):
        xt = prep.transform(rows.iloc[[i]])[0]
        if fast.kind == "logistic":
            base = float(estimator.intercept_[0])
            credits = dict.fromkeys(NUMERIC + CATEGORICAL, 0.0)
            for column, part in zip(owner, estimator.coef_[0] * xt, strict=True):
                credits[column] += part
        else:
            base, credits = saabas_reference(estimator, xt, owner)
            base += float(estimator._baseline_prediction.ravel()[0])
        assert fast.base_value == pytest.approx(SLOPE * base + INTERCEPT, abs=1e-9)
        got = {c.feature: c.contribution for c in fast.predict_one(*one_row(fast, rows, i), top_k=None).contributions}
        for name, credit in credits.items():
            assert got.get(name, 0.0) == pytest.approx(SLOPE * credit, abs=1e-9), name


def test_the_driving_feature_explains_high_and_low_risk(fitted, rows) -> None:
    _, fast = fitted
    numeric, categorical = one_row(fast, rows, 1)
    numeric = np.nan_to_num(numeric)
    categorical = ["emergency", "female", "medical"]
    numeric[0] = 2.5
    high = fast.predict_one(numeric, categorical)
    numeric[0] = -2.5
    low = fast.predict_one(numeric, categorical)
    assert high.contributions[0].feature == DRIVER and high.contributions[0].contribution > 0
    assert low.contributions[0].feature == DRIVER and low.contributions[0].contribution < 0
    assert high.probability > low.probability
    assert high.contributions[0].value == 2.5 and low.contributions[0].value == -2.5


def test_contributions_name_original_features_and_carry_raw_values(fitted, rows) -> None:
    _, fast = fitted
    assert fast.feature_names == tuple(NUMERIC + CATEGORICAL)
    numeric, categorical = one_row(fast, rows, 2)
    numeric[0] = np.nan  # the driver missing: its indicator and its imputed value count as one feature
    categorical = ["never_seen", None, "icu"]
    explained = fast.predict_one(numeric, categorical, top_k=None)
    by_name = {c.feature: c for c in explained.contributions}
    assert set(by_name) <= set(NUMERIC + CATEGORICAL)
    for c in explained.contributions:
        if c.feature in NUMERIC:
            raw = numeric[NUMERIC.index(c.feature)]
            assert c.value == (None if np.isnan(raw) else raw)
        else:
            assert c.value == categorical[CATEGORICAL.index(c.feature)]
    if fast.kind == "logistic":  # every transformed column has a coefficient
        assert by_name[DRIVER].value is None
        assert by_name["ward"].value == "icu"
        # An unseen level ("missing" was never seen for sex) is all zeros after one-hot: it adds nothing.
        assert "sex" not in by_name and "admission_type" not in by_name


def test_a_model_with_trees_too_wide_for_bit_masks_is_walked(training, rows) -> None:
    model = fit("hist_gradient_boosting", *training, model__max_iter=8, model__max_leaf_nodes=None,
                model__min_samples_leaf=5)
    fast = compile_model(model)
    assert not fast._scorer.use_bitvectors  # some tree has more than 64 leaves: the level walk is exercised
    expected = model.predict_proba(rows)[:, 1]
    got = np.array([fast.predict_one(*one_row(fast, rows, i)).probability for i in range(len(rows))])
    assert np.abs(got - expected).max() < 1e-9
    assert np.abs(fast.predict_frame(rows) - expected).max() < 1e-9
    numeric, categorical = one_row(fast, rows, 3)
    every = fast.predict_one(numeric, categorical, top_k=None)
    assert every.base_value + math.fsum(c.contribution for c in every.contributions) == pytest.approx(
        every.log_odds, abs=1e-9)


def test_trees_that_never_split_are_scored(training, rows) -> None:
    model = fit("hist_gradient_boosting", *training, model__max_iter=12)
    trees = model.estimator_.named_steps["model"]._predictors
    for i in (0, 5):  # cut two trees back to a single leaf; sklearn then predicts with the cut trees too
        nodes = trees[i][0].nodes
        stump = nodes[np.flatnonzero(nodes["is_leaf"])[:1]].copy()
        stump["depth"], stump["left"], stump["right"] = 0, 0, 0
        trees[i][0].nodes = stump
    fast = compile_model(model)
    expected = model.predict_proba(rows)[:, 1]
    got = np.array([fast.predict_one(*one_row(fast, rows, i)).probability for i in range(len(rows))])
    assert np.abs(got - expected).max() < 1e-9
    assert np.abs(fast.predict_frame(rows) - expected).max() < 1e-9


def test_a_model_whose_trees_never_split_is_scored(training, rows) -> None:
    model = fit("hist_gradient_boosting", *training, model__max_iter=5, model__min_samples_leaf=2000)
    fast = compile_model(model)
    expected = model.predict_proba(rows)[:, 1]
    prediction = fast.predict_one(*one_row(fast, rows, 0))
    assert prediction.probability == pytest.approx(expected[0], abs=1e-12)
    assert prediction.contributions == [] and prediction.log_odds == pytest.approx(fast.base_value, abs=1e-12)
    assert np.abs(fast.predict_frame(rows) - expected).max() < 1e-12


def test_bad_rows_are_refused(fitted) -> None:
    _, fast = fitted
    numeric = np.zeros(len(NUMERIC))
    with pytest.raises(ValueError, match="numeric values"):
        fast.predict_one(numeric[:-1], ["emergency", "female", "icu"])
    with pytest.raises(ValueError, match="categorical values"):
        fast.predict_one(numeric, ["emergency", "female"])
    numeric[2] = np.inf
    with pytest.raises(ValueError, match="finite"):
        fast.predict_one(numeric, ["emergency", "female", "icu"])
    with pytest.raises(ValueError, match="missing: ward"):
        fast.predict_features({**dict.fromkeys(NUMERIC, 0.0), "admission_type": None, "sex": "male"})


def test_unknown_pipeline_shapes_are_refused(training) -> None:
    X, y = training
    small = {"model__max_iter": 5}
    with pytest.raises(UnsupportedModelError, match="expected a PlattCalibrated"):
        compile_model(candidates(NUMERIC, CATEGORICAL)["logistic"].fit(X, y))  # type: ignore[arg-type]
    with pytest.raises(UnsupportedModelError, match="not fitted"):
        compile_model(PlattCalibrated(candidates(NUMERIC, CATEGORICAL)["logistic"]))

    forest = Pipeline([("prep", make_preprocessor(NUMERIC, CATEGORICAL)),
                       ("model", RandomForestClassifier(n_estimators=3, random_state=0))])
    with pytest.raises(UnsupportedModelError, match="model step is RandomForestClassifier"):
        compile_model(PlattCalibrated(forest).fit(X, y))

    bare = Pipeline([("prep", make_preprocessor(NUMERIC, CATEGORICAL).steps[1][1]),
                     ("model", candidates(NUMERIC, CATEGORICAL)["logistic"].steps[1][1])])
    with pytest.raises(UnsupportedModelError, match=r"Pipeline\(\[FeatureSchema, ColumnTransformer\]\)"):
        compile_model(PlattCalibrated(bare).fit(X, y))

    dropping = fit("logistic", X, y, prep__columns__cat__onehot__drop="first")
    with pytest.raises(UnsupportedModelError, match="drop"):
        compile_model(dropping)

    width = make_preprocessor(NUMERIC, CATEGORICAL).fit_transform(X).shape[1]
    native = fit("hist_gradient_boosting", X, y, model__categorical_features=[width - 1], **small)
    with pytest.raises(UnsupportedModelError, match="categorical_features"):
        compile_model(native)

    extra_step = copy.deepcopy(fit("logistic", X, y))
    extra_step.estimator_.steps.insert(1, ("identity", "passthrough"))
    with pytest.raises(UnsupportedModelError, match=r"Pipeline\(\[prep, model\]\)"):
        compile_model(extra_step)


@pytest.mark.parametrize("popcount", [True, False])
def test_exit_leaf_bit_arithmetic_with_and_without_popcount(popcount: bool) -> None:
    if popcount and not hasattr(np, "bitwise_count"):
        pytest.skip("numpy < 2 has no bitwise_count")
    ruled_out = np.array([0, 1, 0b1011, 0b0110, 2**63 - 1, 2**64 - 2, 0x7FFF], dtype=np.uint64)
    first_clear = np.array([0, 1, 2, 0, 63, 0, 15])
    assert (_lowest_zero_bit_plus_one(ruled_out, popcount=popcount) - 1 == first_clear).all()


def test_a_saturated_row_matches_the_clipping_wrapper(fitted, rows) -> None:
    model, fast = fitted
    extreme = rows.iloc[[4]].copy()
    extreme[DRIVER] = 1e4  # far past the wrapper's clip of the uncalibrated probability at 1 - 1e-7
    numeric, categorical = one_row(fast, extreme, 0)
    prediction = fast.predict_one(numeric, categorical, top_k=None)
    expected = model.predict_proba(extreme)[0, 1]
    assert prediction.probability == pytest.approx(expected, abs=1e-12)
    assert fast.predict_frame(extreme)[0] == pytest.approx(expected, abs=1e-12)
    assert prediction.base_value + math.fsum(c.contribution for c in prediction.contributions) == pytest.approx(
        prediction.log_odds, abs=1e-9)
    if fast.kind == "logistic":  # the linear margin grows without bound; the probability stops at the clip
        assert prediction.log_odds > math.log(prediction.probability / (1 - prediction.probability)) + 1
