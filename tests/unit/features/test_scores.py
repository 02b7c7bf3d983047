"""Clinical scores against their published tables.

Expected values are copied from the sources (RCP NEWS2 2017 chart 1, Sepsis-3 qSOFA, van Walraven 2010
LACE, Quan 2005 ICD-10 Charlson with Charlson 1987 weights), never recomputed with the code under test.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from carecast.features import (
    NEWS2_PARAMETERS,
    News2Result,
    charlson,
    lace,
    news2,
    news2_frame,
    qsofa,
    qsofa_frame,
)

# An observation set that scores 0 on every parameter; each test changes one value.
NORMAL: dict[str, Any] = {
    "respiratory_rate": 16.0,
    "spo2": 97.0,
    "on_oxygen": False,
    "systolic_bp": 120.0,
    "heart_rate": 70.0,
    "acvpu": 0,
    "temperature": 37.0,
}


def score(spo2_scale: int = 1, **changes: Any) -> News2Result:
    return news2(**{**NORMAL, **changes}, spo2_scale=spo2_scale)


def test_normal_observation_set_scores_zero() -> None:
    result = score()
    assert result.total == 0
    assert dict(result.subscores) == dict.fromkeys(NEWS2_PARAMETERS, 0)
    assert result.complete and result.n_missing == 0 and not result.any_parameter_3 and result.band == "low"


# ------------------------------------------------------------------------------------ NEWS2 parameters


@pytest.mark.parametrize(
    ("respiratory_rate", "expected"),
    [
        (4, 3), (8, 3), (8.5, 1), (9, 1), (11, 1), (11.5, 0), (12, 0), (20, 0), (20.5, 2), (21, 2),
        (24, 2), (24.5, 3), (25, 3), (45, 3),
    ],
)
def test_respiratory_rate_bands(respiratory_rate: float, expected: int) -> None:
    result = score(respiratory_rate=respiratory_rate)
    assert result.subscores["respiratory_rate"] == expected
    assert result.total == expected


@pytest.mark.parametrize(
    ("spo2", "expected"),
    [(70, 3), (91, 3), (91.5, 2), (92, 2), (93, 2), (94, 1), (95, 1), (95.5, 0), (96, 0), (100, 0)],
)
def test_spo2_scale_1_bands(spo2: float, expected: int) -> None:
    assert score(spo2=spo2).subscores["spo2"] == expected
    # Scale 1 does not depend on oxygen: the same SpO2 points on oxygen (plus 2 for the oxygen itself).
    on_oxygen = score(spo2=spo2, on_oxygen=True)
    assert on_oxygen.subscores["spo2"] == expected
    assert on_oxygen.total == expected + 2


@pytest.mark.parametrize(
    ("spo2", "on_oxygen", "expected"),
    [
        (75, False, 3), (75, True, 3),
        (83, False, 3), (83, True, 3),
        (84, False, 2), (84, True, 2),
        (85, False, 2), (85, True, 2),
        (86, False, 1), (86, True, 1),
        (87, False, 1), (87, True, 1),
        (88, False, 0), (88, True, 0),
        (92, False, 0), (92, True, 0),
        (93, False, 0), (93, True, 1),
        (94, False, 0), (94, True, 1),
        (95, False, 0), (95, True, 2),
        (96, False, 0), (96, True, 2),
        (97, False, 0), (97, True, 3),
        (100, False, 0), (100, True, 3),
        (92.5, True, 1), (96.5, True, 3), (87.5, True, 0),
    ],
)
def test_spo2_scale_2_bands(spo2: float, on_oxygen: bool, expected: int) -> None:
    result = score(spo2_scale=2, spo2=spo2, on_oxygen=on_oxygen)
    assert result.subscores["spo2"] == expected
    assert result.subscores["oxygen"] == (2 if on_oxygen else 0)
    assert result.total == expected + (2 if on_oxygen else 0)


@pytest.mark.parametrize(("spo2", "expected"), [(80, 3), (86, 1), (90, 0), (92, 0), (93, None), (98, None)])
def test_spo2_scale_2_without_oxygen_status(spo2: float, expected: int | None) -> None:
    # At or below 92 % scale 2 is the same on air and on oxygen; above it the points are unknowable.
    result = score(spo2_scale=2, spo2=spo2, on_oxygen=None)
    assert result.subscores["spo2"] == expected
    assert result.subscores["oxygen"] is None
    assert result.n_missing == (1 if expected is not None else 2)


@pytest.mark.parametrize(("on_oxygen", "expected"), [(False, 0), (True, 2)])
def test_air_or_oxygen(on_oxygen: bool, expected: int) -> None:
    result = score(on_oxygen=on_oxygen)
    assert result.subscores["oxygen"] == expected
    assert result.total == expected


@pytest.mark.parametrize(
    ("systolic_bp", "expected"),
    [
        (60, 3), (90, 3), (90.5, 2), (91, 2), (100, 2), (101, 1), (110, 1), (110.5, 0), (111, 0), (219, 0),
        (219.5, 3), (220, 3), (260, 3),
    ],
)
def test_systolic_bp_bands(systolic_bp: float, expected: int) -> None:
    result = score(systolic_bp=systolic_bp)
    assert result.subscores["systolic_bp"] == expected
    assert result.total == expected


@pytest.mark.parametrize(
    ("heart_rate", "expected"),
    [
        (30, 3), (40, 3), (40.5, 1), (41, 1), (50, 1), (51, 0), (90, 0), (90.5, 1), (91, 1), (110, 1),
        (111, 2), (130, 2), (130.5, 3), (131, 3), (180, 3),
    ],
)
def test_heart_rate_bands(heart_rate: float, expected: int) -> None:
    result = score(heart_rate=heart_rate)
    assert result.subscores["heart_rate"] == expected
    assert result.total == expected


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [
        (33.0, 3), (35.0, 3), (35.05, 1), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.05, 1), (38.1, 1),
        (39.0, 1), (39.1, 2), (41.0, 2),
        # 100.4 [degF] through the catalogue's conversion (F * 0.5555555555555556 - 17.77777777777778)
        (38.00000000000001, 0),
    ],
)
def test_temperature_bands(temperature: float, expected: int) -> None:
    result = score(temperature=temperature)
    assert result.subscores["temperature"] == expected
    assert result.total == expected


@pytest.mark.parametrize(("acvpu", "expected"), [(0, 0), (1, 3), (2, 3), (3, 3), (4, 3)])
def test_consciousness_acvpu(acvpu: int, expected: int) -> None:
    result = score(acvpu=acvpu)
    assert result.subscores["consciousness"] == expected
    assert result.total == expected


@pytest.mark.parametrize("acvpu", [-1, 5, 2.5])
def test_unknown_acvpu_level_is_rejected(acvpu: float) -> None:
    with pytest.raises(ValueError, match="acvpu"):
        score(acvpu=acvpu)


@pytest.mark.parametrize("spo2_scale", [0, 3])
def test_unknown_spo2_scale_is_rejected(spo2_scale: int) -> None:
    with pytest.raises(ValueError, match="spo2_scale"):
        score(spo2_scale=spo2_scale)


# --------------------------------------------------------------------------------- totals and bands


@pytest.mark.parametrize(
    ("changes", "total", "band", "any3"),
    [
        ({}, 0, "low", False),
        ({"respiratory_rate": 21, "spo2": 94, "heart_rate": 91}, 4, "low", False),  # 2 + 1 + 1
        ({"respiratory_rate": 21, "spo2": 94, "heart_rate": 91, "temperature": 38.1}, 5, "medium", False),
        ({"respiratory_rate": 21, "spo2": 94, "heart_rate": 91, "temperature": 38.1, "systolic_bp": 101}, 6,
         "medium", False),
        ({"respiratory_rate": 21, "spo2": 92, "heart_rate": 91, "temperature": 38.1, "systolic_bp": 101}, 7,
         "high", False),
        ({"acvpu": 1}, 3, "low-medium", True),  # a single red score
        ({"systolic_bp": 90, "heart_rate": 91}, 4, "low-medium", True),
        ({"acvpu": 2, "on_oxygen": True}, 5, "medium", True),
        ({"heart_rate": 131, "respiratory_rate": 25, "spo2": 91}, 9, "high", True),
        ({"respiratory_rate": 30, "spo2": 85, "on_oxygen": True, "systolic_bp": 80, "heart_rate": 140, "acvpu": 4,
          "temperature": 34.0}, 20, "high", True),  # every parameter at its worst
    ],
)
def test_totals_and_bands(changes: dict[str, Any], total: int, band: str, any3: bool) -> None:
    result = score(**changes)
    assert (result.total, result.band, result.any_parameter_3) == (total, band, any3)


def test_missing_parameters_are_counted_not_scored() -> None:
    result = score(respiratory_rate=None, temperature=float("nan"), heart_rate=120)
    assert result.subscores["respiratory_rate"] is None
    assert result.subscores["temperature"] is None
    assert result.total == 2
    assert result.n_missing == 2
    assert not result.complete


def test_all_missing_scores_zero_and_incomplete() -> None:
    result = news2(None, None, None, None, None, None, None)
    assert result.total == 0
    assert result.n_missing == 7
    assert not result.complete
    assert result.band == "low"
    assert dict(result.subscores) == dict.fromkeys(NEWS2_PARAMETERS)


def test_missing_oxygen_counts_as_one_missing_parameter_on_scale_1() -> None:
    result = score(on_oxygen=None, spo2=93)
    assert result.subscores["spo2"] == 2
    assert result.n_missing == 1


def test_result_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        score().total = 5


optional_vital = st.one_of(st.none(), st.floats(min_value=0, max_value=300, allow_nan=False))


@given(
    respiratory_rate=optional_vital,
    spo2=st.one_of(st.none(), st.floats(min_value=40, max_value=100, allow_nan=False)),
    on_oxygen=st.one_of(st.none(), st.booleans()),
    systolic_bp=optional_vital,
    heart_rate=optional_vital,
    acvpu=st.one_of(st.none(), st.sampled_from([0, 1, 2, 3, 4])),
    temperature=st.one_of(st.none(), st.floats(min_value=25, max_value=45, allow_nan=False)),
    spo2_scale=st.sampled_from([1, 2]),
)
def test_total_is_bounded_and_is_the_sum_of_subscores(
    respiratory_rate: float | None,
    spo2: float | None,
    on_oxygen: bool | None,
    systolic_bp: float | None,
    heart_rate: float | None,
    acvpu: int | None,
    temperature: float | None,
    spo2_scale: int,
) -> None:
    result = news2(
        respiratory_rate, spo2, on_oxygen, systolic_bp, heart_rate, acvpu, temperature, spo2_scale=spo2_scale
    )
    present = [points for points in result.subscores.values() if points is not None]
    assert 0 <= result.total <= 20
    assert result.total == sum(present)
    assert result.n_missing == 7 - len(present)
    assert set(result.subscores) == set(NEWS2_PARAMETERS)


# ------------------------------------------------------------------------------------- news2_frame


def test_news2_frame_hard_coded_rows() -> None:
    df = pd.DataFrame(
        {
            "respiratory_rate": [16, 21, np.nan, 25],
            "spo2": [97, 94, 95, 96],
            "oxygen_flow": [0.0, 0.0, 2.0, np.nan],
            "systolic_bp": [120, 120, 120, 90],
            "heart_rate": [70, 91, 70, 131],
            "acvpu": [0, 0, 1, 0],
            "temperature": [37.0, 37.0, 37.0, 35.0],
            "scale": [1, 1, 2, 1],
        },
        index=pd.Index([10, 11, 12, 13], name="row"),
    )
    out = news2_frame(df, spo2_scale_col="scale")
    assert out.index.equals(df.index)
    assert out["news2_total"].tolist() == [0, 4, 7, 12]  # row 12: scale 2 95 % on O2 = 2, O2 2, ACVPU 3
    assert out["news2_band"].tolist() == ["low", "low", "high", "high"]
    assert out["news2_any3"].tolist() == [False, False, True, True]
    assert out["news2_missing"].tolist() == [0, 0, 1, 1]
    assert out["news2_spo2"].tolist() == [0, 1, 2, 0]
    assert out["news2_oxygen"].tolist()[:3] == [0, 0, 2]
    assert math.isnan(out["news2_oxygen"].iloc[3])
    assert math.isnan(out["news2_respiratory_rate"].iloc[2])
    assert out["news2_total"].dtype == np.int64
    assert out["news2_any3"].dtype == bool
    assert [column for column in out.columns if column.startswith("news2_")] == [
        "news2_total", "news2_band", "news2_any3", "news2_missing", *(f"news2_{name}" for name in NEWS2_PARAMETERS)
    ]


def test_news2_frame_on_oxygen_column_wins_over_flow() -> None:
    df = pd.DataFrame(
        {
            "respiratory_rate": [16, 16, 16],
            "spo2": [97, 97, 97],
            "on_oxygen": [True, None, False],
            "oxygen_flow": [0.0, 4.0, 4.0],
            "systolic_bp": [120, 120, 120],
            "heart_rate": [70, 70, 70],
            "acvpu": [0, 0, 0],
            "temperature": [37.0, 37.0, 37.0],
        }
    )
    assert news2_frame(df)["news2_oxygen"].tolist() == [2, 2, 0]


def test_news2_frame_empty() -> None:
    columns = ["respiratory_rate", "spo2", "on_oxygen", "systolic_bp", "heart_rate", "acvpu", "temperature"]
    out = news2_frame(pd.DataFrame({name: pd.Series([], dtype=float) for name in columns}))
    assert len(out) == 0
    assert "news2_total" in out.columns


@pytest.mark.parametrize(
    ("drop", "message"), [("temperature", "temperature"), ("on_oxygen", "on_oxygen or an oxygen_flow")]
)
def test_news2_frame_requires_its_columns(drop: str, message: str) -> None:
    df = pd.DataFrame({name: [value] for name, value in NORMAL.items()}).drop(columns=[drop])
    with pytest.raises(ValueError, match=message):
        news2_frame(df)


def test_news2_frame_rejects_bad_acvpu_and_scale() -> None:
    df = pd.DataFrame({name: [value] for name, value in NORMAL.items()})
    with pytest.raises(ValueError, match="acvpu"):
        news2_frame(df.assign(acvpu=7))
    with pytest.raises(ValueError, match="scale"):
        news2_frame(df.assign(scale=3), spo2_scale_col="scale")


def _random_vitals(rng: np.random.Generator, n: int) -> pd.DataFrame:
    def vital(low: int, high: int, decimals: int) -> np.ndarray:
        # Mostly charted resolution (lands on band edges), some arbitrary reals between them.
        values = np.where(
            rng.random(n) < 0.7, np.round(rng.uniform(low, high, n), decimals), rng.uniform(low, high, n)
        )
        return np.where(rng.random(n) < 0.1, np.nan, values)

    acvpu = rng.integers(0, 5, n).astype(float)
    return pd.DataFrame(
        {
            "respiratory_rate": vital(2, 40, 0),
            "spo2": vital(70, 100, 0),
            "oxygen_flow": np.where(rng.random(n) < 0.1, np.nan, np.where(rng.random(n) < 0.5, 0.0, 2.0)),
            "systolic_bp": vital(60, 240, 0),
            "heart_rate": vital(25, 160, 0),
            "acvpu": np.where(rng.random(n) < 0.1, np.nan, np.where(rng.random(n) < 0.6, 0.0, acvpu)),
            "temperature": vital(33, 42, 1),
            "gcs_total": np.where(rng.random(n) < 0.3, np.nan, rng.integers(3, 16, n).astype(float)),
            "scale": np.where(rng.random(n) < 0.5, 1.0, np.where(rng.random(n) < 0.8, 2.0, np.nan)),
        }
    )


def _optional(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def test_news2_frame_equals_scalar_on_random_rows() -> None:
    df = _random_vitals(np.random.default_rng(20170101), 4000)
    out = news2_frame(df, spo2_scale_col="scale")
    for i, row in enumerate(df.itertuples(index=False)):
        expected = news2(
            _optional(row.respiratory_rate),
            _optional(row.spo2),
            None if math.isnan(row.oxygen_flow) else row.oxygen_flow > 0,
            _optional(row.systolic_bp),
            _optional(row.heart_rate),
            None if math.isnan(row.acvpu) else int(row.acvpu),
            _optional(row.temperature),
            spo2_scale=1 if math.isnan(row.scale) else int(row.scale),
        )
        got = out.iloc[i]
        assert got["news2_total"] == expected.total
        assert got["news2_band"] == expected.band
        assert got["news2_any3"] == expected.any_parameter_3
        assert got["news2_missing"] == expected.n_missing
        for name in NEWS2_PARAMETERS:
            points = got[f"news2_{name}"]
            assert (None if math.isnan(points) else points) == expected.subscores[name], name
    # The sample must exercise what it claims to: every band, missing values and both scales.
    assert set(out["news2_band"]) == {"low", "low-medium", "medium", "high"}
    assert out["news2_missing"].max() >= 2
    assert (out["news2_spo2"].isna() & df["spo2"].notna()).sum() > 10  # scale 2 above 92 % with oxygen unknown


# ------------------------------------------------------------------------------------------- qSOFA


@pytest.mark.parametrize(
    ("respiratory_rate", "expected"), [(12, 0), (21, 0), (21.9, 0), (22, 1), (30, 1)]
)
def test_qsofa_respiratory_rate(respiratory_rate: float, expected: int) -> None:
    assert qsofa(respiratory_rate, 120, False).total == expected


@pytest.mark.parametrize(("systolic_bp", "expected"), [(80, 1), (100, 1), (100.5, 0), (101, 0), (140, 0)])
def test_qsofa_systolic_bp(systolic_bp: float, expected: int) -> None:
    assert qsofa(16, systolic_bp, False).total == expected


@pytest.mark.parametrize(
    ("altered_mentation", "gcs", "expected", "n_missing"),
    [
        (None, 15, 0, 0),
        (None, 14, 1, 0),
        (None, 3, 1, 0),
        (True, None, 1, 0),
        (False, None, 0, 0),
        (False, 14, 1, 0),  # either source saying altered is enough
        (True, 15, 1, 0),
        (None, None, 0, 1),
    ],
)
def test_qsofa_mentation(altered_mentation: bool | None, gcs: float | None, expected: int, n_missing: int) -> None:
    result = qsofa(16, 120, altered_mentation, gcs)
    assert (result.total, result.n_missing) == (expected, n_missing)


@pytest.mark.parametrize(
    ("respiratory_rate", "systolic_bp", "altered", "total", "positive"),
    [
        (16, 120, False, 0, False),
        (22, 120, False, 1, False),
        (22, 100, False, 2, True),
        (16, 100, True, 2, True),
        (22, 100, True, 3, True),
        (None, 100, True, 2, True),
        (None, None, True, 1, False),
    ],
)
def test_qsofa_total_and_positive(
    respiratory_rate: float | None, systolic_bp: float | None, altered: bool, total: int, positive: bool
) -> None:
    result = qsofa(respiratory_rate, systolic_bp, altered)
    assert (result.total, result.positive) == (total, positive)


def test_qsofa_frame_hard_coded_rows() -> None:
    df = pd.DataFrame(
        {
            "respiratory_rate": [22, 21, np.nan, 30],
            "systolic_bp": [100, 101, 90, np.nan],
            "gcs_total": [15, 14, np.nan, np.nan],
            "acvpu": [0, np.nan, np.nan, 2],
        }
    )
    out = qsofa_frame(df)
    assert out["qsofa_total"].tolist() == [2, 1, 1, 2]
    assert out["qsofa_positive"].tolist() == [True, False, False, True]
    assert out["qsofa_missing"].tolist() == [0, 0, 2, 1]


def test_qsofa_frame_with_only_gcs_or_only_acvpu() -> None:
    base = {"respiratory_rate": [16, 16], "systolic_bp": [120, 120]}
    assert qsofa_frame(pd.DataFrame({**base, "gcs_total": [15, 13]}))["qsofa_total"].tolist() == [0, 1]
    assert qsofa_frame(pd.DataFrame({**base, "acvpu": [0, 1]}))["qsofa_total"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="gcs_total or an acvpu"):
        qsofa_frame(pd.DataFrame(base))


def test_qsofa_frame_equals_scalar_on_random_rows() -> None:
    df = _random_vitals(np.random.default_rng(2016), 3000)
    out = qsofa_frame(df)
    for i, row in enumerate(df.itertuples(index=False)):
        expected = qsofa(
            _optional(row.respiratory_rate),
            _optional(row.systolic_bp),
            None if math.isnan(row.acvpu) else row.acvpu != 0,
            _optional(row.gcs_total),
        )
        got = out.iloc[i]
        assert (got["qsofa_total"], got["qsofa_positive"], got["qsofa_missing"]) == (
            expected.total, expected.positive, expected.n_missing
        )
    assert set(out["qsofa_total"]) == {0, 1, 2, 3}


# ---------------------------------------------------------------------------------------- Charlson

# Charlson 1987 weights for the 17 Quan 2005 categories.
CHARLSON_WEIGHTS = {
    "myocardial_infarction": 1,
    "congestive_heart_failure": 1,
    "peripheral_vascular_disease": 1,
    "cerebrovascular_disease": 1,
    "dementia": 1,
    "chronic_pulmonary_disease": 1,
    "rheumatic_disease": 1,
    "peptic_ulcer_disease": 1,
    "mild_liver_disease": 1,
    "diabetes_without_complications": 1,
    "diabetes_with_complications": 2,
    "hemiplegia_paraplegia": 2,
    "renal_disease": 2,
    "any_malignancy": 2,
    "moderate_severe_liver_disease": 3,
    "metastatic_solid_tumour": 6,
    "aids_hiv": 6,
}

REPRESENTATIVE_CODES = [
    ("I21.9", "myocardial_infarction", 1),
    ("I25.2", "myocardial_infarction", 1),
    ("I50.9", "congestive_heart_failure", 1),
    ("I42.0", "congestive_heart_failure", 1),
    ("I13.0", "congestive_heart_failure", 1),
    ("I73.9", "peripheral_vascular_disease", 1),
    ("Z95.8", "peripheral_vascular_disease", 1),
    ("I63.9", "cerebrovascular_disease", 1),
    ("G45.9", "cerebrovascular_disease", 1),
    ("F03", "dementia", 1),
    ("G30.9", "dementia", 1),
    ("J44.9", "chronic_pulmonary_disease", 1),
    ("J45.909", "chronic_pulmonary_disease", 1),  # ICD-10-CM extension of J45
    ("M05.9", "rheumatic_disease", 1),
    ("M32.1", "rheumatic_disease", 1),
    ("K25.9", "peptic_ulcer_disease", 1),
    ("K70.3", "mild_liver_disease", 1),
    ("B18.2", "mild_liver_disease", 1),
    ("E11.9", "diabetes_without_complications", 1),
    ("E10.1", "diabetes_without_complications", 1),
    ("E11.2", "diabetes_with_complications", 2),
    ("E11.22", "diabetes_with_complications", 2),  # ICD-10-CM: type 2 diabetes with diabetic CKD
    ("E10.5", "diabetes_with_complications", 2),
    ("G81.9", "hemiplegia_paraplegia", 2),
    ("G83.4", "hemiplegia_paraplegia", 2),
    ("N18.5", "renal_disease", 2),
    ("I13.1", "renal_disease", 2),
    ("Z99.2", "renal_disease", 2),
    ("C50.9", "any_malignancy", 2),
    ("C43.9", "any_malignancy", 2),
    ("C91.0", "any_malignancy", 2),
    ("K72.9", "moderate_severe_liver_disease", 3),
    ("K70.4", "moderate_severe_liver_disease", 3),
    ("I85.0", "moderate_severe_liver_disease", 3),
    ("C78.0", "metastatic_solid_tumour", 6),
    ("C80.1", "metastatic_solid_tumour", 6),
    ("B20", "aids_hiv", 6),
    ("B24", "aids_hiv", 6),
]


@pytest.mark.parametrize(("code", "category", "weight"), REPRESENTATIVE_CODES)
def test_charlson_category_and_weight(code: str, category: str, weight: int) -> None:
    result = charlson([code])
    assert result.categories == frozenset({category})
    assert result.score == weight


def test_every_category_has_a_representative_code() -> None:
    assert {category for _, category, _ in REPRESENTATIVE_CODES} == set(CHARLSON_WEIGHTS)


@pytest.mark.parametrize(
    "code",
    [
        "C44.9",  # non-melanoma skin cancer is excluded
        "I25.1",  # chronic ischaemic heart disease without old MI
        "I42.1",  # obstructive hypertrophic cardiomyopathy is not in the CHF list
        "B23.0",  # not in Quan's HIV list
        "I10",  # hypertension is not a Charlson condition
        "K76.1",  # chronic passive congestion of liver
        "E66.9",
        "Z00.0",
    ],
)
def test_codes_outside_the_table_do_not_count(code: str) -> None:
    assert charlson([code]).score == 0


@pytest.mark.parametrize(
    ("codes", "score", "categories"),
    [
        (["K70.3", "K72.9"], 3, {"moderate_severe_liver_disease"}),
        (["E11.9", "E11.2"], 2, {"diabetes_with_complications"}),
        (["C50.9", "C78.0"], 6, {"metastatic_solid_tumour"}),
        (["K70.3", "E11.9", "C50.9"], 4, {"mild_liver_disease", "diabetes_without_complications", "any_malignancy"}),
        (["I21.0", "I50.9"], 2, {"myocardial_infarction", "congestive_heart_failure"}),  # no hierarchy here
    ],
)
def test_charlson_hierarchy(codes: list[str], score: int, categories: set[str]) -> None:
    result = charlson(codes)
    assert (result.score, result.categories) == (score, frozenset(categories))


def test_charlson_all_categories() -> None:
    # 8 x 1 (mild liver and uncomplicated diabetes superseded) + 3 x 2 (malignancy superseded) + 3 + 6 + 6
    result = charlson(code for code, _, _ in REPRESENTATIVE_CODES)
    assert result.score == 29
    assert len(result.categories) == 14


def test_each_category_counts_once() -> None:
    assert charlson(["I21.0", "I21.4", "I22.1", "I25.2"]).score == 1


@pytest.mark.parametrize("code", ["E11.9", "E119", "e11.9", " E11.9 ", "e119"])
def test_codes_with_or_without_dots_and_any_case(code: str) -> None:
    assert charlson([code]).categories == frozenset({"diabetes_without_complications"})


def test_unknown_and_empty_inputs() -> None:
    assert charlson([]).score == 0
    assert charlson([]).categories == frozenset()
    assert charlson(["", "XYZ", "12345", "."]).score == 0
    assert charlson(pd.Series(["I21.9", np.nan, None], dtype=object)).score == 1


def _charlson_csv() -> list[dict[str, str]]:
    text = resources.files("carecast.features").joinpath("data", "charlson_icd10.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def test_charlson_table_integrity() -> None:
    rows = _charlson_csv()
    assert {row["category"]: int(row["weight"]) for row in rows} == CHARLSON_WEIGHTS
    for row in rows:
        assert int(row["weight"]) == CHARLSON_WEIGHTS[row["category"]]
    prefixes = [row["icd10_prefix"] for row in rows]
    assert all(prefix == prefix.strip().upper() and "." not in prefix for prefix in prefixes)
    assert len(prefixes) == len(set(prefixes))
    # Prefix-free: no code can fall into two rows.
    assert not [(a, b) for a in prefixes for b in prefixes if a != b and b.startswith(a)]


def test_charlson_table_row_counts_per_category() -> None:
    # Counts of Quan 2005 table 1 entries once ranges are expanded to one prefix per row.
    counts: dict[str, int] = {}
    for row in _charlson_csv():
        counts[row["category"]] = counts.get(row["category"], 0) + 1
    assert counts == {
        "myocardial_infarction": 3,
        "congestive_heart_failure": 14,
        "peripheral_vascular_disease": 13,
        "cerebrovascular_disease": 13,
        "dementia": 7,
        "chronic_pulmonary_disease": 21,
        "rheumatic_disease": 9,
        "peptic_ulcer_disease": 4,
        "mild_liver_disease": 19,
        "diabetes_without_complications": 25,
        "diabetes_with_complications": 25,
        "hemiplegia_paraplegia": 12,
        "renal_disease": 22,
        "any_malignancy": 83,
        "moderate_severe_liver_disease": 11,
        "metastatic_solid_tumour": 4,
        "aids_hiv": 4,
    }


# -------------------------------------------------------------------------------------------- LACE


@pytest.mark.parametrize(
    ("length_of_stay_days", "expected"),
    [
        (0, 0), (0.9, 0), (1, 1), (1.5, 1), (2, 2), (3, 3), (3.99, 3), (4, 4), (5, 4), (6, 4), (6.99, 4),
        (7, 5), (13, 5), (13.9, 5), (14, 7), (60, 7),
    ],
)
def test_lace_length_of_stay(length_of_stay_days: float, expected: int) -> None:
    result = lace(length_of_stay_days, False, 0, 0)
    assert (result.L, result.total) == (expected, expected)


@pytest.mark.parametrize(("emergent", "expected"), [(False, 0), (True, 3)])
def test_lace_acuity(emergent: bool, expected: int) -> None:
    result = lace(0, emergent, 0, 0)
    assert (result.A, result.total) == (expected, expected)


@pytest.mark.parametrize(("charlson_index", "expected"), [(0, 0), (1, 1), (2, 2), (3, 3), (4, 5), (5, 5), (12, 5)])
def test_lace_comorbidity(charlson_index: int, expected: int) -> None:
    result = lace(0, False, charlson_index, 0)
    assert (result.C, result.total) == (expected, expected)


@pytest.mark.parametrize(("ed_visits", "expected"), [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 4), (20, 4)])
def test_lace_ed_visits(ed_visits: int, expected: int) -> None:
    result = lace(0, False, 0, ed_visits)
    assert (result.E, result.total) == (expected, expected)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0.5, False, 0, 0), (0, 0, 0, 0, 0)),
        ((5.5, True, 2, 1), (10, 4, 3, 2, 1)),
        ((14, True, 4, 4), (19, 7, 3, 5, 4)),  # the maximum
        ((9, True, 3, 6), (15, 5, 3, 3, 4)),
    ],
)
def test_lace_totals(args: tuple[float, bool, int, int], expected: tuple[int, int, int, int, int]) -> None:
    result = lace(*args)
    assert (result.total, result.L, result.A, result.C, result.E) == expected


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((-0.5, False, 0, 0), "length_of_stay_days"),
        ((1, False, -1, 0), "charlson_index"),
        ((1, False, 0, -3), "ed_visits_6m"),
    ],
)
def test_lace_rejects_negative_inputs_without_echoing_them(args: tuple[float, bool, int, int], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be >= 0$"):
        lace(*args)


def test_lace_rejects_nan_length_of_stay() -> None:
    with pytest.raises(ValueError, match="length_of_stay_days is required"):
        lace(float("nan"), False, 0, 0)
