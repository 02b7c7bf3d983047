"""Input drift: do the features of recent predictions still look like the data the model was trained on?

For each feature of a model card's reference distributions (`carecast.models.training.reference_distributions`),
recent feature vectors are binned the same way and compared:

- population stability index (PSI) = sum over bins of (recent - reference) * ln(recent / reference), over the
  present values of a numeric feature (the reference's quantile bins) or over the levels of a categorical one
  ("missing" is a level there); empty bins count as `share_floor`;
- the change in the share of missing values.

Recent feature vectors are built by the training feature builder at the task's scoring moments within a window
(the moments `carecast.models.tasks` scores, without waiting for outcomes: drift needs no labels). Thresholds are
data (monitoring/data/thresholds.toml).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from carecast.domain.frames import ClinicalFrames
from carecast.errors import CareCastError
from carecast.features.builder import BEDSIDE_SOURCES, build_features
from carecast.features.spec import FeatureSpec, default_spec
from carecast.models.registry import Registry
from carecast.models.tasks import INPATIENT, TASKS, first_event
from carecast.store import Store
from carecast.store.frames import load_frames
from carecast.store.monitoring import data_end, patients_in_hospital

ALERT_EXIT_CODE = 7  # `carecast monitor ...` exits with this when an alert fires (warnings exit 0)
LEVELS = ("ok", "warn", "alert")
VITAL_SET_VARIABLES = ("heart_rate", "respiratory_rate", "systolic_bp", "spo2")


class MonitoringError(CareCastError):
    """Monitoring cannot run: an unknown task, or a model card without reference distributions."""

    http_status = 400
    exit_code = 2


@dataclass(frozen=True)
class DriftThresholds:
    psi_warn: float
    psi_alert: float
    missing_warn: float
    missing_alert: float
    min_rows: int
    min_patients: int
    share_floor: float


@cache
def thresholds_file() -> dict[str, Any]:
    text = resources.files("carecast.monitoring").joinpath("data", "thresholds.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def default_thresholds() -> DriftThresholds:
    return DriftThresholds(**thresholds_file()["drift"])


# -- the moments each task scores ------------------------------------------------------------------------------

def _last_moment(frames: ClinicalFrames) -> pd.Timestamp | None:
    times = [frames.observations["effective_at"].max(), frames.encounters["admitted_at"].max(),
             frames.encounters["discharged_at"].max(), frames.outcomes["occurred_at"].max()]
    valid = [t for t in times if pd.notna(t)]
    return max(valid) if valid else None


def _vital_sets(frames: ClinicalFrames) -> pd.DataFrame:
    obs = frames.observations
    sets = obs[obs["source"].isin(BEDSIDE_SOURCES) & obs["variable"].isin(VITAL_SET_VARIABLES)]
    rows = sets.dropna(subset=["encounter_id"]).drop_duplicates(["encounter_id", "effective_at"])
    rows = rows[["patient_id", "encounter_id", "effective_at"]].rename(columns={"effective_at": "t"})
    rows["encounter_id"] = rows["encounter_id"].astype(np.int64)
    enc = frames.encounters.set_index("encounter_id")
    rows = rows[rows["encounter_id"].isin(enc.index)]
    event = pd.to_datetime(first_event(frames, ("icu_transfer", "death")).reindex(rows["encounter_id"]).to_numpy(),
                           utc=True)
    admitted = pd.to_datetime(enc["admitted_at"].reindex(rows["encounter_id"]).to_numpy(), utc=True)
    discharged = pd.to_datetime(enc["discharged_at"].reindex(rows["encounter_id"]).to_numpy(), utc=True)
    t = pd.DatetimeIndex(rows["t"])
    on_ward = pd.isna(event) | (t < event)
    in_stay = (t >= admitted) & (pd.isna(discharged) | (t <= discharged))
    return rows[np.asarray(on_ward & in_stay)]


def _day_one(frames: ClinicalFrames, *, alive: bool) -> pd.DataFrame:
    delay = pd.Timedelta(hours=24)
    stays = frames.encounters[frames.encounters["encounter_class"].isin(INPATIENT)].copy()
    stays["t"] = stays["admitted_at"] + delay
    keep = stays["discharged_at"].isna() | (stays["discharged_at"] > stays["t"])
    if alive:
        death = pd.to_datetime(first_event(frames, ("death",)).reindex(stays["encounter_id"]).to_numpy(), utc=True)
        keep &= np.asarray(pd.isna(death) | (death > pd.DatetimeIndex(stays["t"])))
    end = _last_moment(frames)
    if end is not None:
        keep &= stays["t"] <= end  # the moment has come
    return stays[keep]


def _discharges(frames: ClinicalFrames) -> pd.DataFrame:
    stays = frames.encounters[frames.encounters["encounter_class"].isin(INPATIENT)].copy()
    stays = stays[stays["discharged_at"].notna() & (stays["disposition"] != "exp")]
    stays["t"] = stays["discharged_at"]
    return stays


def scoring_moments(frames: ClinicalFrames, task: str) -> pd.DataFrame:
    """(patient_id, encounter_id, t) of every moment `task` scores in the frames: the task's cohort before
    its outcome window is known, so the latest moments are kept (a cohort leaves them out as censored).

    deterioration_24h: each set of bedside vital signs on the ward during a stay; inhospital_mortality and
    long_stay_7d: 24 h after an inpatient admission, while still in hospital (and alive); readmission_30d:
    each discharge of an inpatient stay, alive."""
    if task == "deterioration_24h":
        rows = _vital_sets(frames)
    elif task == "inhospital_mortality":
        rows = _day_one(frames, alive=True)
    elif task == "long_stay_7d":
        rows = _day_one(frames, alive=False)
    elif task == "readmission_30d":
        rows = _discharges(frames)
    else:
        raise MonitoringError(f"unknown task {task}; choose one of {', '.join(TASKS)}")
    out = rows[["patient_id", "encounter_id", "t"]].astype({"patient_id": np.int64, "encounter_id": np.int64})
    return out.sort_values(["t", "encounter_id"], kind="stable").reset_index(drop=True)


def recent_features(frames: ClinicalFrames, task: str, start: datetime | None, end: datetime | None,
                    spec: FeatureSpec | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The task's scoring moments with start < t <= end, and their feature matrix (the training builder's)."""
    moments = scoring_moments(frames, task)
    keep = np.ones(len(moments), dtype=bool)
    if start is not None:
        keep &= (moments["t"] > pd.Timestamp(start)).to_numpy()
    if end is not None:
        keep &= (moments["t"] <= pd.Timestamp(end)).to_numpy()
    moments = moments[keep].reset_index(drop=True)
    return moments, build_features(frames, moments, spec or default_spec())


# -- comparing with the reference ------------------------------------------------------------------------------

def population_stability_index(reference: np.ndarray | list[float], recent: np.ndarray | list[float],
                               floor: float = 1e-4) -> float:
    """PSI of two share vectors over the same bins; shares below `floor` count as `floor`.

    >>> round(population_stability_index([0.5, 0.5], [0.5, 0.5]), 6)
    0.0
    >>> round(population_stability_index([0.5, 0.5], [0.9, 0.1]), 3)
    0.879
    """
    e = np.maximum(np.asarray(reference, np.float64), floor)
    a = np.maximum(np.asarray(recent, np.float64), floor)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str
    psi: float | None  # None: no present value on one side, nothing to compare
    reference_missing: float
    recent_missing: float
    level: str
    reasons: tuple[str, ...] = ()

    @property
    def missing_change(self) -> float:
        return self.recent_missing - self.reference_missing

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        out["missing_change"] = self.missing_change
        return out


def _stamp(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="minutes")


def _level(value: float | None, warn: float, alert: float) -> str:
    if value is None or math.isnan(value):
        return "ok"
    return "alert" if value >= alert else "warn" if value >= warn else "ok"


def _worst(levels: list[str]) -> str:
    return max(levels, key=LEVELS.index, default="ok")


def _numeric_shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    counts = np.bincount(np.searchsorted(np.asarray(edges, np.float64), values, side="right"),
                         minlength=len(edges) + 1)
    return counts / counts.sum()


def feature_drift(name: str, reference: dict[str, Any], column: pd.Series, thresholds: DriftThresholds) -> FeatureDrift:
    """One feature's PSI and missing-share change against its reference entry."""
    ref_missing = float(reference.get("missing_share", 0.0))
    psi: float | None
    if reference["kind"] == "numeric":
        values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
        present = values[~np.isnan(values)]
        recent_missing = float(np.isnan(values).mean()) if len(values) else 0.0
        shares = reference.get("shares") or []
        psi = (population_stability_index(shares, _numeric_shares(present, reference["edges"]), thresholds.share_floor)
               if len(shares) and len(present) else None)
    else:
        series = column.astype(object).where(column.notna(), "missing").astype(str)
        recent = series.value_counts(normalize=True)
        ref_shares = {str(k): float(v) for k, v in reference["shares"].items()}
        levels = sorted(set(ref_shares) | set(recent.index))
        recent_missing = float((series == "missing").mean()) if len(series) else 0.0
        psi = population_stability_index([ref_shares.get(lv, 0.0) for lv in levels],
                                         [float(recent.get(lv, 0.0)) for lv in levels],
                                         thresholds.share_floor) if len(series) else None
    change = recent_missing - ref_missing
    psi_level = _level(psi, thresholds.psi_warn, thresholds.psi_alert)
    missing_level = _level(abs(change), thresholds.missing_warn, thresholds.missing_alert)
    reasons = []
    if psi_level != "ok":
        reasons.append(f"PSI {psi:.3f} (warn {thresholds.psi_warn}, alert {thresholds.psi_alert})")
    if missing_level != "ok":
        reasons.append(f"missing share {ref_missing:.1%} -> {recent_missing:.1%} "
                       f"(warn ±{thresholds.missing_warn:.0%}, alert ±{thresholds.missing_alert:.0%})")
    return FeatureDrift(feature=name, kind=str(reference["kind"]), psi=psi, reference_missing=ref_missing,
                        recent_missing=recent_missing, level=_worst([psi_level, missing_level]), reasons=tuple(reasons))


@dataclass(frozen=True)
class DriftReport:
    """The drift of each feature and the verdict. `status`: ok | warn | alert | insufficient_data."""

    task: str
    model_version: str | None
    window_start: datetime | None
    window_end: datetime | None
    n_rows: int
    n_patients: int
    status: str
    thresholds: DriftThresholds
    features: list[FeatureDrift] = field(default_factory=list)

    @property
    def flagged(self) -> list[FeatureDrift]:
        """Features over a warning or alert threshold, worst first (alerts, then by PSI)."""
        over = [f for f in self.features if f.level != "ok"]
        return sorted(over, key=lambda f: (-LEVELS.index(f.level), -(f.psi or 0.0), -abs(f.missing_change)))

    @property
    def alerted(self) -> bool:
        return self.status == "alert"

    def lines(self, *, all_features: bool = False) -> list[str]:
        """A plain-text summary: the verdict, then one line per flagged feature (or every feature)."""
        window = ("no data" if self.window_end is None else
                  f"{_stamp(self.window_start)} to {_stamp(self.window_end)}")
        out = [f"{self.task} (model {self.model_version}): {window}, {self.n_rows} predictions of "
               f"{self.n_patients} patients, {len(self.features)} features: {self.status.upper()}"]
        if self.status == "insufficient_data":
            out.append(f"  too little data to judge (needs {self.thresholds.min_rows} predictions of "
                       f"{self.thresholds.min_patients} patients)")
        for f in (self.features if all_features else self.flagged):
            psi = "-" if f.psi is None else f"{f.psi:.3f}"
            out.append(f"  {f.level:<5} {f.feature:<32} PSI {psi:>6}  missing {f.reference_missing:6.1%} -> "
                       f"{f.recent_missing:6.1%}")
        return out

    def to_dict(self, *, all_features: bool = False) -> dict[str, Any]:
        return {
            "task": self.task, "model_version": self.model_version,
            "window_start": None if self.window_start is None else self.window_start.isoformat(),
            "window_end": None if self.window_end is None else self.window_end.isoformat(),
            "n_rows": self.n_rows, "n_patients": self.n_patients, "status": self.status,
            "thresholds": asdict(self.thresholds), "n_features": len(self.features),
            "flagged": [f.to_dict() for f in self.flagged],
            **({"features": [f.to_dict() for f in self.features]} if all_features else {}),
        }


def compare_with_reference(reference: dict[str, Any], X: pd.DataFrame, *, task: str = "", n_patients: int | None = None,
                           model_version: str | None = None, window_start: datetime | None = None,
                           window_end: datetime | None = None,
                           thresholds: DriftThresholds | None = None) -> DriftReport:
    """Drift of every reference feature in the recent feature matrix X (pure: no store, no registry).

    Features of the reference that X lacks are reported as wholly missing. With fewer than `min_rows` rows
    or `min_patients` patients the status is insufficient_data (features are still measured)."""
    th = thresholds or default_thresholds()
    n_rows = len(X)
    n_pat = n_rows if n_patients is None else n_patients
    features = []
    for name, ref in reference.items():
        column = X[name] if name in X.columns else pd.Series([None] * n_rows, dtype=object)
        features.append(feature_drift(name, ref, column, th))
    if n_rows < th.min_rows or n_pat < th.min_patients:
        status = "insufficient_data"
    else:
        status = _worst([f.level for f in features])
    return DriftReport(task=task, model_version=model_version, window_start=window_start, window_end=window_end,
                       n_rows=n_rows, n_patients=n_pat, status=status, thresholds=th, features=features)


def check_frames(frames: ClinicalFrames, card: dict[str, Any], task: str, *, start: datetime | None = None,
                 end: datetime | None = None, thresholds: DriftThresholds | None = None) -> DriftReport:
    """Drift of the task's scoring moments in (start, end] of `frames` against the card's reference."""
    reference = card.get("reference")
    if not reference:
        raise MonitoringError(f"the model card of {task} has no reference distributions")
    moments, X = recent_features(frames, task, start, end)
    return compare_with_reference(reference, X, task=task, n_patients=int(moments["patient_id"].nunique()),
                                  model_version=card.get("version"), window_start=start, window_end=end,
                                  thresholds=thresholds)


def check_drift(store: Store, registry: Registry, task: str, *, since_hours: float = 168.0,
                until: datetime | None = None, model: str = "champion",
                thresholds: DriftThresholds | None = None) -> DriftReport:
    """Drift of the last `since_hours` of stored data (ending at `until`, by default where the data end)
    against the reference distributions of the task's `model` (champion by default)."""
    if task not in TASKS:
        raise MonitoringError(f"unknown task {task}; choose one of {', '.join(TASKS)}")
    if not since_hours > 0:
        raise MonitoringError("the window (since) must be a positive number of hours")
    card = registry.card(task, model)
    end = until or data_end(store.engine)
    th = thresholds or default_thresholds()
    if end is None:
        return DriftReport(task=task, model_version=card.get("version"), window_start=None, window_end=None, n_rows=0,
                           n_patients=0, status="insufficient_data", thresholds=th)
    start = end - timedelta(hours=since_hours)
    patients = patients_in_hospital(store.engine, start, end)
    frames = load_frames(store.engine, store.keyring, patient_ids=patients, until=end)
    return check_frames(frames, card, task, start=start, end=end, thresholds=th)


def with_thresholds(base: DriftThresholds | None = None, **changes: Any) -> DriftThresholds:
    """The default thresholds (or `base`) with some values changed, e.g. for a command-line override."""
    return replace(base or default_thresholds(), **changes)


__all__ = ["ALERT_EXIT_CODE", "DriftReport", "DriftThresholds", "FeatureDrift", "MonitoringError", "check_drift",
           "check_frames", "compare_with_reference", "default_thresholds", "feature_drift",
           "population_stability_index", "recent_features", "scoring_moments", "with_thresholds"]
