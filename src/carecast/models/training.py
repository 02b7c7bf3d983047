"""Train and validate an outcome model: cohort -> features -> patient/time split -> candidates chosen
by grouped cross-validation -> Platt calibration -> validation report and model card.

Plain functions over ClinicalFrames; the command line and the retraining job call `train_task`.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.base import clone
from sklearn.model_selection import GroupKFold

import carecast
from carecast.domain.frames import ClinicalFrames
from carecast.errors import CareCastError
from carecast.features.builder import build_features
from carecast.features.scores import lace
from carecast.features.spec import FeatureSpec, default_spec
from carecast.models import metrics as M
from carecast.models.calibration import PlattCalibrated, fit_platt
from carecast.models.pipeline import candidates
from carecast.models.tasks import TASKS, Task, split_by_patient_and_time

Progress = Callable[[str], None]
MIN_POSITIVES = 10


class TrainingError(CareCastError):
    """The data cannot support training (too few rows or outcomes)."""

    exit_code = 6


@dataclass
class TrainingResult:
    task: str
    estimator: PlattCalibrated
    card: dict[str, Any]
    report: dict[str, Any]
    y_test: np.ndarray
    p_test: np.ndarray
    baselines_test: dict[str, np.ndarray] = field(default_factory=dict)


def reference_distributions(X: pd.DataFrame, numeric: list[str], categorical: list[str],
                            bins: int = 10) -> dict[str, Any]:
    """Per feature: quantile bin edges and shares (numeric) or level shares (categorical), and the
    share missing. Drift monitoring compares recent data with these."""
    out: dict[str, Any] = {}
    for col in numeric:
        values = pd.to_numeric(X[col], errors="coerce").to_numpy(np.float64)
        present = values[~np.isnan(values)]
        missing = float(np.isnan(values).mean()) if len(values) else 0.0
        if len(present) == 0:
            out[col] = {"kind": "numeric", "edges": [], "shares": [], "missing_share": missing}
            continue
        edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)))
        inner = edges[1:-1]
        counts = np.bincount(np.searchsorted(inner, present, side="right"), minlength=len(inner) + 1)
        out[col] = {"kind": "numeric", "edges": [float(e) for e in inner],
                    "shares": [float(c) for c in counts / counts.sum()], "missing_share": missing}
    for col in categorical:
        series = X[col].astype(object).where(X[col].notna(), "missing")
        shares = series.value_counts(normalize=True)
        out[col] = {"kind": "categorical", "shares": {str(k): float(v) for k, v in shares.items()},
                    "missing_share": float((series == "missing").mean())}
    return out


def snapshot_hash(cohort: pd.DataFrame, X: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(cohort[["patient_id", "encounter_id", "t", "label"]], index=False).values)
    h.update(pd.util.hash_pandas_object(X, index=False).values)
    return h.hexdigest()


def _patient_days(frames: ClinicalFrames, encounter_ids: np.ndarray) -> float:
    enc = frames.encounters.set_index("encounter_id").reindex(np.unique(encounter_ids))
    end = frames.observations["effective_at"].max()
    stop = enc["discharged_at"].fillna(end)
    days = (stop - enc["admitted_at"]).dt.total_seconds() / 86400
    return float(days.clip(lower=0).sum())


def _lace_scores(frames: ClinicalFrames, cohort: pd.DataFrame, X: pd.DataFrame) -> np.ndarray:
    enc = frames.encounters.set_index("encounter_id").reindex(cohort["encounter_id"])
    los = ((cohort["t"].to_numpy() - enc["admitted_at"].to_numpy()) / np.timedelta64(1, "D")).astype(float)
    emergent = (enc["admission_type"].to_numpy() == "emergency") | (enc["encounter_class"].to_numpy() == "EMER")
    charlson = X["charlson_index"].fillna(0).to_numpy()
    ed = X["ed_visits_prior"].fillna(0).to_numpy()
    return np.array([lace(max(float(d), 0.0), bool(e), int(c), int(v)).total
                     for d, e, c, v in zip(los, emergent, charlson, ed, strict=True)], dtype=np.float64)


def _attributes(X: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"sex": X["sex"].fillna("unknown").to_numpy(), "age_band": M.age_band(X["age"].to_numpy()),
                         "race": X["race"].fillna("unknown").to_numpy(),
                         "ethnicity": X["ethnicity"].fillna("unknown").to_numpy()})


def choose_threshold(table: list[dict[str, float]], alert_share: float) -> dict[str, float]:
    """The row whose share of flagged predictions is closest to the alert budget."""
    rows = [r for r in table if not np.isnan(r.get("flagged_share", np.nan))]
    return min(rows, key=lambda r: abs(r["flagged_share"] - alert_share)) if rows else {}


@dataclass
class FitResult:
    model: PlattCalibrated
    chosen: str
    cv_scores: dict[str, dict[str, float]]
    slope: float
    intercept: float
    p_test: np.ndarray
    metrics: dict[str, dict[str, float]]
    baselines: dict[str, dict[str, Any]]
    fit_seconds: float


def fit_and_validate(X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, train: np.ndarray, test: np.ndarray,
                     numeric: list[str], categorical: list[str], *, baselines: dict[str, np.ndarray] | None = None,
                     seed: int = 0, folds: int = 3, n_boot: int = 500, cv_max_rows: int = 40_000,
                     progress: Progress | None = None) -> FitResult:
    """Candidates compared by grouped cross-validation on the training rows, the best one calibrated
    on its out-of-fold predictions and refitted on all training rows, then measured on the test rows
    beside the baseline scores (same rows, paired bootstrap for the differences).

    With more than `cv_max_rows` training rows, model selection and calibration use a seeded sample of
    whole patients of about that size (ranking two candidates does not need every row); the chosen
    model is then fitted on all training rows."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    X_all, y_all = X[train], y[train]
    X_tr, y_tr, g_tr = X_all, y_all, groups[train]
    if len(y_tr) > cv_max_rows:
        patients = pd.unique(g_tr)
        rng = np.random.default_rng(seed)
        keep = rng.choice(patients, size=max(folds, int(len(patients) * cv_max_rows / len(y_tr))), replace=False)
        sample = np.isin(g_tr, keep)
        X_tr, y_tr, g_tr = X_tr[sample], y_tr[sample], g_tr[sample]
    splits = list(GroupKFold(n_splits=folds).split(X_tr, y_tr, g_tr))
    cv_scores: dict[str, dict[str, float]] = {}
    oof: dict[str, np.ndarray] = {}
    for name, pipe in candidates(numeric, categorical, seed).items():
        pred = np.zeros(len(y_tr))
        scores = []
        for k, (a, b) in enumerate(splits):
            say(f"cross-validating {name} (fold {k + 1}/{folds})")
            fitted = clone(pipe).fit(X_tr.iloc[a], y_tr[a])
            pred[b] = fitted.predict_proba(X_tr.iloc[b])[:, 1]
            scores.append(M.auroc(y_tr[b], pred[b]))
        oof[name] = pred
        cv_scores[name] = {"auroc_mean": float(np.nanmean(scores)), "auroc_std": float(np.nanstd(scores))}
    chosen = max(cv_scores, key=lambda n: cv_scores[n]["auroc_mean"])
    slope, intercept = fit_platt(oof[chosen], y_tr)
    say(f"fitting {chosen} on {len(y_all):,} training rows")
    model = PlattCalibrated(candidates(numeric, categorical, seed)[chosen], slope=slope, intercept=intercept)
    model.fit(X_all, y_all)
    fit_seconds = time.perf_counter() - started
    say(f"validating on {int(test.sum()):,} held-out rows")
    y_te, g_te = y[test], groups[test]
    p_te = model.predict_proba(X[test])[:, 1]
    metrics = M.binary_metrics(y_te, p_te, g_te, n_boot=n_boot, seed=seed)
    baseline_report: dict[str, dict[str, Any]] = {}
    for name, score in (baselines or {}).items():
        filled = np.nan_to_num(np.asarray(score, np.float64), nan=0.0)
        diff = M.compare_auroc(y_te, p_te, filled, g_te, n_boot=n_boot, seed=seed)
        baseline_report[name] = {
            "auroc": {"value": diff["baseline_auroc"], "ci_low": diff["baseline_ci_low"],
                      "ci_high": diff["baseline_ci_high"]},
            "difference": diff,
        }
    return FitResult(model=model, chosen=chosen, cv_scores=cv_scores, slope=slope, intercept=intercept, p_test=p_te,
                     metrics=metrics, baselines=baseline_report, fit_seconds=fit_seconds)


def model_card(*, task: str, description: str, fit: FitResult, columns: list[str], numeric: list[str],
               categorical: list[str], schema_hash: str, snapshot: str, X_train: pd.DataFrame, y_train: np.ndarray,
               threshold: dict[str, float], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "task": task, "description": description, "estimator": fit.chosen,
        "calibration": {"method": "platt", "slope": fit.slope, "intercept": fit.intercept},
        "feature_schema": {"columns": columns, "numeric": numeric, "categorical": categorical, "hash": schema_hash},
        "training_data": {"snapshot_sha256": snapshot, "n": len(y_train), "positives": int(y_train.sum()),
                          **(extra or {})},
        "code_version": carecast.__version__,
        "libraries": {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
                      "numpy": np.__version__, "pandas": pd.__version__},
        "metrics": dict(fit.metrics),
        "baselines": {k: v["auroc"] for k, v in fit.baselines.items()},
        "threshold": threshold,
        "reference": reference_distributions(X_train, numeric, categorical),
    }


def train_task(frames: ClinicalFrames, task_name: str, *, spec: FeatureSpec | None = None, seed: int = 0,
               folds: int = 3, n_boot: int = 500, alert_share: float = 0.05,
               oracle: Callable[[pd.DataFrame], np.ndarray | None] | None = None,
               progress: Progress | None = None) -> TrainingResult:
    """Train, choose, calibrate and validate a model for one task of the store's data."""
    say = progress or (lambda _msg: None)
    if task_name not in TASKS:
        raise TrainingError(f"unknown task {task_name}; choose one of {', '.join(TASKS)}")
    task: Task = TASKS[task_name]
    spec = spec or default_spec()
    say("building the cohort")
    cohort = task.cohort(frames)
    if len(cohort) < 100 or cohort["label"].sum() < MIN_POSITIVES:
        raise TrainingError(f"{task_name}: {len(cohort)} predictions with {int(cohort['label'].sum())} outcomes; "
                            f"at least 100 and {MIN_POSITIVES} are needed")
    say(f"building features for {len(cohort):,} predictions")
    X = build_features(frames, cohort[["patient_id", "encounter_id", "t"]], spec)
    y = cohort["label"].to_numpy(np.int64)
    groups = cohort["patient_id"].to_numpy()
    train, test = split_by_patient_and_time(cohort)
    if y[train].sum() < MIN_POSITIVES or y[test].sum() < 2:
        raise TrainingError(f"{task_name}: too few outcomes in the training or test period to validate")
    numeric, categorical = spec.numeric_columns(), spec.categorical
    X_te = X[test]
    baselines: dict[str, np.ndarray] = {}
    if "news2_total" in X:
        baselines["news2"] = X_te["news2_total"].to_numpy(np.float64)
    if "qsofa_total" in X:
        baselines["qsofa"] = X_te["qsofa_total"].to_numpy(np.float64)
    baselines["lace"] = _lace_scores(frames, cohort[test], X_te)
    fit = fit_and_validate(X, y, groups, train, test, numeric, categorical, baselines=baselines, seed=seed,
                           folds=folds, n_boot=n_boot, progress=progress)
    y_te, g_te, p_te = y[test], groups[test], fit.p_test
    cohort_te = cohort[test]
    thresholds = M.threshold_table(
        y_te, p_te, times=cohort_te["t"], event_times=cohort_te["event_at"],
        encounter_ids=cohort_te["encounter_id"].to_numpy(),
        patient_days=_patient_days(frames, cohort_te["encounter_id"].to_numpy()))
    chosen_threshold = choose_threshold(thresholds, alert_share)
    report: dict[str, Any] = {
        "task": task_name, "description": task.description, "created_at": datetime.now(UTC).isoformat(),
        "candidate_cv": fit.cv_scores, "chosen": fit.chosen, "calibration_method": "platt (out-of-fold)",
        "n_train": int(train.sum()), "n_test": int(test.sum()),
        "prevalence_train": float(y[train].mean()), "prevalence_test": float(y_te.mean()),
        "metrics": fit.metrics, "baselines": fit.baselines,
        "reliability": M.reliability_curve(y_te, p_te), "thresholds": thresholds,
        "chosen_threshold": chosen_threshold,
        "subgroups": M.subgroup_metrics(y_te, p_te, _attributes(X_te), groups=g_te, seed=seed),
        "training_seconds": fit.fit_seconds,
    }
    if oracle is not None:
        truth = oracle(cohort_te)
        if truth is not None:
            ok = ~np.isnan(truth)
            report["oracle"] = {
                "auroc": M.auroc(y_te[ok], truth[ok]), "model_auroc_same_rows": M.auroc(y_te[ok], p_te[ok]),
                "n": int(ok.sum()),
                "note": "AUROC of the simulator's true risk: the best any model can achieve on these rows"}
    card = model_card(
        task=task_name, description=task.description, fit=fit, columns=spec.columns(), numeric=numeric,
        categorical=categorical, schema_hash=spec.schema_hash(), snapshot=snapshot_hash(cohort, X),
        X_train=X[train], y_train=y[train], threshold=chosen_threshold,
        extra={"first_admission": str(cohort["split_time"].min()), "last_admission": str(cohort["split_time"].max())})
    card["feature_schema"]["spec_version"] = spec.raw.get("version")
    return TrainingResult(task=task_name, estimator=fit.model, card=card, report=report, y_test=y_te, p_test=p_te,
                          baselines_test=baselines)
