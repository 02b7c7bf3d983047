"""OLS of death rate on case rate, checked against a hand-computed fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from carecast.population import fit_death_on_case, ols


def _rates(x: list[float], y: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"state": [f"S{i}" for i in range(len(x))], "cases_per_100k": x, "deaths_per_100k": y})


def test_hand_computed_example() -> None:
    # x = 1..4, y = 2, 3, 5, 6: mean x 2.5, mean y 4, Sxx = 5, Sxy = 7 -> slope 1.4, intercept 0.5;
    # fitted 1.9, 3.3, 4.7, 6.1 -> SSE 0.2, SST 10 -> R squared 0.98.
    fit = fit_death_on_case(_rates([1, 2, 3, 4], [2, 3, 5, 6]))
    assert fit is not None
    assert fit.slope == pytest.approx(1.4) and fit.intercept == pytest.approx(0.5)
    assert fit.r_squared == pytest.approx(0.98) and fit.n == 4
    assert fit.predict(10) == pytest.approx(14.5)


def test_states_without_both_rates_are_left_out() -> None:
    fit = fit_death_on_case(_rates([1, 2, 3, 4, 5], [2, 3, 5, 6, np.nan]))
    assert fit is not None and fit.n == 4 and fit.slope == pytest.approx(1.4)


def test_no_line_without_two_distinct_case_rates() -> None:
    assert fit_death_on_case(_rates([3.0], [1.0])) is None
    assert fit_death_on_case(_rates([3.0, 3.0, 3.0], [1.0, 2.0, 3.0])) is None
    with pytest.raises(ValueError, match="two points"):
        ols([1.0], [1.0])
    with pytest.raises(ValueError, match="not all equal"):
        ols([1.0, 1.0], [1.0, 2.0])
