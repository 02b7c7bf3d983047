"""The training job: store -> frames -> train_task -> report files -> registry.

A new model becomes the challenger; when the task has no champion yet it becomes the champion
(there is nothing to compare it with). Promotion over an existing champion is a decision for
`carecast models promote` or the retraining gates, never a side effect of training.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from carecast.models.registry import Registry
from carecast.models.report import write_report
from carecast.models.training import TrainingResult, train_task
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.frames import load_frames


@dataclass
class TrainingRun:
    version: str
    alias: str
    result: TrainingResult


def simulator_oracle(store: Store, truth_csv: Path) -> Callable[[pd.DataFrame], np.ndarray | None]:
    """The simulator's true 24 h risk for cohort rows (deterioration task), matched through the keyed
    natural keys the store keeps: the truth file names FHIR ids, the store never does in clear."""
    truth = pd.read_csv(truth_csv)
    truth["t"] = pd.to_datetime(truth["time"], utc=True)
    by_key = {store.keyring.record_key(f"Encounter/{e}"): e for e in truth["encounter_id"].unique()}
    with store.engine.connect() as conn:
        rows = conn.execute(select(S.Encounter.id, S.Encounter.source_key)
                            .where(S.Encounter.source_key.in_(list(by_key)))).all()
    store_id = {by_key[r.source_key]: int(r.id) for r in rows}
    truth["encounter_id"] = truth["encounter_id"].map(store_id)
    truth = truth.dropna(subset=["encounter_id"])
    truth["encounter_id"] = truth["encounter_id"].astype(np.int64)
    lookup = truth.drop_duplicates(["encounter_id", "t"]).set_index(["encounter_id", "t"])["true_risk_24h"]

    def oracle(cohort: pd.DataFrame) -> np.ndarray | None:
        index = pd.MultiIndex.from_arrays([cohort["encounter_id"].to_numpy(), pd.DatetimeIndex(cohort["t"])])
        values = lookup.reindex(index).to_numpy(np.float64)
        return values if np.isfinite(values).any() else None

    return oracle


def run_training(store: Store, registry: Registry, task: str, *, truth_csv: Path | None = None,
                 progress: Callable[[str], None] | None = None, **options: Any) -> TrainingRun:
    say = progress or (lambda _m: None)
    say("reading the store")
    frames = load_frames(store.engine, store.keyring)
    oracle = simulator_oracle(store, truth_csv) if truth_csv and task == "deterioration_24h" else None
    result = train_task(frames, task, oracle=oracle, progress=progress, **options)
    with tempfile.TemporaryDirectory() as tmp:
        say("writing the report")
        write_report(result.report, Path(tmp), y=result.y_test, p=result.p_test, baselines=result.baselines_test)
        version = registry.save(task, result.estimator, result.card, report_dir=Path(tmp))
    alias = "challenger"
    if not registry.aliases(task).get("champion"):
        alias = "champion"
    registry.promote(task, version, alias, reason="first model of the task" if alias == "champion" else "trained")
    return TrainingRun(version=version, alias=alias, result=result)
