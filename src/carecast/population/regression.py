"""Ordinary least squares of the death rate on the case rate across states (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression


@dataclass(frozen=True, slots=True)
class OlsFit:
    """y = intercept + slope * x, fitted on n points; r_squared is the coefficient of determination."""

    slope: float
    intercept: float
    r_squared: float
    n: int

    def predict(self, x: float) -> float:
        return self.intercept + self.slope * x


def ols(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> OlsFit:
    """Fit y on x. Needs at least two points and x that is not constant.

    >>> f = ols([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    >>> round(f.slope, 6), round(f.intercept, 6), round(f.r_squared, 6), f.n
    (2.0, 0.0, 1.0, 3)
    """
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError("x and y must be one-dimensional and of the same length")
    if len(xs) < 2:
        raise ValueError("a regression needs at least two points")
    if np.ptp(xs) == 0:
        raise ValueError("a regression needs x values that are not all equal")
    model = LinearRegression().fit(xs.reshape(-1, 1), ys)
    return OlsFit(slope=float(model.coef_[0]), intercept=float(model.intercept_),
                  r_squared=float(model.score(xs.reshape(-1, 1), ys)), n=len(xs))


def fit_death_on_case(rates: pd.DataFrame) -> OlsFit | None:
    """Death rate on case rate (both per 100,000) over the states that have both; None when there are
    fewer than two such states or their case rates are all equal (no line can be fitted)."""
    both = rates[["cases_per_100k", "deaths_per_100k"]].dropna()
    x = both["cases_per_100k"].to_numpy(dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    return ols(x, both["deaths_per_100k"].to_numpy(dtype=float))
