"""Performance as outcomes arrive: stored predictions joined with the outcomes known now, measured per model
version over rolling windows of prediction time, overall and by sex, age band, race and ethnicity.

A prediction's label follows its task's definition in `carecast.models.tasks` (`label_predictions`; a test
checks that both agree on every cohort row). A label is pending until the task's outcome window has been
observed; while pending, the predicted risks give the expected event rate. Thresholds are data
(monitoring/data/thresholds.toml, section [performance]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from carecast.errors import NotFoundError
from carecast.models import metrics as M
from carecast.models.registry import Registry, card_threshold
from carecast.models.tasks import TASKS
from carecast.monitoring.drift import MonitoringError, thresholds_file
from carecast.store import Store
from carecast.store.monitoring import (
    card_feedback_counts,
    data_end,
    outcomes_of_predicted_encounters,
    predictions_with_context,
)

RESOLVED, PENDING, INELIGIBLE = "resolved", "pending", "ineligible"
SUBGROUP_ATTRIBUTES = ("sex", "age_band", "race", "ethnicity")


@dataclass(frozen=True)
class PerformanceThresholds:
    window_days: float
    step_days: float
    min_outcomes: int
    min_subgroup_n: int
    subgroup_auroc_gap_alert: float
    observed_expected_low: float
    observed_expected_high: float


def default_thresholds() -> PerformanceThresholds:
    return PerformanceThresholds(**thresholds_file()["performance"])


# -- labels ----------------------------------------------------------------------------------------------------

def _first(outcomes: pd.DataFrame, kinds: tuple[str, ...], encounter_ids: pd.Series) -> pd.DatetimeIndex:
    rows = outcomes[outcomes["kind"].isin(kinds)].dropna(subset=["encounter_id"])
    first = rows.groupby(rows["encounter_id"].astype(np.int64))["occurred_at"].min()
    ids = encounter_ids.fillna(-1).astype(np.int64)
    return pd.DatetimeIndex(pd.to_datetime(first.reindex(ids).to_numpy(), utc=True))


def label_predictions(predictions: pd.DataFrame, outcomes: pd.DataFrame, task: str, end: datetime | pd.Timestamp
                      ) -> pd.DataFrame:
    """`label` (1, 0, NaN while pending or ineligible) and `label_status` (resolved | pending | ineligible)
    of each prediction, from the outcomes known at `end`.

    `predictions` needs encounter_id, data_time, admitted_at, discharged_at, disposition; `outcomes` needs
    encounter_id, kind, occurred_at. Ineligible: the prediction came after its outcome (or, for readmission,
    the stay ended in death), so the task would never have scored it."""
    if task not in TASKS:
        raise MonitoringError(f"unknown task {task}; choose one of {', '.join(TASKS)}")
    end = pd.Timestamp(end)
    n = len(predictions)
    t = pd.DatetimeIndex(pd.to_datetime(predictions["data_time"], utc=True))
    admitted = pd.DatetimeIndex(pd.to_datetime(predictions["admitted_at"], utc=True))
    discharged = pd.DatetimeIndex(pd.to_datetime(predictions["discharged_at"], utc=True))
    enc = predictions["encounter_id"]
    label = np.full(n, np.nan)
    status = np.full(n, PENDING, dtype=object)
    no_stay = enc.isna().to_numpy()

    def settle(mask: np.ndarray, value: float) -> None:
        todo = mask & (status == PENDING)
        label[todo] = value
        status[todo] = RESOLVED

    def exclude(mask: np.ndarray) -> None:
        status[mask & (status == PENDING)] = INELIGIBLE

    exclude(no_stay)
    if task == "deterioration_24h":
        horizon = TASKS[task].horizon or pd.Timedelta(hours=24)
        event = _first(outcomes, ("icu_transfer", "death"), enc)
        has = ~event.isna()
        exclude(np.asarray(has & (event <= t)))
        settle(np.asarray(has & (event <= t + horizon)), 1.0)
        settle(np.asarray(t + horizon <= end), 0.0)
    elif task == "inhospital_mortality":
        death = _first(outcomes, ("death",), enc)
        has = ~death.isna()
        exclude(np.asarray(has & (death <= t)))
        settle(np.asarray(has), 1.0)
        settle(np.asarray(~discharged.isna()), 0.0)  # discharged alive
    elif task == "readmission_30d":
        horizon = TASKS[task].horizon or pd.Timedelta(days=30)
        exclude((predictions["disposition"] == "exp").to_numpy())
        readmit = _first(outcomes, ("readmission",), enc)
        out = ~discharged.isna()
        settle(np.asarray(out & ~readmit.isna() & (readmit <= discharged + horizon)), 1.0)
        settle(np.asarray(out & (discharged + horizon <= end)), 0.0)
    else:  # long_stay_7d
        limit = admitted + pd.Timedelta(getattr(TASKS[task], "threshold", pd.Timedelta(days=7)))
        out = ~discharged.isna()
        settle(np.asarray(out & (discharged > limit)), 1.0)
        settle(np.asarray(out), 0.0)
        settle(np.asarray(limit <= end), 1.0)  # still in hospital past the limit
    return pd.DataFrame({"label": label, "label_status": status}, index=predictions.index)


# -- measuring -------------------------------------------------------------------------------------------------

def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _attributes(rows: pd.DataFrame) -> pd.DataFrame:
    age = (pd.DatetimeIndex(rows["data_time"]) - pd.DatetimeIndex(rows["birth_date"])).total_seconds() / (
        365.25 * 86400)
    return pd.DataFrame({"sex": rows["sex"].to_numpy(), "age_band": M.age_band(np.asarray(age)),
                         "race": rows["race"].to_numpy(), "ethnicity": rows["ethnicity"].to_numpy()})


def measure(rows: pd.DataFrame, threshold: float | None, th: PerformanceThresholds, *, n_boot: int = 0,
            seed: int = 0) -> dict[str, Any]:
    """Measures of one set of labelled predictions (columns risk, label, label_status, patient_id, data_time,
    birth_date, sex, race, ethnicity): counts, pending share and expected events, realised discrimination and
    calibration, PPV at `threshold`, subgroups and their AUROC gaps, and the alerts these raise."""
    risk = rows["risk"].to_numpy(np.float64)
    status = rows["label_status"].to_numpy()
    resolved, pending = status == RESOLVED, status == PENDING
    eligible = resolved | pending
    y = rows["label"].to_numpy(np.float64)[resolved]
    p = risk[resolved]
    events = int(y.sum())
    out: dict[str, Any] = {
        "n": int(eligible.sum()), "n_resolved": int(resolved.sum()), "n_pending": int(pending.sum()),
        "n_ineligible": int((status == INELIGIBLE).sum()),
        "pending_share": _finite(pending.sum() / eligible.sum()) if eligible.any() else None,
        "expected_event_rate": _finite(float(risk[eligible].mean())) if eligible.any() else None,
        "expected_events_pending": float(risk[pending].sum()),
        "events": events, "observed_event_rate": _finite(float(y.mean())) if len(y) else None,
        "expected_event_rate_resolved": _finite(float(p.mean())) if len(p) else None,
        "observed_expected": _finite(events / p.sum()) if len(p) and p.sum() > 0 else None,
        "auroc": None, "auroc_ci_low": None, "auroc_ci_high": None, "auprc": None, "brier": None,
        "calibration_slope": None, "calibration_intercept": None,
        "threshold": threshold, "flagged": None, "ppv": None, "sensitivity": None,
        "subgroups": {}, "subgroup_auroc_gaps": {}, "alerts": [],
    }
    enough = min(events, len(y) - events) >= th.min_outcomes
    if enough:
        groups = rows["patient_id"].to_numpy()[resolved]
        m = M.binary_metrics(y, p, groups, n_boot=n_boot, seed=seed)
        out.update({"auroc": _finite(m["auroc"]["value"]), "auroc_ci_low": _finite(m["auroc"].get("ci_low")),
                    "auroc_ci_high": _finite(m["auroc"].get("ci_high")), "auprc": _finite(m["auprc"]["value"]),
                    "brier": _finite(m["brier"]["value"]),
                    "calibration_slope": _finite(m["calibration_slope"]["value"]),
                    "calibration_intercept": _finite(m["calibration_intercept"]["value"])})
        oe = out["observed_expected"]
        if oe is not None and not th.observed_expected_low <= oe <= th.observed_expected_high:
            out["alerts"].append({"kind": "calibration", "detail": f"observed/expected events {oe:.2f} outside "
                                  f"[{th.observed_expected_low}, {th.observed_expected_high}]"})
        sub = M.subgroup_metrics(y, p, _attributes(rows[resolved]), min_n=th.min_subgroup_n, groups=groups,
                                 n_boot=n_boot, seed=seed)
        out["subgroups"] = sub
        for attribute, levels in sub.items():
            aucs = {lv: v["auroc"] for lv, v in levels.items() if not v.get("too_small") and lv != "unknown"
                    and math.isfinite(v.get("auroc", math.nan))
                    and min(v["prevalence"] * v["n"], (1 - v["prevalence"]) * v["n"]) >= th.min_outcomes}
            if len(aucs) < 2:
                continue
            best, worst = max(aucs, key=aucs.__getitem__), min(aucs, key=aucs.__getitem__)
            gap = aucs[best] - aucs[worst]
            out["subgroup_auroc_gaps"][attribute] = {"gap": gap, "highest": best, "lowest": worst}
            if gap > th.subgroup_auroc_gap_alert:
                out["alerts"].append({"kind": "subgroup_gap", "detail": f"{attribute}: AUROC {aucs[best]:.3f} "
                                      f"({best}) vs {aucs[worst]:.3f} ({worst}), gap {gap:.3f} > "
                                      f"{th.subgroup_auroc_gap_alert}"})
    if threshold is not None and len(y):
        flagged = p >= threshold
        out["flagged"] = int(flagged.sum())
        out["ppv"] = _finite(y[flagged].mean()) if flagged.any() else None
        out["sensitivity"] = _finite(y[flagged].sum() / events) if events else None
    return out


def rolling_windows(first: pd.Timestamp, end: pd.Timestamp, th: PerformanceThresholds
                    ) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """(start, end] windows of `window_days` ending at `end`, `end - step`, ... while they still hold data
    after `first`; oldest first."""
    width, step = pd.Timedelta(days=th.window_days), pd.Timedelta(days=th.step_days)
    if width <= pd.Timedelta(0) or step <= pd.Timedelta(0):
        raise MonitoringError("window_days and step_days must be positive")
    out = []
    stop = end
    while stop >= first:
        out.append((stop - width, stop))
        stop = stop - step
    return out[::-1]


@dataclass(frozen=True)
class PerformanceReport:
    task: str
    as_of: datetime | None
    thresholds: PerformanceThresholds
    models: list[dict[str, Any]]
    feedback: dict[str, Any]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """Alerts of the latest window of each live (not shadow) model version."""
        found = []
        for model in self.models:
            if model["shadow"] or not model["windows"]:
                continue
            latest = model["windows"][-1]
            if latest["end"] == (None if self.as_of is None else self.as_of.isoformat()):
                found += [{**a, "model_version": model["model_version"]} for a in latest["alerts"]]
        return found

    @property
    def status(self) -> str:
        if not self.models:
            return "no_predictions"
        return "alert" if self.alerts else "ok"

    def lines(self) -> list[str]:
        """A plain-text summary: the latest window of each model version, the alerts, card feedback."""
        as_of = "-" if self.as_of is None else self.as_of.isoformat(timespec="minutes")
        out = [f"{self.task} as of {as_of}: {self.status.upper()} (windows of {self.thresholds.window_days:g} days)"]
        for model in self.models:
            if not model["windows"]:
                continue
            w = model["windows"][-1]
            tag = " (shadow)" if model["shadow"] else ""
            out.append(f"  model {model['model_version']}{tag}, window ending {w['end'][:16]}: {w['n']} predictions, "
                       f"{_pct(w['pending_share'])} pending, expected event rate {_pct(w['expected_event_rate'])}")
            out.append(f"    resolved {w['n_resolved']}: events {w['events']}, "
                       f"observed {_pct(w['observed_event_rate'])} vs expected "
                       f"{_pct(w['expected_event_rate_resolved'])} (O/E {_num(w['observed_expected'])}),"
                       f" AUROC {_num(w['auroc'])}, calibration slope {_num(w['calibration_slope'])}, "
                       f"PPV at {_num(w['threshold'])} {_pct(w['ppv'])}")
            for attribute, gap in w["subgroup_auroc_gaps"].items():
                out.append(f"    {attribute}: AUROC gap {gap['gap']:.3f} ({gap['highest']} vs {gap['lowest']})")
        for alert in self.alerts:
            out.append(f"  ALERT {alert['kind']} (model {alert['model_version']}): {alert['detail']}")
        fb = self.feedback
        out.append(f"  CDS card feedback: {fb['accepted']} accepted, {fb['overridden']} overridden "
                   f"(override share {_pct(fb['override_share'])})")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "as_of": None if self.as_of is None else self.as_of.isoformat(),
                "status": self.status, "alerts": self.alerts, "thresholds": asdict(self.thresholds),
                "feedback": self.feedback, "models": self.models}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _feedback(counts: Mapping[str, int]) -> dict[str, Any]:
    accepted, overridden = int(counts.get("accepted", 0)), int(counts.get("overridden", 0))
    total = accepted + overridden
    return {"accepted": accepted, "overridden": overridden,
            "override_share": overridden / total if total else None}


def evaluate(predictions: pd.DataFrame, outcomes: pd.DataFrame, task: str, end: datetime,
             thresholds_by_version: Mapping[str, float | None], th: PerformanceThresholds, *, n_boot: int = 0,
             seed: int = 0) -> list[dict[str, Any]]:
    """Per model version (and shadow flag), the measures of each rolling window (pure: no store)."""
    if predictions.empty:
        return []
    labelled = predictions.join(label_predictions(predictions, outcomes, task, end))
    end_ts = pd.Timestamp(end)
    models = []
    for (version, shadow), rows in labelled.groupby(["model_version", "shadow"], sort=True):
        windows = []
        times = pd.DatetimeIndex(rows["data_time"])
        for start, stop in rolling_windows(times.min(), end_ts, th):
            inside = rows[np.asarray((times > start) & (times <= stop))]
            if inside.empty:
                continue
            measured = measure(inside, thresholds_by_version.get(str(version)), th, n_boot=n_boot, seed=seed)
            windows.append({"start": start.isoformat(), "end": stop.isoformat(), **measured})
        models.append({"model_version": str(version), "shadow": bool(shadow),
                       "threshold": thresholds_by_version.get(str(version)), "windows": windows})
    return models


def check_performance(store: Store, registry: Registry | None, task: str, *, until: datetime | None = None,
                      thresholds: PerformanceThresholds | None = None, n_boot: int = 0,
                      seed: int = 0) -> PerformanceReport:
    """Realised performance of the task's stored predictions, as of `until` (by default where the data end)."""
    if task not in TASKS:
        raise MonitoringError(f"unknown task {task}; choose one of {', '.join(TASKS)}")
    th = thresholds or default_thresholds()
    end = until or data_end(store.engine)
    if end is None:
        return PerformanceReport(task=task, as_of=None, thresholds=th, models=[], feedback=_feedback({}))
    first_window = (pd.Timestamp(end) - pd.Timedelta(days=th.window_days)).to_pydatetime()
    # Every prediction made so far: the older windows show the trend.
    predictions = predictions_with_context(store.engine, store.keyring, task, until=end)
    outcomes = outcomes_of_predicted_encounters(store.engine, task, until=end)
    outcomes = outcomes[outcomes["occurred_at"] <= pd.Timestamp(end)]
    by_version: dict[str, float | None] = {}
    for version in predictions["model_version"].unique():
        try:
            by_version[str(version)] = card_threshold(registry.card(task, str(version))) if registry else None
        except NotFoundError:
            by_version[str(version)] = None  # a model no longer in the registry: no threshold, no PPV
    models = evaluate(predictions, outcomes, task, end, by_version, th, n_boot=n_boot, seed=seed)
    feedback = _feedback(card_feedback_counts(store.engine, since=first_window, until=end))
    return PerformanceReport(task=task, as_of=end, thresholds=th, models=models, feedback=feedback)

