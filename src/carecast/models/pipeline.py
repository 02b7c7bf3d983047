"""Preprocessing and candidate estimators, as scikit-learn Pipelines.

Numeric features: median imputation with missing-value indicators, then standard scaling.
Categorical features: a constant "missing" level, then one-hot encoding that ignores levels unseen
in training. The same fitted Pipeline serves training, validation and serving.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted


class FeatureSchema(TransformerMixin, BaseEstimator):
    """Checks that a frame carries exactly the training columns, in order, and hands it on.

    Follows the estimator contract: parameters in __init__, learned state ends in `_`, `fit`
    returns self, `transform` checks it is fitted first. A frame with missing or extra columns
    is refused by name (a feature schema mismatch between training and serving must be loud).
    """

    def __init__(self, columns: list[str] | None = None) -> None:
        self.columns = columns

    def fit(self, X: pd.DataFrame, y: Any = None) -> FeatureSchema:
        self.columns_ = list(self.columns) if self.columns is not None else list(X.columns)
        self.n_features_in_ = len(self.columns_)
        self.feature_names_in_ = np.asarray(self.columns_, dtype=object)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "columns_")
        if not isinstance(X, pd.DataFrame):
            raise TypeError("FeatureSchema expects a pandas DataFrame with named columns")
        missing = [c for c in self.columns_ if c not in X.columns]
        if missing:
            raise ValueError(f"feature columns missing: {', '.join(missing[:10])}")
        return X[self.columns_]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "columns_")
        return np.asarray(self.columns_, dtype=object)


def _as_float(X: Any) -> Any:
    return X.astype(np.float64) if hasattr(X, "astype") else X


def _as_level(X: Any) -> Any:
    """Categorical cells as strings, with "missing" for an absent value (None or NaN)."""
    frame = pd.DataFrame(X)
    return frame.astype(object).where(frame.notna(), "missing").astype(str)


def make_preprocessor(numeric: list[str], categorical: list[str]) -> Pipeline:
    numeric_steps = Pipeline([
        ("to_float", FunctionTransformer(_as_float, feature_names_out="one-to-one")),
        ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
        ("scale", StandardScaler()),
    ])
    categorical_steps = Pipeline([
        ("levels", FunctionTransformer(_as_level, feature_names_out="one-to-one")),
        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False, min_frequency=5)),
    ])
    columns = ColumnTransformer([("num", numeric_steps, numeric), ("cat", categorical_steps, categorical)],
                                verbose_feature_names_out=False)
    return Pipeline([("schema", FeatureSchema(numeric + categorical)), ("columns", columns)])


def candidates(numeric: list[str], categorical: list[str], seed: int = 0) -> dict[str, Pipeline]:
    """The candidate models compared by cross-validation."""
    return {
        "logistic": Pipeline([
            ("prep", make_preprocessor(numeric, categorical)),
            ("model", LogisticRegression(C=0.1, solver="newton-cholesky", max_iter=200)),
        ]),
        "hist_gradient_boosting": Pipeline([
            ("prep", make_preprocessor(numeric, categorical)),
            ("model", HistGradientBoostingClassifier(
                max_iter=150, learning_rate=0.08, max_leaf_nodes=15, min_samples_leaf=40, l2_regularization=1.0,
                early_stopping=False, random_state=seed)),
        ]),
    }
