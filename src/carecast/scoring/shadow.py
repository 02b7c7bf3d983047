"""Shadow mode compared: the challenger's stored shadow scores beside the champion's scores of the same data.

The scoring worker (with `shadow_challenger=True`, and a Predictor built with `challengers=True`) stores a
challenger's score of each row it scores for the champion as a `predictions` row with `shadow = true`; the API
and the live stream never show those rows. `compare_shadow` pairs the two models' scores of the same
(patient, data time) and reports how far they agree and, once the outcomes are in, the AUROC of each on the
same rows (paired patient-cluster bootstrap for the difference). Labels are the task's own (the cohort
definition training uses): a scored moment that is not yet labelled (outcome window still open) or not a
moment of the task's cohort is counted as pending.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from carecast.models import metrics as M
from carecast.models.report import to_jsonable
from carecast.models.tasks import TASKS
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.frames import load_frames

MIN_LABELLED_EACH_CLASS = 5


@dataclass(frozen=True)
class ShadowComparison:
    """Agreement of two models on the same scored rows, and their discrimination once outcomes are known."""

    task: str
    champion: str
    challenger: str
    pairs: int
    agreement: dict[str, float] = field(default_factory=dict)
    labelled: int = 0
    positives: int = 0
    pending: int = 0
    auroc: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = to_jsonable({
            "task": self.task, "champion": self.champion, "challenger": self.challenger, "pairs": self.pairs,
            "agreement": self.agreement, "labelled": self.labelled, "positives": self.positives,
            "pending": self.pending, "auroc": self.auroc})
        return out


def paired_scores(engine: Engine, task: str, champion: str, challenger: str, *,
                  since: datetime | None = None) -> pd.DataFrame:
    """One row per (patient, encounter, data time) both versions scored: risk and band of each."""
    P = S.table(S.Prediction)
    stmt = select(P.c.patient_id, P.c.encounter_id, P.c.data_time, P.c.model_version, P.c.risk, P.c.band).where(
        P.c.task == task, P.c.model_version.in_([champion, challenger]))
    if since is not None:
        stmt = stmt.where(P.c.data_time >= since)
    with engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(stmt).all(),
                            columns=["patient_id", "encounter_id", "data_time", "model_version", "risk", "band"])
    key = ["patient_id", "encounter_id", "data_time"]
    rows["data_time"] = pd.to_datetime(rows["data_time"], utc=True)
    rows["encounter_id"] = rows["encounter_id"].astype("Int64")
    a = rows[rows["model_version"] == champion].drop(columns="model_version")
    b = rows[rows["model_version"] == challenger].drop(columns="model_version")
    pairs = a.merge(b, on=key, suffixes=("_champion", "_challenger"))
    return pairs.sort_values(key, kind="stable").reset_index(drop=True)


def agreement(pairs: pd.DataFrame) -> dict[str, float]:
    """How alike two models' scores of the same rows are: the share of rows where both alert (band high) or
    neither does, the share in the same band, the mean absolute and the largest risk difference, and the
    rank correlation of the risks."""
    if pairs.empty:
        return {}
    a, b = pairs["risk_champion"].to_numpy(float), pairs["risk_challenger"].to_numpy(float)
    alert_a, alert_b = pairs["band_champion"].eq("high").to_numpy(), pairs["band_challenger"].eq("high").to_numpy()
    rho = pd.Series(a).corr(pd.Series(b), method="spearman") if len(a) > 1 else math.nan  # NaN when constant
    return {"alert_agreement": float((alert_a == alert_b).mean()),
            "band_agreement": float((pairs["band_champion"] == pairs["band_challenger"]).mean()),
            "champion_alert_share": float(alert_a.mean()), "challenger_alert_share": float(alert_b.mean()),
            "mean_abs_risk_difference": float(np.abs(a - b).mean()),
            "max_abs_risk_difference": float(np.abs(a - b).max()), "spearman": float(rho)}


def label_pairs(pairs: pd.DataFrame, cohort: pd.DataFrame) -> np.ndarray:
    """The task's label of each paired row (NaN where the cohort has no such moment yet)."""
    if pairs.empty:
        return np.zeros(0)
    labels = cohort[["encounter_id", "t", "label"]].drop_duplicates(["encounter_id", "t"]).rename(
        columns={"t": "data_time"})
    labels["encounter_id"] = labels["encounter_id"].astype("Int64")
    labels["data_time"] = pd.to_datetime(labels["data_time"], utc=True)
    merged = pairs[["encounter_id", "data_time"]].merge(labels, on=["encounter_id", "data_time"], how="left")
    return merged["label"].to_numpy(np.float64)


def compare_shadow(store: Store, task: str, champion: str, challenger: str, *, since: datetime | None = None,
                   n_boot: int = 500, seed: int = 0) -> ShadowComparison:
    """Compare the champion's scores with the challenger's shadow scores of the same rows (see the module)."""
    pairs = paired_scores(store.engine, task, champion, challenger, since=since)
    result = ShadowComparison(task=task, champion=champion, challenger=challenger, pairs=len(pairs),
                              agreement=agreement(pairs))
    if pairs.empty or task not in TASKS:
        return result
    frames = load_frames(store.engine, store.keyring, patient_ids=sorted(set(pairs["patient_id"].tolist())))
    y = label_pairs(pairs, TASKS[task].cohort(frames))
    known = ~np.isnan(y)
    yk = y[known].astype(np.int64)
    positives = int(yk.sum())
    auroc: dict[str, Any] | None = None
    if positives >= MIN_LABELLED_EACH_CLASS and len(yk) - positives >= MIN_LABELLED_EACH_CLASS:
        d = M.compare_auroc(yk, pairs.loc[known, "risk_challenger"].to_numpy(float),
                            pairs.loc[known, "risk_champion"].to_numpy(float),
                            pairs.loc[known, "patient_id"].to_numpy(), n_boot=n_boot, seed=seed)
        auroc = {"champion": d["baseline_auroc"], "champion_ci_low": d["baseline_ci_low"],
                 "champion_ci_high": d["baseline_ci_high"], "challenger": d["model_auroc"],
                 "difference": d["difference"], "difference_ci_low": d["ci_low"], "difference_ci_high": d["ci_high"]}
    return ShadowComparison(task=task, champion=champion, challenger=challenger, pairs=len(pairs),
                            agreement=result.agreement, labelled=int(known.sum()), positives=positives,
                            pending=int((~known).sum()), auroc=auroc)
