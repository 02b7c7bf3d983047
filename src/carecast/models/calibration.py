"""Platt calibration fitted on out-of-fold predictions, wrapped around one fitted pipeline.

Calibrating on the cross-validation predictions that chose the model costs no extra fits and
leaves a single pipeline to serve (CalibratedClassifierCV's cross-fitted ensemble would serve k).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

_EPS = 1e-7


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(q / (1 - q))


def fit_platt(p_uncalibrated: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of a logistic regression of y on logit(p)."""
    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(logit(p_uncalibrated).reshape(-1, 1), y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


class PlattCalibrated(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose probabilities pass through sigmoid(a * logit(p) + b)."""

    def __init__(self, estimator: Any = None, slope: float = 1.0, intercept: float = 0.0) -> None:
        self.estimator = estimator
        self.slope = slope
        self.intercept = intercept

    def fit(self, X: Any, y: Any) -> PlattCalibrated:
        """Fits the wrapped estimator only; the calibration parameters are given (from OOF predictions)."""
        self.estimator_ = self.estimator.fit(X, y)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        raw = self.estimator_.predict_proba(X)[:, 1]
        p = 1.0 / (1.0 + np.exp(-(self.slope * logit(raw) + self.intercept)))
        return np.column_stack([1 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)
