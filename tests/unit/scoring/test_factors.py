"""Factors in clinical words: the table of feature-name patterns, value formatting and units."""

from __future__ import annotations

import re

import pytest

from carecast.features.spec import default_spec
from carecast.scoring.predictor import describe_factor


@pytest.mark.parametrize(("feature", "value", "text"), [
    ("respiratory_rate_slope_4h", 2.0, "respiratory rate rising"),
    ("respiratory_rate_slope_4h", -0.5, "respiratory rate falling"),
    ("heart_rate_last_4h", 112.0, "heart rate 112/min"),
    ("heart_rate_last_24h", None, "no recent heart rate"),
    ("spo2_min_4h", 91.0, "lowest SpO2 91% in 4 h"),
    ("temperature_max_24h", 38.65, "highest temperature 38.6 °C in 24 h"),
    ("systolic_bp_mean_4h", 96.3, "mean systolic BP 96.3 mmHg in 4 h"),
    ("respiratory_rate_count_4h", 0.0, "no respiratory rate readings in 4 h"),
    ("news2_total", 7.0, "NEWS2 7"),
    ("news2_total", None, "NEWS2 not available"),
    ("qsofa_total", 2.0, "qSOFA 2"),
    ("lactate_last", 4.2, "lactate 4.2 mmol/L"),
    ("lactate_last", None, "no recent lactate"),
    ("lactate_delta", 1.5, "lactate up 1.5 mmol/L"),
    ("creatinine_delta", -0.25, "creatinine down 0.25 mg/dL"),
    ("wbc_hours_since", 30.4, "white cell count measured 30 h ago"),
    ("wearable_heart_rate_mean_1h", 101.0, "mean wearable heart rate 101/min in 1 h"),
    ("wearable_spo2_min_4h", None, "no recent wearable SpO2"),
    ("age", 81.7, "age 81"),
    ("hours_since_admission", 12.2, "12 h since admission"),
    ("hours_since_admission", 80.0, "3.3 days since admission"),
    ("comorbidity_congestive_heart_failure", 1.0, "history of congestive heart failure"),
    ("comorbidity_aids_hiv", 0.0, "no history of AIDS/HIV"),
    ("imaging_pneumonia", 1.0, "imaging shows pneumonia"),
    ("imaging_reports", 2.0, "2 imaging reports in 72 h"),
    ("ed_visits_prior", 3.0, "3 emergency visits in the previous 180 days"),
    ("admission_type", "emergency", "emergency admission"),
    ("sex", None, "sex not recorded"),
])
def test_table(feature: str, value: float | str | None, text: str) -> None:
    assert describe_factor(feature, value) == text


@pytest.mark.parametrize("value", [0.0, 1.0, 123.456, -2.5, None])
def test_every_feature_of_the_spec_reads_as_words(value: float | None) -> None:
    for feature in default_spec().columns():
        text = describe_factor(feature, "level" if feature in default_spec().categorical else value)
        assert text and "_" not in text and not re.search(r"\bnan\b", text, re.I), (feature, text)


def test_unknown_features_fall_back_to_their_words() -> None:
    assert describe_factor("frailty_score", 4.0) == "frailty score 4"
    assert describe_factor("frailty_score", None) == "no recent frailty score"


def test_docstring_examples() -> None:
    import doctest

    from carecast.scoring import predictor

    result = doctest.testmod(predictor)
    assert result.attempted > 0 and result.failed == 0
