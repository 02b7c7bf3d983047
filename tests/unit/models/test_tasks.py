"""Outcome tasks: who is scored when, what the label is, what is censored, and the patient/time split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from carecast.domain.frames import ClinicalFrames
from carecast.models.tasks import TASKS, split_by_patient_and_time

T0 = pd.Timestamp("2026-01-05T00:00:00Z")


def H(hours: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=hours)


def _frames(long_follow_up: bool = False) -> ClinicalFrames:
    # Patient 1: on the ward, ICU transfer at 30 h. Patient 2: uneventful, discharged at 60 h.
    # Patient 3: admitted at 200 h, still in (data end ~ 210 h): late vitals are censored.
    encounters = pd.DataFrame({
        "encounter_id": [10, 20, 30, 21, 40], "patient_id": [1, 2, 3, 2, 4],
        "admitted_at": [T0, T0, H(200), H(80), T0],
        "discharged_at": [H(100), H(60), pd.NaT, H(190), H(800) if long_follow_up else H(200)],
        "unit": "Ward", "admission_type": "emergency", "encounter_class": "IMP",
        "disposition": ["home", "home", None, "exp", "home"]})
    vit_times = {10: [1, 5, 10, 20, 29, 35], 20: [2, 12, 24, 48], 30: [201, 205, 209], 21: [90, 150]}
    rows = [{"patient_id": int(encounters.set_index("encounter_id").loc[e, "patient_id"]), "encounter_id": e,
             "variable": "heart_rate", "value": 80.0, "effective_at": H(h), "source": "fhir"}
            for e, hours in vit_times.items() for h in hours]
    outcomes = pd.DataFrame({"patient_id": [1, 2, 2], "encounter_id": [10, 20, 21],
                             "kind": ["icu_transfer", "readmission", "death"],
                             "occurred_at": [H(30), H(80), H(190)]})
    return ClinicalFrames(encounters=encounters, observations=pd.DataFrame(rows), outcomes=outcomes).conformed()


def test_deterioration_labels_ward_sets_and_censors() -> None:
    cohort = TASKS["deterioration_24h"].cohort(_frames())
    by = {(r.encounter_id, r.t): r.label for r in cohort.itertuples()}
    # within 24 h before the transfer at 30 h: labelled 1; the set at 5 h is 25 h before: 0
    assert by[(10, H(10))] == 1 and by[(10, H(29))] == 1 and by[(10, H(5))] == 0
    assert (10, H(35)) not in by  # after the transfer: no longer on the ward
    assert all(by[(20, H(h))] == 0 for h in (2, 12, 24, 48))
    # patient 3's sets are within 24 h of the end of the data: censored, not negative
    assert not any(e == 30 for e, _ in by)
    assert list(cohort.columns) == ["patient_id", "encounter_id", "t", "label", "event_at", "split_time"]


def test_mortality_readmission_and_long_stay() -> None:
    frames = _frames()
    assert TASKS["readmission_30d"].cohort(frames).empty  # data end at 209 h: no 30-day window is complete
    frames = _frames(long_follow_up=True)
    mort = TASKS["inhospital_mortality"].cohort(frames).set_index("encounter_id")
    assert mort.loc[21, "label"] == 1 and mort.loc[20, "label"] == 0
    assert mort.loc[21, "t"] == H(80 + 24)
    assert 30 not in mort.index  # still in hospital: censored
    readm = TASKS["readmission_30d"].cohort(frames).set_index("encounter_id")
    assert readm.loc[20, "label"] == 1
    assert 21 not in readm.index  # died: not a discharge at risk of readmission
    long_stay = TASKS["long_stay_7d"].cohort(frames).set_index("encounter_id")
    assert long_stay.loc[10, "label"] == 0 and long_stay.loc[20, "label"] == 0  # 100 h and 60 h stays
    assert long_stay.loc[40, "label"] == 1  # 800 h > 7 days
    short = TASKS["long_stay_7d"].cohort(_frames())
    assert 30 not in set(short["encounter_id"])  # open for 9 h only: censored


def test_split_is_by_patient_and_time() -> None:
    rng = np.random.default_rng(0)
    cohort = pd.DataFrame({"patient_id": rng.integers(0, 50, 400), "encounter_id": 1, "t": T0, "label": 0,
                           "event_at": pd.NaT, "split_time": T0 + pd.to_timedelta(rng.integers(0, 1000, 400), "h")})
    train, test = split_by_patient_and_time(cohort)
    assert not set(cohort.loc[train, "patient_id"]) & set(cohort.loc[test, "patient_id"])
    assert cohort.loc[train, "split_time"].max() <= cohort.loc[test, "split_time"].min()
    assert 0.15 < test.mean() < 0.35
