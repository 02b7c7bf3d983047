"""Retraining behind promotion gates: a challenger trained on stored data, compared with the champion on the same
recent holdout, promoted only if every gate passes; the decision and its reasons are kept in the registry.

    store -> frames -> cohort -> holdout = the latest admissions (every row of their patients)
          -> challenger trained on the other patients only (`train_task`, as `carecast train`)
          -> challenger and champion scored on the holdout -> gates (carecast.models.gates)
          -> promoted to champion, or left as challenger (shadow-scored beside the champion)

With no champion yet, the first model is promoted if it clears the absolute floors. Serving picks a new champion
up without a restart (`Predictor.maybe_refresh` re-reads the aliases). `RetrainScheduler` runs this in a thread
every N hours (CARECAST_RETRAIN_INTERVAL_HOURS); in production a Cloud Scheduler job runs `carecast retrain`.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carecast.config import Settings
from carecast.domain.frames import COLUMNS, ClinicalFrames
from carecast.errors import CareCastError, NotFoundError
from carecast.features.builder import build_features
from carecast.features.spec import FeatureSpec, default_spec
from carecast.models.gates import DEFAULT_GATES, Candidate, GateDecision, Holdout, PromotionGates, evaluate_gates
from carecast.models.gates import holdout_attributes as attributes_of
from carecast.models.registry import Registry
from carecast.models.report import write_report
from carecast.models.tasks import TASKS, split_by_patient_and_time
from carecast.models.training import TrainingError, TrainingResult, train_task
from carecast.store import Store
from carecast.store.frames import load_frames

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.25
MIN_HOLDOUT_POSITIVES = 5

Progress = Callable[[str], None]
# Trains a challenger on the frames it is given (the holdout patients already removed).
Trainer = Callable[[ClinicalFrames], TrainingResult]


@dataclass
class RetrainResult:
    """What a retraining run did: the challenger's version, the champion before and after, the decision."""

    task: str
    version: str
    champion_before: str | None
    champion_after: str | None
    promoted: bool
    decision: GateDecision
    holdout: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "challenger": self.version, "champion_before": self.champion_before,
                "champion_after": self.champion_after, "promoted": self.promoted, "holdout": self.holdout,
                "training": self.training, **{k: v for k, v in self.decision.to_dict().items()
                                              if k not in ("challenger", "champion", "promote")}}


def without_patients(frames: ClinicalFrames, patient_ids: Iterable[int]) -> ClinicalFrames:
    """The frames with every row of the given patients removed (all tables carry patient_id)."""
    drop = set(int(p) for p in patient_ids)
    parts = {}
    for name in COLUMNS:
        df: pd.DataFrame = getattr(frames, name)
        parts[name] = df[~df["patient_id"].isin(drop)].reset_index(drop=True)
    return ClinicalFrames(**parts)


def _scores(estimator: Any, X: pd.DataFrame, card: dict[str, Any]) -> np.ndarray:
    """A model's risks on feature rows, given the columns its card names (absent ones as missing values)."""
    columns = list(card.get("feature_schema", {}).get("columns") or X.columns)
    return np.asarray(estimator.predict_proba(X.reindex(columns=columns))[:, 1], dtype=np.float64)


def run_retrain(store: Store, registry: Registry, task: str, *, gates: PromotionGates = DEFAULT_GATES,
                holdout_fraction: float = HOLDOUT_FRACTION, promote: bool = True, seed: int = 0, folds: int = 3,
                n_boot: int = 200, spec: FeatureSpec | None = None, trainer: Trainer | None = None,
                progress: Progress | None = None) -> RetrainResult:
    """Train a challenger, compare it with the champion on the latest admissions and promote it if the
    gates pass (or, with `promote=False`, only record the decision and leave it in shadow as challenger).

    Raises TrainingError when the data cannot support a holdout with both outcomes."""
    say = progress or (lambda _m: None)
    if task not in TASKS:
        raise TrainingError(f"unknown task {task}; choose one of {', '.join(TASKS)}")
    if not 0.05 <= holdout_fraction <= 0.5:
        raise TrainingError("the holdout fraction must be between 0.05 and 0.5")
    spec = spec or default_spec()
    say("reading the store")
    frames = load_frames(store.engine, store.keyring)
    cohort = TASKS[task].cohort(frames)
    if cohort.empty:
        raise TrainingError(f"{task}: no predictions to train or evaluate on")
    _, in_holdout = split_by_patient_and_time(cohort, test_fraction=holdout_fraction)
    held = cohort[in_holdout].reset_index(drop=True)
    y_h = held["label"].to_numpy(np.int64)
    if y_h.sum() < MIN_HOLDOUT_POSITIVES or (len(y_h) - y_h.sum()) < MIN_HOLDOUT_POSITIVES:
        raise TrainingError(f"{task}: the holdout of the latest admissions has {int(y_h.sum())} outcomes in "
                            f"{len(y_h)} predictions; at least {MIN_HOLDOUT_POSITIVES} of each class are needed")
    holdout_patients = set(held["patient_id"].tolist())

    say(f"training a challenger without the {len(holdout_patients)} holdout patients")
    train = trainer or (lambda f: train_task(f, task, spec=spec, seed=seed, folds=folds, n_boot=n_boot,
                                             progress=progress))
    result = train(without_patients(frames, holdout_patients))
    with tempfile.TemporaryDirectory() as tmp:
        write_report(result.report, Path(tmp), y=result.y_test, p=result.p_test, baselines=result.baselines_test)
        version = registry.save(task, result.estimator, result.card, report_dir=Path(tmp))

    champion_before = registry.aliases(task).get("champion")
    champion: Candidate | None = None
    champion_card: dict[str, Any] = {}
    say(f"scoring {len(held):,} holdout predictions with the challenger and the champion")
    X_h = build_features(frames, held[["patient_id", "encounter_id", "t"]], spec)
    challenger = Candidate(version, _scores(result.estimator, X_h, result.card), result.card["feature_schema"])
    if champion_before:
        loaded = registry.load(task, str(champion_before))
        champion_card = dict(loaded.card)
        champion = Candidate(loaded.version, _scores(loaded.estimator, X_h, loaded.card),
                             loaded.card.get("feature_schema", {}))
    holdout = Holdout(y=y_h, groups=held["patient_id"].to_numpy(), attributes=attributes_of(X_h))
    decision = evaluate_gates(holdout, challenger, champion, available_columns=spec.columns(), gates=gates)

    promoted = decision.promote and promote
    if promoted:
        registry.promote(task, version, "champion", reason=f"retrain: {decision.summary()}")
    else:
        registry.promote(task, version, "challenger",
                         reason=f"retrain: {decision.summary()}" + ("" if promote else " (promotion not asked)"))
    champion_after = version if promoted else champion_before
    holdout_info = {"fraction": holdout_fraction, "n": len(held), "positives": int(y_h.sum()),
                    "patients": len(holdout_patients), "first_admission": str(held["split_time"].min()),
                    "last_admission": str(held["split_time"].max())}
    if champion is not None:
        trained_until = champion_card.get("training_data", {}).get("last_admission")
        if trained_until:
            newer = held["split_time"] > pd.Timestamp(trained_until)
            holdout_info["after_champion_training_share"] = float(newer.mean())
    training = {"n_train": result.report.get("n_train"), "n_test": result.report.get("n_test"),
                "model": result.report.get("chosen"),
                "own_test_auroc": result.report.get("metrics", {}).get("auroc", {}).get("value")}
    out = RetrainResult(task=task, version=version, champion_before=champion_before, champion_after=champion_after,
                        promoted=promoted, decision=decision, holdout=holdout_info, training=training)
    record = out.to_dict()
    registry.record_decision(task, version, {**record, "champion": champion_before, "promote": decision.promote,
                                             "summary": decision.summary()})
    log.info("retrain %s: challenger %s %s", task, version, "promoted" if promoted else "not promoted")
    return out


# -- the schedule ---------------------------------------------------------------------------------------------

def retrain_tasks(settings: Settings, tasks: Iterable[str], *, progress: Progress | None = None,
                  **options: Any) -> dict[str, dict[str, Any]]:
    """One scheduled run: retrain each task in turn on a store and registry opened from `settings`.
    A task that cannot be retrained (too little data) is reported and the others go on."""
    out: dict[str, dict[str, Any]] = {}
    store = Store.open(settings)
    try:
        registry = Registry(settings.model_registry)
        for task in tasks:
            try:
                out[task] = run_retrain(store, registry, task, progress=progress, **options).to_dict()
            except (TrainingError, NotFoundError) as exc:
                out[task] = {"task": task, "error": exc.public_message}
                log.warning("retrain %s skipped: %s", task, exc.public_message)
    finally:
        store.close()
    return out


class RetrainScheduler:
    """Runs `job` every `interval_s` seconds in a daemon thread (first run after one interval), until stopped.
    A failing run is logged (its error type or CareCastError message, never data) and the schedule goes on.

    >>> s = RetrainScheduler(lambda: None, interval_s=3600)
    >>> (s.runs, s.failures, s.running)
    (0, 0, False)
    """

    def __init__(self, job: Callable[[], object], interval_s: float, *, first_after_s: float | None = None,
                 name: str = "carecast-retrain", what: str = "retraining") -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be positive")
        self.job = job
        self.what = what  # named in the log line of a failed run (the drift checks reuse this loop)
        self.interval_s = float(interval_s)
        self.first_after_s = self.interval_s if first_after_s is None else max(0.0, float(first_after_s))
        self.runs = 0
        self.failures = 0
        self.last_result: object = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        wait = self.first_after_s
        while not self._stop.wait(wait):
            started = time.monotonic()
            try:
                self.last_result = self.job()
                self.last_error = None
            except Exception as exc:  # the schedule survives a bad run; the next one may succeed
                self.failures += 1
                self.last_error = exc.public_message if isinstance(exc, CareCastError) else type(exc).__name__
                log.error("scheduled %s failed (%s)", self.what, self.last_error)
            self.runs += 1
            wait = max(0.0, self.interval_s - (time.monotonic() - started))

    def start(self) -> RetrainScheduler:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end (a run in progress finishes first) and wait up to `timeout` seconds."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def scheduler_from_settings(settings: Settings, tasks: Iterable[str] = ("deterioration_24h",),
                            **options: Any) -> RetrainScheduler | None:
    """The in-process schedule of the embedded default: `retrain_tasks` every
    `settings.retrain_interval_hours` hours, or None when that is 0 (off; the default under CARECAST_ENV=test)."""
    hours = settings.retrain_interval_hours
    if not hours or hours <= 0:
        return None
    wanted = tuple(tasks)
    return RetrainScheduler(lambda: retrain_tasks(settings, wanted, **options), interval_s=hours * 3600.0)
