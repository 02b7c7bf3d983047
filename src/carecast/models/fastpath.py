"""A compiled, exact single-row scorer for a fitted PlattCalibrated pipeline, with per-feature explanations.

`compile_model` reads a fitted model once into plain numpy arrays; `FastModel.predict_one` then scores one
row in tens of microseconds, without pandas or scikit-learn's per-call validation, and says which original
features moved the risk. The probability is the wrapped pipeline's own, to floating-point rounding.

Only the pipeline shape built by `carecast.models.pipeline.candidates` is accepted:

    PlattCalibrated(Pipeline([("prep", Pipeline([FeatureSchema, ColumnTransformer([
        numeric:     Pipeline([FunctionTransformer(_as_float), SimpleImputer(add_indicator=...), StandardScaler()]),
        categorical: Pipeline([FunctionTransformer(_as_level), OneHotEncoder(handle_unknown="ignore", ...)]),
    ])])), ("model", LogisticRegression | HistGradientBoostingClassifier)]))

Anything else is refused by `UnsupportedModelError`, naming what was found: a fast path that silently
disagreed with the model it stands for would be worse than none.

Explanations are additive on the calibrated log-odds scale:

    log_odds = base_value + sum(contribution of every original feature)

where `log_odds = slope * margin + intercept` (Platt slope and intercept, `margin` the model's raw log-odds)
and each feature's contribution is `slope` times its share of `margin`. A numeric feature's share includes
its missing-value indicator; a categorical feature's share is the sum over its one-hot columns (including
the grouped "infrequent" column).

- Logistic regression: the share of a feature is `sum(coef * x)` over its transformed columns, and
  `base_value = slope * lr_intercept + platt_intercept`. This is exact.
- Gradient boosting: Saabas path attribution (the method of `treeinterpreter`). Each internal node is given
  an expected value, the training-count-weighted mean of its leaves; walking a row down a tree, the change
  in expected value at each split is credited to the split's feature, so a tree's leaf value telescopes to
  its root value plus the credits. `base_value = slope * (baseline + sum of root values) + platt_intercept`.
  Saabas, not SHAP: it is exact (the parts add up to the prediction), costs O(depth) per tree, and needs
  nothing but the path the prediction already takes (precomputed per leaf here), so it fits a per-request
  budget of microseconds. TreeSHAP gives consistent attributions that do not depend on the order of the
  splits, at O(leaves * depth^2) per tree; Saabas does depend on it (for y = a AND b split on a, then b,
  the deeper b gets the larger share). Read the parts as "what moved this patient's risk along the
  model's own decision path", not as a game-theoretic fair share.

The trees compare raw model inputs with `num_threshold` as sklearn does (left when value <= threshold).
Their rule for NaN (`missing_go_to_left`) never comes into play: the imputer fills every NaN first, and
compilation checks its statistics are finite.

The one place `log_odds` is not exactly `logit(probability)`: PlattCalibrated clips the uncalibrated
probability to [1e-7, 1 - 1e-7] before its logit. For a row whose model margin is beyond about ±16.1 the
probability saturates there (as the wrapper's does) while `log_odds` keeps the unclipped value the
contributions add up to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sklearn._loss.loss import HalfBinomialLoss
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from carecast.models.calibration import _EPS, PlattCalibrated, logit
from carecast.models.pipeline import FeatureSchema, _as_float, _as_level

__all__ = ["Contribution", "FastModel", "Prediction", "RowError", "UnsupportedModelError", "compile_model"]

MISSING_LEVEL = "missing"  # what `_as_level` turns an absent categorical value into
_BATCH_ROWS = 256  # rows per chunk in predict_frame: bounds the (rows x tree nodes) work arrays


class UnsupportedModelError(ValueError):
    """The model is not the pipeline shape the fast path knows how to reproduce exactly."""


class RowError(ValueError):
    """A row the model cannot read: a feature absent, or a value that is not a number. The message names
    the feature, never its value."""


class Contribution(NamedTuple):
    """One original feature's part of the calibrated log-odds, and the value it had in the row.

    (A NamedTuple rather than a frozen dataclass: five of them per request, at a third of the cost.)"""

    feature: str
    contribution: float
    value: float | str | None  # the raw input: a float, a categorical level, or None when missing


@dataclass(frozen=True, slots=True)
class Prediction:
    """A calibrated risk with its additive explanation, all on the calibrated log-odds scale.

    `base_value + sum(c.contribution for c in contributions) + remainder == log_odds` (to rounding):
    `contributions` holds the largest parts by absolute size, `remainder` the sum of the parts left out,
    `base_value` the model's constant (FastModel.base_value; see the module docstring for what it is).
    """

    probability: float
    log_odds: float
    contributions: list[Contribution]
    base_value: float
    remainder: float


def _sigmoid(z: float) -> float:
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _sigmoid_array(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))  # never overflows
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _optional_level(value: object) -> str | None:
    """One categorical cell as a level string, or None when absent (None, NaN, pd.NA)."""
    if isinstance(value, str):
        return value
    if value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value))):
        return None
    return str(value)


def _level(value: object) -> str:
    """One categorical cell as `_as_level` turns it into a level: "missing" when absent."""
    level = _optional_level(value)
    return MISSING_LEVEL if level is None else level


class _Preprocessor:
    """The fitted ColumnTransformer as arrays: raw row (numeric floats + categorical levels) -> model input."""

    def __init__(self, ct: ColumnTransformer) -> None:
        numeric_part = categorical_part = None
        for name, transformer, columns in ct.transformers_:
            if isinstance(transformer, str) and transformer == "drop":
                continue
            if len(_column_names(name, columns)) == 0:
                continue
            if _is_numeric_steps(transformer):
                if numeric_part is not None:
                    raise UnsupportedModelError("more than one numeric block in the ColumnTransformer")
                numeric_part = (name, transformer, _column_names(name, columns))
            elif _is_categorical_steps(transformer):
                if categorical_part is not None:
                    raise UnsupportedModelError("more than one categorical block in the ColumnTransformer")
                categorical_part = (name, transformer, _column_names(name, columns))
            else:
                raise UnsupportedModelError(
                    f"ColumnTransformer block {name!r} is {_describe(transformer)}; expected "
                    "Pipeline([FunctionTransformer(_as_float), SimpleImputer, StandardScaler]) or "
                    "Pipeline([FunctionTransformer(_as_level), OneHotEncoder])")
        if numeric_part is None and categorical_part is None:
            raise UnsupportedModelError("the ColumnTransformer has no numeric or categorical block")

        width = int(sum(s.stop - s.start for s in ct.output_indices_.values()))
        self.width = width
        self.numeric_names: tuple[str, ...] = ()
        self.categorical_names: tuple[str, ...] = ()
        orig_of_col = np.full(width, -1, dtype=np.intp)

        # Numeric block: imputed columns, then one indicator per feature that had missing values in training.
        self.num_cols = self.ind_cols = slice(0, 0)
        self.fill = self.num_mean = self.num_scale = np.zeros(0)
        self.ind_features = np.zeros(0, dtype=np.intp)
        self.ind_if_missing = self.ind_if_present = np.zeros(0)
        if numeric_part is not None:
            name, steps, names = numeric_part
            imputer, scaler = steps.steps[1][1], steps.steps[2][1]
            self.numeric_names = tuple(names)
            n = len(names)
            stats = np.asarray(imputer.statistics_, dtype=np.float64)
            if stats.shape != (n,):
                raise UnsupportedModelError(f"SimpleImputer of block {name!r} has {stats.size} statistics for {n}")
            if not imputer.keep_empty_features and np.isnan(stats).any():
                raise UnsupportedModelError(
                    "SimpleImputer drops features empty in training (keep_empty_features=False)")
            ind_features = (np.asarray(imputer.indicator_.features_, dtype=np.intp)
                            if imputer.add_indicator and imputer.indicator_ is not None else np.zeros(0, np.intp))
            m = ind_features.size
            block = ct.output_indices_[name]
            if block.stop - block.start != n + m:
                raise UnsupportedModelError(
                    f"numeric block {name!r} is {block.stop - block.start} wide, expected {n + m}")
            mean = (np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else np.zeros(n + m))
            scale = (np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else np.ones(n + m))
            if mean.shape != (n + m,) or scale.shape != (n + m,):
                raise UnsupportedModelError(f"StandardScaler of block {name!r} does not match its {n + m} columns")
            self.num_cols = slice(block.start, block.start + n)
            self.fill, self.num_mean, self.num_scale = stats, mean[:n].copy(), scale[:n].copy()
            self.ind_features = ind_features
            self.ind_cols = slice(block.start + n, block.start + n + m)
            # An indicator is 1.0 or 0.0 before scaling, so its scaled value is one of two constants,
            # computed with the very operations StandardScaler applies (subtract, then divide).
            self.ind_if_missing = (np.ones(m) - mean[n:]) / scale[n:]
            self.ind_if_present = (np.zeros(m) - mean[n:]) / scale[n:]
            orig_of_col[self.num_cols] = np.arange(n)
            orig_of_col[self.ind_cols] = ind_features

        # Categorical block: each known level -> its one-hot column (infrequent levels share one column).
        self.level_cols: list[dict[str, int]] = []
        self.unknown_cols: list[int] = []
        if categorical_part is not None:
            name, steps, names = categorical_part
            self.categorical_names = tuple(names)
            block = ct.output_indices_[name]
            self.level_cols, self.unknown_cols = _one_hot_layout(steps.steps[1][1], len(names), block)
            n_num = len(self.numeric_names)
            for i, cols in enumerate(self.level_cols):
                orig_of_col[list(cols.values())] = n_num + i
        # With finite statistics a row of finite-or-NaN numbers never yields NaN in the model input: every
        # NaN is imputed. The trees below rely on it (their rule for NaN never comes into play).
        constants = np.concatenate([self.fill, self.num_mean, self.num_scale, self.ind_if_missing, self.ind_if_present])
        if not (np.isfinite(constants).all() and (self.num_scale != 0).all()):
            raise UnsupportedModelError("imputation or scaling statistics are not finite")
        if (orig_of_col < 0).any():
            raise UnsupportedModelError("the ColumnTransformer emits columns that belong to no known block")
        self.orig_of_col = orig_of_col
        self.feature_names: tuple[str, ...] = self.numeric_names + self.categorical_names

    def transform_one(self, numeric: np.ndarray, levels: Sequence[str]) -> np.ndarray:
        """The model input for one row; `numeric` is float64 with NaN for missing."""
        xt = np.zeros(self.width)
        missing = np.isnan(numeric)
        xt[self.num_cols] = (np.where(missing, self.fill, numeric) - self.num_mean) / self.num_scale
        if self.ind_features.size:
            xt[self.ind_cols] = np.where(missing[self.ind_features], self.ind_if_missing, self.ind_if_present)
        for cols, unknown, level in zip(self.level_cols, self.unknown_cols, levels, strict=True):
            col = cols.get(level, unknown)
            if col >= 0:
                xt[col] = 1.0
        return xt

    def transform_many(self, numeric: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """The model input for many rows; `levels` is an object array of strings, one column per feature."""
        xt = np.zeros((numeric.shape[0], self.width))
        missing = np.isnan(numeric)
        xt[:, self.num_cols] = (np.where(missing, self.fill, numeric) - self.num_mean) / self.num_scale
        if self.ind_features.size:
            xt[:, self.ind_cols] = np.where(missing[:, self.ind_features], self.ind_if_missing, self.ind_if_present)
        rows = np.arange(numeric.shape[0])
        for i, (cols, unknown) in enumerate(zip(self.level_cols, self.unknown_cols, strict=True)):
            col = np.fromiter((cols.get(v, unknown) for v in levels[:, i]), dtype=np.intp, count=levels.shape[0])
            hit = col >= 0
            xt[rows[hit], col[hit]] = 1.0
        return xt


def _column_names(block: str, columns: Any) -> list[str]:
    names = list(columns) if not isinstance(columns, str) else [columns]
    if not all(isinstance(c, str) for c in names):
        raise UnsupportedModelError(f"ColumnTransformer block {block!r} selects columns by position, not by name")
    return names


def _describe(obj: Any) -> str:
    if isinstance(obj, Pipeline):
        return "Pipeline([" + ", ".join(type(step).__name__ for _, step in obj.steps) + "])"
    return type(obj).__name__


def _is_numeric_steps(obj: Any) -> bool:
    if not isinstance(obj, Pipeline) or len(obj.steps) != 3:
        return False
    first, imputer, scaler = (step for _, step in obj.steps)
    return (isinstance(first, FunctionTransformer) and first.func is _as_float
            and isinstance(imputer, SimpleImputer) and isinstance(scaler, StandardScaler)
            and isinstance(imputer.missing_values, float) and math.isnan(imputer.missing_values))


def _is_categorical_steps(obj: Any) -> bool:
    if not isinstance(obj, Pipeline) or len(obj.steps) != 2:
        return False
    first, encoder = (step for _, step in obj.steps)
    return isinstance(first, FunctionTransformer) and first.func is _as_level and isinstance(encoder, OneHotEncoder)


def _one_hot_layout(enc: OneHotEncoder, n_features: int, block: slice) -> tuple[list[dict[str, int]], list[int]]:
    """Each feature's {level: output column}, and the column an unknown level lands in (-1: none).

    The encoder itself is asked, by transforming every known level, rather than re-deriving its rules
    (frequent levels in sorted order, infrequent levels grouped into one trailing column, unknown levels
    all zeros under handle_unknown="ignore"), so the layout is the encoder's by construction.
    """
    if enc.drop is not None:
        raise UnsupportedModelError("OneHotEncoder(drop=...) is not supported; expected drop=None")
    if enc.handle_unknown not in ("ignore", "infrequent_if_exist"):
        raise UnsupportedModelError(f"OneHotEncoder(handle_unknown={enc.handle_unknown!r}) is not supported")
    categories = [list(c) for c in enc.categories_]
    if len(categories) != n_features or not all(isinstance(v, str) for c in categories for v in c):
        raise UnsupportedModelError("OneHotEncoder categories are not string levels of the categorical features")
    unknown = "\x00carecast-unknown-level\x00"
    n_rows = max(len(c) for c in categories) + 1
    probe = np.empty((n_rows, n_features), dtype=object)
    for i, cats in enumerate(categories):
        padded = [*cats, *[cats[-1]] * (n_rows - 1 - len(cats)), unknown]
        probe[:, i] = padded
    width = block.stop - block.start
    names = getattr(enc, "feature_names_in_", None)  # fitted on a frame: probe with the same column names
    out = enc.transform(pd.DataFrame(probe, columns=names) if names is not None else probe)
    out = np.asarray(out.toarray() if hasattr(out, "toarray") else out, dtype=np.float64)
    if out.shape[1] != width or not np.isin(out, (0.0, 1.0)).all():
        raise UnsupportedModelError("OneHotEncoder output does not match the ColumnTransformer's categorical block")
    # Blocks are contiguous and in feature order, so the k-th hot column of a known-level row is feature k's.
    bounds = np.zeros(n_features + 1, dtype=np.intp)
    level_cols: list[dict[str, int]] = [{} for _ in range(n_features)]
    for r in range(n_rows - 1):
        hot = np.flatnonzero(out[r])
        if hot.size != n_features:
            raise UnsupportedModelError("OneHotEncoder does not give every known level exactly one column")
        for i, cats in enumerate(categories):
            if r < len(cats):
                level_cols[i][cats[r]] = block.start + int(hot[i])
    for i in range(n_features):
        cols = set(level_cols[i].values())
        bounds[i + 1] = max(cols) - block.start + 1
        if min(cols) - block.start != bounds[i]:
            raise UnsupportedModelError("OneHotEncoder columns are not contiguous per feature")
    unknown_cols: list[int] = []
    for i in range(n_features):
        hot = np.flatnonzero(out[n_rows - 1, bounds[i]:bounds[i + 1]])
        unknown_cols.append(block.start + int(bounds[i] + hot[0]) if hot.size else -1)
    return level_cols, unknown_cols


class _LinearScorer:
    """Logistic regression: margin = coef . x + intercept, exactly decomposable by column."""

    kind = "logistic"

    def __init__(self, lr: LogisticRegression, prep: _Preprocessor) -> None:
        coef = np.asarray(lr.coef_, dtype=np.float64)
        if coef.shape != (1, prep.width):
            raise UnsupportedModelError(
                f"LogisticRegression has coef_ of shape {coef.shape}; expected (1, {prep.width})")
        self.coef = coef[0].copy()
        self.intercept = float(np.asarray(lr.intercept_, dtype=np.float64)[0])
        self.orig_of_col = prep.orig_of_col
        self.n_orig = len(prep.feature_names)
        self.base_margin = self.intercept

    def margin_and_parts(self, xt: np.ndarray) -> tuple[float, np.ndarray]:
        by_col = self.coef * xt
        parts = np.bincount(self.orig_of_col, weights=by_col, minlength=self.n_orig)
        return float(xt @ self.coef) + self.intercept, parts

    def margins(self, xt: np.ndarray) -> np.ndarray:
        return xt @ self.coef + self.intercept


class _LinearTerms:
    """A logistic model folded down to one affine term per original feature, for scoring a row given as a
    mapping without building the model input.

    A numeric feature's share of the margin is `coef * (x - mean) / scale` plus its indicator's constant,
    which is `a * x + b` when present and a constant `m` when missing (imputed, the indicator on); a
    categorical feature's share is the coefficient of its level's one-hot column (0.0 for an unseen level
    with no column). The shares are the same quantities `_LinearScorer.margin_and_parts` returns, computed
    in another order of floating-point operations (so equal to rounding, not bit for bit).

    Why: one row through numpy costs about twenty calls on arrays of a few hundred elements, each with a
    fixed dispatch cost that, inside a web request (cold caches, other work between calls), came to about
    three times its cost in a tight loop; a plain loop over the features is one pass (benchmarks/serving.py,
    docs/report.md)."""

    def __init__(self, prep: _Preprocessor, scorer: _LinearScorer) -> None:
        coef = scorer.coef
        a = coef[prep.num_cols] / prep.num_scale
        b = -coef[prep.num_cols] * prep.num_mean / prep.num_scale
        m = coef[prep.num_cols] * (prep.fill - prep.num_mean) / prep.num_scale
        if prep.ind_features.size:
            ind_coef = coef[prep.ind_cols]
            b[prep.ind_features] += ind_coef * prep.ind_if_present
            m[prep.ind_features] += ind_coef * prep.ind_if_missing
        self.numeric_names = prep.numeric_names
        self.a, self.b, self.m = a.tolist(), b.tolist(), m.tolist()
        self.categorical: list[tuple[str, dict[str, float], float]] = [
            (name, {level: float(coef[col]) for level, col in cols.items()},
             float(coef[unknown]) if unknown >= 0 else 0.0)
            for name, cols, unknown in zip(prep.categorical_names, prep.level_cols, prep.unknown_cols, strict=True)]
        self.intercept = scorer.intercept

    def parts(self, row: Mapping[str, object]) -> tuple[list[float], float]:
        """Each original feature's share of the margin (numeric features, then categorical; absent, None and
        NaN are missing) and their sum. RowError names a numeric feature whose value is infinite or not a
        number.

        One comprehension takes a row whose values are all floats, ints or None (a JSON body's, a frame's
        float64 cells); any other type (a string, a bool, numpy's smaller floats, whose arithmetic would
        round) goes through `_checked`, which names a bad feature, as does a row whose sum is not finite:
        an infinity, or a NaN (missing, in a frame's cells), which JSON cannot hold, so that a JSON row pays
        no per-value test for it."""
        get = row.get
        values = list(map(get, self.numeric_names))
        plain = set(map(type, values)) <= _PLAIN_CELLS
        if plain:
            parts = [m if v is None else a * v + b for v, a, b, m in zip(values, self.a, self.b, self.m, strict=True)]
        else:
            parts = self._checked(values)
        for name, levels, unknown in self.categorical:
            parts.append(levels.get(_level(get(name)), unknown))
        total = _sum(parts)
        if plain and total - total != 0.0:  # a NaN or an infinity among plain values: value by value
            parts = self._checked(values) + parts[len(values):]
            total = _sum(parts)
        return parts, total

    def _checked(self, values: list[object]) -> list[float]:
        parts: list[float] = []
        for name, v, a, b, m in zip(self.numeric_names, values, self.a, self.b, self.m, strict=True):
            x = _row_number(name, v)
            parts.append(m if x != x else a * x + b)
        return parts


_PLAIN_CELLS = frozenset({float, int, type(None), np.float64})


def _sum(parts: list[float]) -> float:
    """The correctly rounded sum (math.fsum); inf or NaN where fsum refuses (infinities of both signs, overflow)."""
    try:
        return math.fsum(parts)
    except (ValueError, OverflowError):
        return sum(parts)


def _row_number(name: str, value: object) -> float:
    """One numeric cell of a row given as a mapping: NaN when absent; RowError naming the feature (never the
    value) for infinity or anything that is not a number."""
    if value is None or value is pd.NA:
        return math.nan
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        number = float(value)
        if math.isinf(number):
            raise RowError(f"feature {name} must be finite")
        return number
    raise RowError(f"feature {name} must be a number or null")


def _largest(parts: list[float], top_k: int | None) -> list[int]:
    """Indices of the `top_k` parts largest by absolute size (None: all), largest first, ties in feature
    order, leaving out parts that are exactly zero. The cut (the k-th largest size) is read off the k lowest
    and k highest parts, so no list of sizes is built for the few hundred parts of a row."""
    n = len(parts)
    if top_k is not None and top_k < n:
        if top_k <= 0:
            return []
        ordered = sorted(parts)
        ends = ordered if 2 * top_k >= n else ordered[:top_k] + ordered[-top_k:]
        cut = sorted(map(abs, ends))[-top_k]
        if cut > 0.0:  # at most k parts are above the cut; ties at it are all kept, then cut by feature order
            picked = [j for j, p in enumerate(parts) if p >= cut or p <= -cut]
        else:
            picked = [j for j, p in enumerate(parts) if p != 0.0]
    else:
        picked = [j for j, p in enumerate(parts) if p != 0.0]
    picked.sort(key=lambda j: -abs(parts[j]))  # stable: ties stay in feature order
    return picked if top_k is None else picked[:top_k]


class _TreeScorer:
    """Gradient-boosted trees compiled for one-row scoring without a per-level walk.

    Leaves are found QuickScorer-style (Lucchese et al., SIGIR 2015): the split decisions of every
    internal node of every tree do not depend on the path, so they are computed in one vector operation;
    each internal node that sends the row right rules out the leaves of its left subtree (a bit mask per
    node, leaves numbered left to right); OR-ing what a tree's nodes rule out leaves the exit leaf as the
    lowest leaf not ruled out. Trees with more than 64 leaves do not fit a 64-bit mask; a model with such a
    tree is walked instead, all trees at once, one gather per level.

    What the row's leaves mean is precomputed per leaf: its value (for the margin) and the Saabas credits
    along its root-to-leaf path (feature, change in expected value), padded to the deepest path.
    """

    kind = "hist_gradient_boosting"

    def __init__(self, hgb: HistGradientBoostingClassifier, prep: _Preprocessor) -> None:
        if not isinstance(getattr(hgb, "_loss", None), HalfBinomialLoss) or hgb.n_trees_per_iteration_ != 1:
            raise UnsupportedModelError("HistGradientBoostingClassifier must be a binary classifier (log loss)")
        if getattr(hgb, "is_categorical_", None) is not None or getattr(hgb, "_preprocessor", None) is not None:
            raise UnsupportedModelError(
                "HistGradientBoostingClassifier with categorical_features is not supported: the pipeline one-hot "
                "encodes categorical features before the model, so the trees see numeric columns only")
        if hgb.n_features_in_ != prep.width:
            raise UnsupportedModelError(
                f"the trees expect {hgb.n_features_in_} inputs; the preprocessing gives {prep.width}")
        trees = [predictors[0].nodes for predictors in hgb._predictors]
        if not trees:
            raise UnsupportedModelError("the gradient-boosting model has no trees")
        if any(nodes["is_categorical"].any() for nodes in trees):
            raise UnsupportedModelError("the trees contain categorical splits, which the fast path does not support")

        sizes = np.array([len(nodes) for nodes in trees], dtype=np.intp)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        nodes = np.concatenate(trees)
        is_leaf = nodes["is_leaf"].astype(bool)
        shift = np.repeat(offsets, sizes)
        left = nodes["left"].astype(np.intp) + shift
        right = nodes["right"].astype(np.intp) + shift
        value = np.asarray(nodes["value"], dtype=np.float64)
        expected = _expected_values(nodes, offsets, sizes)
        self.baseline = float(np.asarray(hgb._baseline_prediction, dtype=np.float64).ravel()[0])
        self.base_margin = self.baseline + float(expected[offsets].sum())
        self.n_orig = len(prep.feature_names)

        # Leaves: global ids in tree order, left to right within a tree (sklearn stores nodes in pre-order).
        leaf_nodes = np.flatnonzero(is_leaf)
        leaf_of_node = np.full(nodes.size, -1, dtype=np.intp)
        leaf_of_node[leaf_nodes] = np.arange(leaf_nodes.size)
        tree_of_node = np.repeat(np.arange(len(trees)), sizes)
        n_leaves = np.bincount(tree_of_node[leaf_nodes], minlength=len(trees))
        self.first_leaf = np.concatenate([[0], np.cumsum(n_leaves)[:-1]]).astype(np.intp)

        # The margin adds leaf values in tree order starting from the baseline, as `_raw_predict` does;
        # folding the baseline into the first tree's leaves lets one cumulative sum keep that exact order.
        margin_value = value[leaf_nodes].copy()
        margin_value[: n_leaves[0]] += self.baseline
        self.margin_value = margin_value

        # Saabas credits per leaf: at each split on the way down, the change of expected value.
        parent = np.full(nodes.size, -1, dtype=np.intp)
        internal = np.flatnonzero(~is_leaf)
        parent[left[internal]] = internal
        parent[right[internal]] = internal
        depth = nodes["depth"].astype(np.intp)
        width = max(int(depth.max()), 1)
        # Padding goes to spare bins past the real features, one per path position, so the weighted
        # bincount never adds long runs into a single bin (which serialises it).
        credit_feature = np.tile(self.n_orig + np.arange(width, dtype=np.intp), (leaf_nodes.size, 1))
        credit = np.zeros((leaf_nodes.size, width))
        node_feature = nodes["feature_idx"].astype(np.intp)
        for leaf_id, node in enumerate(leaf_nodes.tolist()):
            child = node
            while parent[child] >= 0:
                up = parent[child]
                credit_feature[leaf_id, depth[up]] = prep.orig_of_col[node_feature[up]]
                credit[leaf_id, depth[up]] = expected[child] - expected[up]
                child = up
        self.credit_feature, self.credit = credit_feature, credit
        self.n_bins = self.n_orig + width

        # Split tables over internal nodes, grouped by tree.
        self.feature = node_feature[internal]
        self.threshold = nodes["num_threshold"].astype(np.float64)[internal]
        self.split_trees = np.flatnonzero(np.bincount(tree_of_node[internal], minlength=len(trees)) > 0)
        self.single_leaf_trees = bool(self.split_trees.size < len(trees))
        self.leaves_if_unsplit = self.first_leaf.copy()  # a one-leaf tree always exits at its only leaf
        self.use_bitvectors = bool(n_leaves.max() <= 64)
        if self.use_bitvectors:
            # Leaf ordinals within its tree; a node's leaves form a contiguous range [lo, hi] of them.
            ordinal = np.zeros(nodes.size, dtype=np.intp)
            ordinal[leaf_nodes] = np.arange(leaf_nodes.size) - self.first_leaf[tree_of_node[leaf_nodes]]
            lo, hi = ordinal.copy(), ordinal.copy()
            for i in internal[::-1].tolist():  # children follow their parent
                lo[i], hi[i] = lo[left[i]], hi[right[i]]
            span = hi[left[internal]] - lo[left[internal]] + 1
            # A left subtree holds fewer than all of at most 64 leaves, so span < 64 and the shift is defined.
            one = np.uint64(1)
            self.left_leaves = ((one << span.astype(np.uint64)) - one) << lo[left[internal]].astype(np.uint64)
            self.segment_starts = np.searchsorted(tree_of_node[internal], self.split_trees).astype(np.intp)
            self.split_leaf_base = self.first_leaf[self.split_trees] - 1  # see _lowest_zero_bit_plus_one
        else:
            self.left = np.where(is_leaf, np.arange(nodes.size), left)
            self.right = np.where(is_leaf, np.arange(nodes.size), right)
            self.internal = internal
            self.leaf_of_node = leaf_of_node
            self.roots = offsets
            self.depth = int(depth.max())

    def _goes_right(self, v: np.ndarray) -> np.ndarray:
        """sklearn's `_predict_from_raw_data` sends a value left when `value <= num_threshold` and a NaN
        the way of `missing_go_to_left`. The imputer (whose statistics _Preprocessor checked are finite)
        leaves no NaN for the trees, so only the comparison applies, and for a number "not <=" is ">"."""
        return v > self.threshold

    def leaves(self, xt: np.ndarray) -> np.ndarray:
        """The global leaf id each tree sends each row to, in tree order: shape xt.shape[:-1] + (n_trees,)."""
        go_right = self._goes_right(np.take(xt, self.feature, axis=-1))
        if self.use_bitvectors:
            ruled_out = np.bitwise_or.reduceat(self.left_leaves * go_right, self.segment_starts, axis=-1)
            found = self.split_leaf_base + _lowest_zero_bit_plus_one(ruled_out)
            if not self.single_leaf_trees:
                return found
            out = np.broadcast_to(self.leaves_if_unsplit, found.shape[:-1] + self.leaves_if_unsplit.shape).copy()
            out[..., self.split_trees] = found
            return out
        nxt = np.broadcast_to(self.left, go_right.shape[:-1] + self.left.shape).copy()
        nxt[..., self.internal] = np.where(go_right, self.right[self.internal], self.left[self.internal])
        node = np.broadcast_to(self.roots, go_right.shape[:-1] + self.roots.shape).copy()
        for _ in range(self.depth):
            node = np.take_along_axis(nxt, node, axis=-1)
        return self.leaf_of_node[node]

    def margin_and_parts(self, xt: np.ndarray) -> tuple[float, np.ndarray]:
        leaves = self.leaves(xt)
        margin = float(np.cumsum(self.margin_value[leaves])[-1])
        parts = np.bincount(np.take(self.credit_feature, leaves, axis=0).ravel(),
                            weights=np.take(self.credit, leaves, axis=0).ravel(), minlength=self.n_bins)
        return margin, parts[: self.n_orig]

    def margins(self, xt: np.ndarray) -> np.ndarray:
        return np.cumsum(self.margin_value[self.leaves(xt)], axis=-1)[..., -1]


def _lowest_zero_bit_plus_one(bits: np.ndarray, popcount: bool = hasattr(np, "bitwise_count")) -> np.ndarray:
    """One more than the index of the lowest clear bit of each uint64 that is not all ones (callers fold
    in the -1). `bits ^ (bits + 1)` is that bit and the set bits under it, so its popcount (numpy >= 2) is
    the answer; without popcount, `(bits + 1) & ~bits` isolates the bit, an exact power of two in float64."""
    one = np.uint64(1)
    if popcount:
        return np.bitwise_count(bits ^ (bits + one))
    return np.frexp(((bits + one) & ~bits).astype(np.float64))[1]


def _expected_values(nodes: np.ndarray, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each node's training-count-weighted mean of its leaf values (a leaf: its own value).

    sklearn stores 0 for a root and unshrunk Newton steps for other internal nodes, neither of which is
    on the scale of the (shrunk) leaves; Saabas needs each node's expected output instead.
    """
    expected = np.asarray(nodes["value"], dtype=np.float64).copy()
    count = nodes["count"].astype(np.float64)
    is_leaf = nodes["is_leaf"].astype(bool)
    left = nodes["left"].astype(np.intp)
    right = nodes["right"].astype(np.intp)
    for start, size in zip(offsets.tolist(), sizes.tolist(), strict=True):
        for i in range(start + size - 1, start - 1, -1):  # children follow their parent (pre-order)
            if not is_leaf[i]:
                lo, hi = start + left[i], start + right[i]
                total = count[lo] + count[hi]
                expected[i] = ((count[lo] * expected[lo] + count[hi] * expected[hi]) / total
                               if total > 0 else 0.5 * (expected[lo] + expected[hi]))
    return expected


class FastModel:
    """A compiled model: `predict_one` for a row as arrays, `predict_features` for a row as a mapping."""

    def __init__(self, prep: _Preprocessor, scorer: _LinearScorer | _TreeScorer, slope: float,
                 intercept: float) -> None:
        self._prep = prep
        self._scorer = scorer
        self.slope = float(slope)
        self.intercept = float(intercept)
        self.numeric_names: tuple[str, ...] = prep.numeric_names
        self.categorical_names: tuple[str, ...] = prep.categorical_names
        self.feature_names: tuple[str, ...] = prep.feature_names
        self.feature_set = frozenset(self.feature_names)  # for checking a row's names in one set operation
        self.kind: str = scorer.kind
        # The calibrated log-odds of a row whose every feature contributes nothing.
        self.base_value: float = self.slope * scorer.base_margin + self.intercept
        self._n_num = len(self.numeric_names)
        self._terms = _LinearTerms(prep, scorer) if isinstance(scorer, _LinearScorer) else None

    def _probability(self, margin: float) -> float:
        """PlattCalibrated's arithmetic on the model's margin: `calibration.logit` (clip to [eps, 1 - eps],
        then log-odds) in scalar form, which costs a microsecond instead of five; the affine map; sigmoid."""
        q = min(max(_sigmoid(margin), _EPS), 1.0 - _EPS)
        return _sigmoid(self.slope * math.log(q / (1.0 - q)) + self.intercept)

    def predict_one(self, numeric: np.ndarray, categorical: Sequence[str | None], top_k: int | None = 5) -> Prediction:
        """Score one row: `numeric` in `numeric_names` order (float64, NaN = missing), `categorical` in
        `categorical_names` order (None = missing).

        The probability is the wrapped model's `predict_proba(row)[0, 1]` to rounding. `contributions` are
        the `top_k` largest by absolute size (`top_k=None`: all), leaving out features that contributed
        exactly nothing (a tree feature off this row's paths, an unseen level); see `Prediction`."""
        x = np.asarray(numeric, dtype=np.float64)
        if x.shape != (self._n_num,):
            raise ValueError(f"expected {self._n_num} numeric values, got shape {x.shape}")
        if np.isinf(x).any():
            raise ValueError("numeric values must be finite or NaN")  # as SimpleImputer's validation refuses
        if len(categorical) != len(self.categorical_names):
            raise ValueError(f"expected {len(self.categorical_names)} categorical values, got {len(categorical)}")
        levels = [_level(v) for v in categorical]
        xt = self._prep.transform_one(x, levels)
        margin, parts = self._scorer.margin_and_parts(xt)
        parts *= self.slope
        log_odds = self.slope * margin + self.intercept
        contributions, shown = self._top(parts, x, categorical, top_k)
        remainder = (log_odds - self.base_value) - shown  # the parts not shown, without summing them all
        return Prediction(self._probability(margin), log_odds, contributions, self.base_value, remainder)

    def _top(self, parts: np.ndarray, x: np.ndarray, categorical: Sequence[str | None],
             top_k: int | None) -> tuple[list[Contribution], float]:
        size = np.abs(parts)
        if top_k is None or top_k >= size.size:
            candidates = np.flatnonzero(size)
        else:  # the k largest, unordered (an exact tie at the cut is settled arbitrarily)
            candidates = np.argpartition(size, -top_k)[-top_k:] if top_k > 0 else np.zeros(0, dtype=np.intp)
        # Largest first, ties in feature order; a feature the model did not use for this row is left out.
        picked = sorted(zip(size[candidates].tolist(), candidates.tolist(), parts[candidates].tolist(), strict=True),
                        key=lambda t: (-t[0], t[1]))
        out: list[Contribution] = []
        shown = 0.0
        for magnitude, j, c in picked:
            if magnitude == 0.0:
                continue
            shown += c
            if j < self._n_num:
                raw = float(x[j])
                value: float | str | None = None if math.isnan(raw) else raw
            else:
                value = _optional_level(categorical[j - self._n_num])
            out.append(Contribution(self.feature_names[j], c, value))
        return out, shown

    def predict_features(self, row: Mapping[str, object], top_k: int | None = 5, *,
                         fill_missing: bool = False) -> Prediction:
        """Score one row given as {feature name: value}: None, NaN or (with `fill_missing`) an absent
        feature is missing. RowError (naming the feature, never the value) when a feature is absent
        without `fill_missing`, or a numeric value is infinite or not a number.

        Same answer as `predict_one` on the row's arrays; a logistic model is scored by `_LinearTerms`."""
        if not fill_missing:
            absent = [name for name in self.feature_names if name not in row]
            if absent:
                raise RowError(f"feature columns missing: {', '.join(absent[:10])}")
        if self._terms is None:
            numeric = np.array([_row_number(name, row.get(name)) for name in self.numeric_names], dtype=np.float64)
            categorical = [_optional_level(row.get(name)) for name in self.categorical_names]
            return self.predict_one(numeric, categorical, top_k=top_k)
        parts, total = self._terms.parts(row)
        margin = self._terms.intercept + total
        slope = self.slope
        contributions: list[Contribution] = []
        shown = 0.0
        for j in _largest(parts, top_k):
            c = slope * parts[j]
            shown += c
            name = self.feature_names[j]
            if j < self._n_num:
                raw = _row_number(name, row.get(name))
                value: float | str | None = None if raw != raw else raw
            else:
                value = _optional_level(row.get(name))
            contributions.append(Contribution(name, c, value))
        log_odds = slope * margin + self.intercept
        return Prediction(self._probability(margin), log_odds, contributions, self.base_value,
                          (log_odds - self.base_value) - shown)

    def predict_frame(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities for every row of a frame with (at least) the feature columns."""
        absent = [name for name in self.feature_names if name not in X.columns]
        if absent:
            raise ValueError(f"feature columns missing: {', '.join(absent[:10])}")
        numeric = X[list(self.numeric_names)].astype(np.float64).to_numpy(dtype=np.float64)
        if np.isinf(numeric).any():
            raise ValueError("numeric values must be finite or NaN")
        if self.categorical_names:
            levels = _as_level(X[list(self.categorical_names)]).to_numpy(dtype=object)
        else:
            levels = np.empty((len(X), 0), dtype=object)
        margins = np.empty(len(X))
        for start in range(0, len(X), _BATCH_ROWS):
            stop = start + _BATCH_ROWS
            xt = self._prep.transform_many(numeric[start:stop], levels[start:stop])
            margins[start:stop] = self._scorer.margins(xt)
        return _sigmoid_array(self.slope * logit(_sigmoid_array(margins)) + self.intercept)


def compile_model(model: PlattCalibrated) -> FastModel:
    """Read a fitted PlattCalibrated pipeline into a FastModel, or refuse it with UnsupportedModelError."""
    if not isinstance(model, PlattCalibrated):
        raise UnsupportedModelError(f"expected a PlattCalibrated model, got {type(model).__name__}")
    pipeline = getattr(model, "estimator_", None)
    if pipeline is None:
        raise UnsupportedModelError("the PlattCalibrated model is not fitted")
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise UnsupportedModelError(
            f"expected Pipeline([prep, model]) inside PlattCalibrated, got {_describe(pipeline)}")
    prep, estimator = pipeline.steps[0][1], pipeline.steps[1][1]
    if (not isinstance(prep, Pipeline) or len(prep.steps) != 2 or not isinstance(prep.steps[0][1], FeatureSchema)
            or not isinstance(prep.steps[1][1], ColumnTransformer)):
        raise UnsupportedModelError(
            f"expected the prep step to be Pipeline([FeatureSchema, ColumnTransformer]), got {_describe(prep)}")
    arrays = _Preprocessor(prep.steps[1][1])
    schema = prep.steps[0][1]
    if sorted(schema.columns_) != sorted(arrays.feature_names):
        raise UnsupportedModelError("the FeatureSchema columns differ from the columns the ColumnTransformer uses")
    scorer: _LinearScorer | _TreeScorer
    if isinstance(estimator, LogisticRegression):
        if len(estimator.classes_) != 2:
            raise UnsupportedModelError("LogisticRegression must be binary")
        scorer = _LinearScorer(estimator, arrays)
    elif isinstance(estimator, HistGradientBoostingClassifier):
        scorer = _TreeScorer(estimator, arrays)
    else:
        raise UnsupportedModelError(
            f"model step is {_describe(estimator)}; expected LogisticRegression or HistGradientBoostingClassifier")
    return FastModel(arrays, scorer, model.slope, model.intercept)
