"""Outcome tasks: which moments are scored (the cohort) and what counts as the outcome (the label).

Each task turns ClinicalFrames into a cohort table with one row per prediction: patient_id,
encounter_id, t (when the prediction is made), label (0/1), event_at (when the outcome happened,
for lead times), split_time (what the time split orders by). Predictions whose outcome window is
not fully observed yet (censored) are left out of training data, never labelled negative.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import pandas as pd

from carecast.domain.frames import ClinicalFrames

COHORT_COLUMNS = ["patient_id", "encounter_id", "t", "label", "event_at", "split_time"]
ICU_PATTERN = r"(?i)\b(?:[MSCNP]?ICU)\b|intensive care|critical care"
INPATIENT = ("IMP", "ACUTE", "NONAC", "OBSENC")


def _data_end(frames: ClinicalFrames) -> pd.Timestamp:
    """The last moment the data describe: outcome windows ending after it are censored."""
    times = [frames.observations["effective_at"].max(), frames.encounters["admitted_at"].max(),
             frames.encounters["discharged_at"].max(), frames.outcomes["occurred_at"].max()]
    valid = [t for t in times if pd.notna(t)]
    return max(valid) if valid else pd.Timestamp.now(tz="UTC")


def first_event(frames: ClinicalFrames, kinds: tuple[str, ...]) -> pd.Series:
    """Earliest time of any of `kinds` per encounter (death also counts when not attached to one)."""
    out = frames.outcomes[frames.outcomes["kind"].isin(kinds)].dropna(subset=["encounter_id"])
    return out.groupby(out["encounter_id"].astype(np.int64))["occurred_at"].min()


class Task(ABC):
    """A prediction task. Subclasses declare `name`, `description` and how to build the cohort."""

    name: ClassVar[str]
    description: ClassVar[str]
    horizon: ClassVar[pd.Timedelta | None] = None

    @abstractmethod
    def cohort(self, frames: ClinicalFrames) -> pd.DataFrame:
        """One row per prediction, columns COHORT_COLUMNS."""

    @staticmethod
    def _frame(rows: pd.DataFrame) -> pd.DataFrame:
        out = rows[COHORT_COLUMNS].reset_index(drop=True)
        out["label"] = out["label"].astype(np.int64)
        out["encounter_id"] = out["encounter_id"].astype(np.int64)
        return out


class Deterioration24h(Task):
    """ICU transfer or death within the next 24 h, scored at each new set of bedside vital signs.

    Scored while the patient is on a ward: sets taken after an ICU transfer or death, or after
    discharge, are not scored. A set whose next 24 h run past the end of the data is censored.

    >>> from carecast.models.tasks import TASKS
    >>> TASKS["deterioration_24h"].horizon
    Timedelta('1 days 00:00:00')
    """

    name = "deterioration_24h"
    description = "ICU transfer or death within 24 h of a set of vital signs"
    horizon = pd.Timedelta(hours=24)

    def cohort(self, frames: ClinicalFrames) -> pd.DataFrame:
        obs = frames.observations
        sets = obs[obs["source"].isin(("fhir", "csv")) & obs["variable"].isin(
            ("heart_rate", "respiratory_rate", "systolic_bp", "spo2"))].dropna(subset=["encounter_id"])
        rows = sets.drop_duplicates(["encounter_id", "effective_at"])[["patient_id", "encounter_id", "effective_at"]]
        rows = rows.rename(columns={"effective_at": "t"})
        rows["encounter_id"] = rows["encounter_id"].astype(np.int64)
        enc = frames.encounters.set_index("encounter_id")
        rows = rows[rows["encounter_id"].isin(enc.index)]
        event = first_event(frames, ("icu_transfer", "death")).reindex(rows["encounter_id"]).to_numpy()
        rows["event_at"] = pd.to_datetime(event, utc=True)
        discharged = pd.to_datetime(enc["discharged_at"].reindex(rows["encounter_id"]).to_numpy(), utc=True)
        admitted = pd.to_datetime(enc["admitted_at"].reindex(rows["encounter_id"]).to_numpy(), utc=True)
        on_ward = (rows["event_at"].isna() | (rows["t"] < rows["event_at"])).to_numpy()
        in_stay = ((rows["t"] >= admitted) & (pd.isna(discharged) | (rows["t"] <= discharged))).to_numpy()
        rows = rows[on_ward & in_stay]
        horizon_end = rows["t"] + self.horizon
        rows["label"] = (rows["event_at"].notna() & (rows["event_at"] <= horizon_end)).astype(int)
        # Only sets whose whole 24 h are observed: keeping early positives but dropping late negatives
        # would inflate the outcome rate of the latest (test) period.
        rows = rows[horizon_end <= _data_end(frames)]
        rows["split_time"] = pd.to_datetime(enc["admitted_at"].reindex(rows["encounter_id"]).to_numpy(), utc=True)
        return self._frame(rows.sort_values(["split_time", "encounter_id", "t"], kind="stable"))


def _inpatient_stays(frames: ClinicalFrames) -> pd.DataFrame:
    enc = frames.encounters
    return enc[enc["encounter_class"].isin(INPATIENT)].copy()


class InHospitalMortality(Task):
    """Death before discharge, predicted 24 h after admission for patients still in hospital.

    >>> from carecast.models.tasks import TASKS
    >>> TASKS["inhospital_mortality"].description
    'death during the stay, scored 24 h after admission'
    """

    name = "inhospital_mortality"
    description = "death during the stay, scored 24 h after admission"
    delay = pd.Timedelta(hours=24)

    def cohort(self, frames: ClinicalFrames) -> pd.DataFrame:
        stays = _inpatient_stays(frames)
        stays["t"] = stays["admitted_at"] + self.delay
        death = first_event(frames, ("death",)).reindex(stays["encounter_id"]).to_numpy()
        stays["event_at"] = pd.to_datetime(death, utc=True)
        alive_at_t = stays["event_at"].isna() | (stays["event_at"] > stays["t"])
        still_in = stays["discharged_at"].isna() | (stays["discharged_at"] > stays["t"])
        stays = stays[alive_at_t & still_in]
        stays["label"] = stays["event_at"].notna().astype(int)
        stays = stays[stays["discharged_at"].notna()]  # open stays are censored, whatever has happened so far
        stays["split_time"] = stays["admitted_at"]
        return self._frame(stays.sort_values(["split_time", "encounter_id"], kind="stable"))


class Readmission30d(Task):
    """Unplanned readmission within 30 days, predicted at discharge of an inpatient stay (alive).

    >>> from carecast.models.tasks import TASKS
    >>> TASKS["readmission_30d"].horizon
    Timedelta('30 days 00:00:00')
    """

    name = "readmission_30d"
    description = "readmission within 30 days, scored at discharge"
    horizon = pd.Timedelta(days=30)

    def cohort(self, frames: ClinicalFrames) -> pd.DataFrame:
        stays = _inpatient_stays(frames)
        stays = stays[stays["discharged_at"].notna() & (stays["disposition"] != "exp")]
        stays["t"] = stays["discharged_at"]
        readmit = first_event(frames, ("readmission",)).reindex(stays["encounter_id"]).to_numpy()
        stays["event_at"] = pd.to_datetime(readmit, utc=True)
        stays["label"] = (stays["event_at"].notna() & (stays["event_at"] <= stays["t"] + self.horizon)).astype(int)
        stays = stays[stays["t"] + self.horizon <= _data_end(frames)]  # the whole 30 days observed
        stays["split_time"] = stays["admitted_at"]
        return self._frame(stays.sort_values(["split_time", "encounter_id"], kind="stable"))


class LongStay7d(Task):
    """A length of stay over 7 days, predicted 24 h after admission.

    >>> from carecast.models.tasks import TASKS
    >>> TASKS["long_stay_7d"].name
    'long_stay_7d'
    """

    name = "long_stay_7d"
    description = "length of stay over 7 days, scored 24 h after admission"
    delay = pd.Timedelta(hours=24)
    threshold = pd.Timedelta(days=7)

    def cohort(self, frames: ClinicalFrames) -> pd.DataFrame:
        stays = _inpatient_stays(frames)
        stays["t"] = stays["admitted_at"] + self.delay
        stays = stays[stays["discharged_at"].isna() | (stays["discharged_at"] > stays["t"])]
        los_end = stays["admitted_at"] + self.threshold
        stays["label"] = (stays["discharged_at"].isna() | (stays["discharged_at"] > los_end)).astype(int)
        end = _data_end(frames)
        observed = stays["discharged_at"].notna() | (los_end <= end)  # open stays shorter than 7 d: censored
        stays = stays[observed]
        stays["event_at"] = (stays["admitted_at"] + self.threshold).where(stays["label"] == 1)
        stays["split_time"] = stays["admitted_at"]
        return self._frame(stays.sort_values(["split_time", "encounter_id"], kind="stable"))


TASKS: dict[str, Task] = {t.name: t for t in (Deterioration24h(), InHospitalMortality(), Readmission30d(),
                                              LongStay7d())}


def split_by_patient_and_time(cohort: pd.DataFrame, test_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test): test holds the latest admissions (by split_time); every patient
    with any row in test is removed from train, so no patient is on both sides."""
    if cohort.empty:
        return np.zeros(0, bool), np.zeros(0, bool)
    cutoff = cohort["split_time"].quantile(1 - test_fraction)
    test = (cohort["split_time"] > cutoff).to_numpy()
    test_patients = set(cohort.loc[test, "patient_id"])
    train = ~test & ~cohort["patient_id"].isin(test_patients).to_numpy()
    return train, test
