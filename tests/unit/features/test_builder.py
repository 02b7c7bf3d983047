"""Point-in-time feature builder: no look-ahead, exact window statistics, one code path for
training and serving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from carecast.domain.frames import ClinicalFrames
from carecast.features.builder import build_features
from carecast.features.spec import default_spec

T0 = pd.Timestamp("2026-01-05T00:00:00Z")
VARS = ["heart_rate", "respiratory_rate", "spo2", "systolic_bp", "temperature", "lactate", "acvpu"]


def _frames(seed: int = 0, n_patients: int = 6, n_obs: int = 400) -> ClinicalFrames:
    rng = np.random.default_rng(seed)
    pids = np.arange(1, n_patients + 1)
    patients = pd.DataFrame({"patient_id": pids, "sex": rng.choice(["female", "male"], n_patients),
                             "race": "White", "ethnicity": None, "state": "OH",
                             "birth_date": pd.Timestamp("1950-06-01", tz="UTC")})
    encounters = pd.DataFrame({"encounter_id": pids * 10, "patient_id": pids, "admitted_at": T0,
                               "discharged_at": pd.NaT, "unit": "Ward", "admission_type": "emergency",
                               "encounter_class": "IMP", "disposition": None})
    var = rng.choice(VARS, n_obs)
    base = {"heart_rate": 80, "respiratory_rate": 18, "spo2": 96, "systolic_bp": 120, "temperature": 37,
            "lactate": 1.5, "acvpu": 0}
    observations = pd.DataFrame({
        "patient_id": rng.choice(pids, n_obs), "encounter_id": np.nan, "variable": var,
        "value": [base[v] + (rng.integers(0, 2) if v == "acvpu" else rng.normal(0, 5)) for v in var],
        "effective_at": T0 + pd.to_timedelta(rng.integers(0, 72 * 60, n_obs), unit="m"),
        "source": rng.choice(["fhir", "fhir", "wearable"], n_obs),
    })
    observations.loc[observations["variable"] == "acvpu", "value"] = \
        observations.loc[observations["variable"] == "acvpu", "value"].clip(0, 4).round()
    conditions = pd.DataFrame({"patient_id": [1, 1, 2], "code_system": "icd10", "code": ["I50.9", "E11.9", "C78.0"],
                               "noted_at": [T0 - pd.Timedelta(days=400), pd.NaT, T0 + pd.Timedelta(hours=30)]})
    reports = pd.DataFrame({"patient_id": [3], "issued_at": [T0 + pd.Timedelta(hours=20)], "category": ["RAD"],
                            "conclusion_codes": ["233604007,60046008"]})
    return ClinicalFrames(patients=patients, encounters=encounters, observations=observations,
                          conditions=conditions, reports=reports).conformed()


def _queries(frames: ClinicalFrames, n: int = 60, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pids = rng.choice(frames.patients["patient_id"].to_numpy(), n)
    return pd.DataFrame({"patient_id": pids, "encounter_id": pids * 10,
                         "t": T0 + pd.to_timedelta(rng.integers(0, 80 * 60, n), unit="m")})


def test_columns_follow_the_declared_spec() -> None:
    frames = _frames()
    X = build_features(frames, _queries(frames))
    assert list(X.columns) == default_spec().columns()
    assert len(X) == 60


def test_window_statistics_match_a_naive_reference() -> None:
    frames = _frames()
    queries = _queries(frames)
    X = build_features(frames, queries)
    obs = frames.observations[frames.observations["source"] == "fhir"]
    for i, q in queries.iterrows():
        for w in (4, 24):
            win = obs[(obs.patient_id == q.patient_id) & (obs.variable == "heart_rate")
                      & (obs.effective_at <= q.t) & (obs.effective_at > q.t - pd.Timedelta(hours=w))]
            win = win.sort_values("effective_at", kind="stable")
            row = X.iloc[i]
            assert row[f"heart_rate_count_{w}h"] == len(win)
            if len(win):
                assert row[f"heart_rate_last_{w}h"] == pytest.approx(win["value"].iloc[-1])
                assert row[f"heart_rate_min_{w}h"] == pytest.approx(win["value"].min())
                assert row[f"heart_rate_max_{w}h"] == pytest.approx(win["value"].max())
                assert row[f"heart_rate_mean_{w}h"] == pytest.approx(win["value"].mean())
            else:
                assert np.isnan(row[f"heart_rate_mean_{w}h"])
            if len(win) >= 2 and win["effective_at"].nunique() > 1:
                hours = (win["effective_at"] - q.t).dt.total_seconds() / 3600
                expected = np.polyfit(hours.to_numpy(), win["value"].to_numpy(), 1)[0]
                assert row[f"heart_rate_slope_{w}h"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
        lab = obs[(obs.patient_id == q.patient_id) & (obs.variable == "lactate") & (obs.effective_at <= q.t)
                  & (obs.effective_at > q.t - pd.Timedelta(hours=72))].sort_values("effective_at", kind="stable")
        if len(lab):
            assert X.iloc[i]["lactate_last"] == pytest.approx(lab["value"].iloc[-1])
            hours = (q.t - lab["effective_at"].iloc[-1]).total_seconds() / 3600
            assert X.iloc[i]["lactate_hours_since"] == pytest.approx(hours)
        if len(lab) >= 2:
            assert X.iloc[i]["lactate_delta"] == pytest.approx(lab["value"].iloc[-1] - lab["value"].iloc[-2])


def test_wearable_readings_are_kept_apart_from_bedside_ones() -> None:
    frames = _frames()
    queries = _queries(frames)
    X = build_features(frames, queries)
    wear = frames.observations[frames.observations["source"] == "wearable"]
    for i, q in queries.iterrows():
        win = wear[(wear.patient_id == q.patient_id) & (wear.variable == "spo2") & (wear.effective_at <= q.t)
                   & (wear.effective_at > q.t - pd.Timedelta(hours=4))]
        assert X.iloc[i]["wearable_spo2_count_4h"] == len(win)
        if len(win) >= 2:
            assert X.iloc[i]["wearable_spo2_std_4h"] == pytest.approx(win["value"].std(ddof=0))


def test_later_data_never_changes_an_earlier_vector() -> None:
    frames = _frames()
    queries = _queries(frames, n=40)
    before = build_features(frames, queries)
    cutoff = queries["t"].max()
    later = frames.observations.sample(50, random_state=3, replace=True).copy()
    later["effective_at"] = cutoff + pd.to_timedelta(np.arange(1, 51), unit="m")
    later["value"] = later["value"] * 3
    grown = ClinicalFrames(patients=frames.patients, encounters=frames.encounters,
                           observations=pd.concat([frames.observations, later], ignore_index=True),
                           conditions=pd.concat([frames.conditions, frames.conditions.assign(
                               code="C80.1", noted_at=cutoff + pd.Timedelta(hours=1))], ignore_index=True),
                           reports=frames.reports).conformed()
    after = build_features(grown, queries)
    pd.testing.assert_frame_equal(before, after)


def test_one_query_at_a_time_equals_the_batch() -> None:
    """Serving builds one vector; training builds many. Same function, same numbers."""
    frames = _frames()
    queries = _queries(frames, n=15)
    batch = build_features(frames, queries)
    for i in range(len(queries)):
        one = build_features(frames, queries.iloc[[i]])
        pd.testing.assert_frame_equal(one.reset_index(drop=True), batch.iloc[[i]].reset_index(drop=True))


def test_comorbidities_and_imaging_respect_time() -> None:
    frames = _frames()
    q = pd.DataFrame({"patient_id": [1, 2, 2, 3, 3], "encounter_id": [10, 20, 20, 30, 30],
                      "t": [T0, T0 + pd.Timedelta(hours=29), T0 + pd.Timedelta(hours=31),
                            T0 + pd.Timedelta(hours=19), T0 + pd.Timedelta(hours=21)]})
    X = build_features(frames, q)
    assert X.loc[0, "comorbidity_congestive_heart_failure"] == 1
    assert X.loc[0, "charlson_index"] == 2  # CHF 1 + diabetes without complications 1
    assert X.loc[1, "charlson_index"] == 0 and X.loc[2, "charlson_index"] == 6  # metastasis noted at 30 h
    assert X.loc[3, "imaging_pneumonia"] == 0 and X.loc[4, "imaging_pneumonia"] == 1
    assert X.loc[4, "imaging_effusion"] == 1 and X.loc[4, "imaging_reports"] == 1
    assert X.loc[0, "age"] == pytest.approx((T0 - pd.Timestamp("1950-06-01", tz="UTC")).days / 365.25, rel=1e-3)


def test_news2_from_last_bedside_values() -> None:
    frames = _frames()
    queries = _queries(frames, n=30)
    X = build_features(frames, queries)
    from carecast.features.scores import news2

    for i in range(len(X)):
        row = X.iloc[i]

        def val(name: str, row: pd.Series = row) -> float | None:
            v = row[f"{name}_last_24h"]
            return None if np.isnan(v) else float(v)

        ox = val("oxygen_flow")
        expected = news2(val("respiratory_rate"), val("spo2"), None if ox is None else ox > 0, val("systolic_bp"),
                         val("heart_rate"), None if val("acvpu") is None else int(val("acvpu")),  # type: ignore[arg-type]
                         val("temperature"))
        assert row["news2_total"] == expected.total


def test_a_patient_without_reports_or_diagnoses() -> None:
    frames = _frames()
    alone = ClinicalFrames(patients=frames.patients, encounters=frames.encounters,
                           observations=frames.observations).conformed()  # empty reports and conditions
    X = build_features(alone, _queries(frames, n=5))
    assert (X["imaging_reports"] == 0).all() and (X["charlson_index"] == 0).all()
