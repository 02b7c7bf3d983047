"""Preprocessing follows the scikit-learn estimator contract and refuses a wrong feature schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from carecast.models.pipeline import FeatureSchema, make_preprocessor


def _frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"hr": rng.normal(80, 10, n), "rr": np.where(rng.random(n) < 0.3, np.nan, 18.0),
                         "sex": rng.choice(["female", "male", None], n)})


def test_feature_schema_contract() -> None:
    est = FeatureSchema()
    assert est.get_params() == {"columns": None}
    with pytest.raises(NotFittedError):
        est.transform(_frame())
    fitted = est.fit(_frame())
    assert fitted is est and est.columns_ == ["hr", "rr", "sex"]
    assert list(clone(est).get_params()) == ["columns"]
    with pytest.raises(ValueError, match="missing: rr"):
        est.transform(_frame().drop(columns=["rr"]))
    reordered = est.transform(_frame()[["sex", "rr", "hr"]])
    assert list(reordered.columns) == ["hr", "rr", "sex"]


def test_preprocessor_imputes_with_indicators_scales_and_encodes() -> None:
    prep = make_preprocessor(["hr", "rr"], ["sex"]).fit(_frame())
    names = list(prep.get_feature_names_out())
    assert "missingindicator_rr" in names and "sex_missing" in names
    out = prep.transform(_frame(7))
    assert not np.isnan(out).any()
    hr = out[:, names.index("hr")]
    assert abs(prep.transform(_frame())[:, names.index("hr")].mean()) < 1e-9  # scaled on the training data
    unseen = _frame(3).assign(sex="unknown-level")
    assert prep.transform(unseen)[:, [i for i, n in enumerate(names) if n.startswith("sex_")]].sum() == 0
    assert hr.shape == (7,)
