"""Training on any tabular dataset (a CSV, or a bundled research dataset such as SUPPORT2), with the
same preprocessing, model selection, calibration and report as the clinical tasks.

Rows are split by patient: with a time column, the latest patients are the test set (the same
rule as the clinical tasks); without one, a seeded random 25% of patients.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carecast.errors import InputError
from carecast.models import metrics as M
from carecast.models.registry import Registry
from carecast.models.report import write_report
from carecast.models.training import MIN_POSITIVES, TrainingError, choose_threshold, fit_and_validate, model_card

Progress = Callable[[str], None]


def split_table(ids: np.ndarray, times: pd.Series | None, *, test_fraction: float = 0.25,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test) with no patient on both sides."""
    unique = pd.unique(ids)
    if times is not None:
        first = pd.Series(pd.to_datetime(times, utc=True, errors="coerce").to_numpy()).groupby(ids).min()
        cutoff = first.quantile(1 - test_fraction)
        test_ids = set(first[first > cutoff].index)
    else:
        rng = np.random.default_rng(seed)
        test_ids = set(rng.choice(unique, size=max(1, round(len(unique) * test_fraction)), replace=False))
    test = np.isin(ids, list(test_ids))
    return ~test, test


def prepare_table(df: pd.DataFrame, *, target: str, id_column: str, drop: Sequence[str] = (),
                  time_column: str | None = None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str], list[str]]:
    """Features, labels, patient ids, numeric and categorical column names. Never uses the target,
    the id, the time column or `drop` as a feature."""
    for col in (target, id_column, *(c for c in [time_column] if c), *drop):
        if col not in df.columns:
            raise InputError(f"column {col!r} is not in the table")
    y_raw = pd.to_numeric(df[target], errors="coerce")
    keep = y_raw.isin([0, 1]).to_numpy()
    if not keep.all():
        df = df[keep]
        y_raw = y_raw[keep]
    excluded = {target, id_column, *drop, *(c for c in [time_column] if c)}
    features = [c for c in df.columns if c not in excluded]
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    categorical = [c for c in features if c not in numeric]
    X = df[numeric + categorical].copy()
    for c in categorical:
        X[c] = X[c].astype(object).where(X[c].notna(), None).map(lambda v: None if v is None else str(v))
    return X.reset_index(drop=True), y_raw.to_numpy(np.int64), df[id_column].to_numpy(), numeric, categorical


def train_frame(df: pd.DataFrame, *, name: str, target: str, id_column: str, drop: Sequence[str] = (),
                time_column: str | None = None, baselines: dict[str, str] | None = None, seed: int = 0,
                n_boot: int = 500, registry: Registry | None = None, progress: Progress | None = None,
                description: str = "") -> dict[str, Any]:
    """Train and validate on a table; `baselines` maps a report name to a column scored as-is (higher =
    more risk) on the same test rows. Returns the JSON summary (and saves to `registry` if given)."""
    baseline_cols = dict(baselines or {})
    X, y, ids, numeric, categorical = prepare_table(df, target=target, id_column=id_column,
                                                    drop=[*drop, *baseline_cols.values()], time_column=time_column)
    if len(y) < 100 or y.sum() < MIN_POSITIVES or (len(y) - y.sum()) < MIN_POSITIVES:
        raise TrainingError(f"{name}: {len(y)} rows with {int(y.sum())} positives are too few to train")
    kept = df[pd.to_numeric(df[target], errors="coerce").isin([0, 1])].reset_index(drop=True)
    train, test = split_table(ids, kept[time_column] if time_column else None, seed=seed)
    base_scores = {k: pd.to_numeric(kept.loc[test, col], errors="coerce").to_numpy(np.float64)
                   for k, col in baseline_cols.items()}
    fit = fit_and_validate(X, y, ids, train, test, numeric, categorical, baselines=base_scores, seed=seed,
                           n_boot=n_boot, progress=progress)
    y_te, p_te = y[test], fit.p_test
    no_times = pd.Series(pd.NaT, index=range(len(y_te)), dtype="datetime64[ns, UTC]")  # a table has no lead times
    thresholds = M.threshold_table(y_te, p_te, times=no_times, event_times=no_times, encounter_ids=ids[test],
                                   patient_days=float("nan"))
    report: dict[str, Any] = {
        "task": name, "description": description or f"{target} from {name}",
        "created_at": datetime.now(UTC).isoformat(), "candidate_cv": fit.cv_scores, "chosen": fit.chosen,
        "calibration_method": "platt (out-of-fold)", "n_train": int(train.sum()), "n_test": int(test.sum()),
        "prevalence_train": float(y[train].mean()), "prevalence_test": float(y_te.mean()),
        "metrics": fit.metrics, "baselines": fit.baselines, "reliability": M.reliability_curve(y_te, p_te),
        "thresholds": thresholds, "chosen_threshold": choose_threshold(thresholds, 0.1),
        "training_seconds": fit.fit_seconds,
    }
    version = None
    if registry is not None:
        card = model_card(task=name, description=report["description"], fit=fit, columns=numeric + categorical,
                          numeric=numeric, categorical=categorical, schema_hash="", snapshot="",
                          X_train=X[train], y_train=y[train], threshold=report["chosen_threshold"])
        with tempfile.TemporaryDirectory() as tmp:
            write_report(report, Path(tmp), y=y_te, p=p_te, baselines=base_scores)
            version = registry.save(name, fit.model, card, report_dir=Path(tmp))
    return {
        "task": name, "version": version, "model": fit.chosen, "n_train": int(train.sum()),
        "n_test": int(test.sum()), "prevalence_test": float(y_te.mean()),
        "auroc": fit.metrics["auroc"], "auprc": fit.metrics["auprc"], "brier": fit.metrics["brier"],
        "calibration_slope": fit.metrics["calibration_slope"],
        "calibration_intercept": fit.metrics["calibration_intercept"],
        "baselines": fit.baselines, "features": numeric + categorical,
    }


def train_table(path: Path, *, target: str, id_column: str, drop: Sequence[str] = (), time_column: str | None = None,
                seed: int = 0, n_boot: int = 500, registry: Registry | None = None,
                progress: Progress | None = None) -> dict[str, Any]:
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        raise InputError(f"{path.name} cannot be read as CSV") from None
    name = "table-" + "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in path.stem)[:40]
    return train_frame(df, name=name, target=target, id_column=id_column, drop=drop, time_column=time_column,
                       seed=seed, n_boot=n_boot, registry=registry, progress=progress)


# -- SUPPORT2 -------------------------------------------------------------------------------------------------

# Never features: the SUPPORT model's own estimates (the baseline to beat), the APACHE III score (a named
# comparator; not in this release), fac_sfdm2 (derived from the outcome), follow-up time and event (the
# outcome), and fac_dnr, whose level "dnr after sadm" records an order written after study entry
# (look-ahead; 84% of those patients die): it is replaced by dnr_before_entry.
# The SUPPORT physiology score (num_sps, day 3, the same day as the other physiology columns) is a
# clinical score like NEWS2 in the clinical tasks: a feature and, as `physiology_score`, a baseline.
SUPPORT2_NEVER_FEATURES = ("num_surv2m", "num_surv6m", "fac_sfdm2", "num_aps", "time", "event", "fac_dnr")


def support2_frame() -> pd.DataFrame:
    """SUPPORT2 (9,105 seriously ill hospitalised adults) from the SurvSet package, with the 180-day
    mortality label. Patients censored alive before day 180 have no 180-day status and are left out."""
    try:
        from SurvSet.data import SurvLoader
    except ImportError:
        raise InputError("SUPPORT2 needs the optional extra: pip install 'carecast[support2]'") from None
    with warnings.catch_warnings():
        # SurvSet's bundled pickle refers to numpy.core, which numpy 2 renamed: harmless, not ours.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r"numpy\.core")
        df = SurvLoader().load_dataset(ds_name="support2")["df"]
    died_180 = (df["event"] == 1) & (df["time"] <= 180)
    known = died_180 | (df["time"] >= 180)
    out = df[known].copy()
    out["death_180d"] = died_180[known].astype(int)
    out["support_model_risk_180d"] = 1.0 - out["num_surv6m"]  # the SUPPORT prognostic model's own estimate
    out["physiology_score"] = out["num_aps"] if "num_aps" in out else out["num_sps"]
    # Only a DNR order written before study entry is baseline information (see SUPPORT2_NEVER_FEATURES).
    out["dnr_before_entry"] = (out["fac_dnr"] == "dnr before sadm").astype(int)
    return out.reset_index(drop=True)


def benchmark_support2(*, seed: int = 0, n_boot: int = 500, registry: Registry | None = None,
                       progress: Progress | None = None) -> dict[str, Any]:
    df = support2_frame()
    drop = [c for c in SUPPORT2_NEVER_FEATURES if c in df.columns]
    return train_frame(df, name="support2-death-180d", target="death_180d", id_column="pid", drop=drop,
                       baselines={"support_model": "support_model_risk_180d", "physiology_score": "physiology_score"},
                       seed=seed, n_boot=n_boot, registry=registry, progress=progress,
                       description="death within 180 days (SUPPORT2; patient split; SUPPORT model and "
                                   "physiology score as baselines)")
