"""Retraining behind the gates on a simulated hospital: a better model is promoted, a worse one (trained on
shuffled labels) refused with the failing gate named, the decision recorded, rollback restores the champion."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from carecast import cli
from carecast.config import Settings
from carecast.crypto import Keyring
from carecast.domain.frames import ClinicalFrames
from carecast.errors import CareCastError
from carecast.jobs.ingest import ingest_paths
from carecast.jobs.retrain import (
    RetrainResult,
    RetrainScheduler,
    run_retrain,
    scheduler_from_settings,
    without_patients,
)
from carecast.models.registry import Registry
from carecast.models.tasks import TASKS, Task, split_by_patient_and_time
from carecast.models.training import TrainingError, TrainingResult, train_task
from carecast.scoring.predictor import Predictor
from carecast.simulate import SimulationConfig, simulate
from carecast.store import Store
from carecast.store.db import make_engine
from carecast.store.frames import load_frames
from carecast.store.migrate import upgrade
from carecast.store.writer import ClinicalWriter

TASK = "deterioration_24h"
FAST: dict[str, Any] = {"folds": 2, "n_boot": 50}


class ShuffledLabels(Task):
    """The deterioration cohort with its labels permuted: a model of it has learned nothing."""

    name = TASK
    description = "deterioration with shuffled labels (a test's worse model)"

    def __init__(self, real: Task) -> None:
        self.real = real

    def cohort(self, frames: ClinicalFrames) -> pd.DataFrame:
        cohort = self.real.cohort(frames)
        cohort["label"] = np.random.default_rng(3).permutation(cohort["label"].to_numpy())
        return cohort


def shuffled_trainer(frames: ClinicalFrames) -> TrainingResult:
    real = TASKS[TASK]
    TASKS[TASK] = ShuffledLabels(real)
    try:
        return train_task(frames, TASK, seed=0, **FAST)
    finally:
        TASKS[TASK] = real


@dataclass
class World:
    store: Store
    root: Path
    good: RetrainResult  # a real model, first of its registry: promoted over the floors
    shuffled: RetrainResult  # a shuffled-label model, first of its registry: refused by the floors
    good_model: TrainingResult
    shuffled_model: TrainingResult

    def registry(self, which: str, dest: Path) -> Registry:
        shutil.copytree(self.root / which, dest)
        return Registry(dest)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("retrain")
    simulate(SimulationConfig(seed=5, patients=300, days=8, wearable_share=0.0), root / "sim")
    engine = make_engine(f"sqlite:///{root / 'store.db'}")
    upgrade(engine)
    store = Store(engine=engine, keyring=Keyring.generate())
    ingest_paths([root / "sim"], ClinicalWriter(store.engine, store.keyring))
    trained: dict[str, TrainingResult] = {}

    def keep(name: str, fn: Any) -> Any:
        def train(frames: ClinicalFrames) -> TrainingResult:
            trained[name] = fn(frames)
            return trained[name]
        return train

    with threadpool_limits(1):
        good = run_retrain(store, Registry(root / "good"), TASK, trainer=keep(
            "good", lambda f: train_task(f, TASK, seed=0, **FAST)), n_boot=100)
        shuffled = run_retrain(store, Registry(root / "shuffled"), TASK, trainer=keep("shuffled", shuffled_trainer),
                               n_boot=100)
    yield World(store=store, root=root, good=good, shuffled=shuffled, good_model=trained["good"],
                shuffled_model=trained["shuffled"])
    store.close()


def test_the_first_model_is_promoted_when_it_clears_the_floors(world: World) -> None:
    result = world.good
    assert result.promoted and result.champion_before is None and result.champion_after == result.version
    assert result.decision.against is None and result.decision.promote
    registry = Registry(world.root / "good")
    assert registry.aliases(TASK)["champion"] == result.version
    assert registry.aliases(TASK)["history"][-1]["reason"].startswith("retrain: all gates passed")
    recorded = registry.decision(TASK, result.version)
    assert recorded is not None and recorded["promoted"] and len(recorded["gates"]) == 4
    assert registry.decisions(TASK)[-1]["version"] == result.version


def test_a_shuffled_first_model_is_not_promoted(world: World) -> None:
    result = world.shuffled
    assert not result.promoted and result.champion_after is None
    assert "discrimination" in result.decision.failed
    registry = Registry(world.root / "shuffled")
    assert registry.aliases(TASK).get("challenger") == result.version and not registry.aliases(TASK).get("champion")
    assert registry.decisions(TASK)[-1]["promoted"] is False


def test_the_holdout_is_the_latest_admissions_and_never_trained_on(world: World, tmp_path: Path) -> None:
    seen: list[ClinicalFrames] = []

    class Stop(Exception):
        pass

    def spy(frames: ClinicalFrames) -> TrainingResult:
        seen.append(frames)
        raise Stop

    with pytest.raises(Stop):
        run_retrain(world.store, Registry(tmp_path / "models"), TASK, trainer=spy, holdout_fraction=0.25)
    frames = load_frames(world.store.engine, world.store.keyring)
    cohort = TASKS[TASK].cohort(frames)
    _, held = split_by_patient_and_time(cohort, test_fraction=0.25)
    holdout_patients = set(cohort.loc[held, "patient_id"])
    trained_on = seen[0]
    assert holdout_patients and not holdout_patients & set(trained_on.patients["patient_id"])
    for name in ("encounters", "observations", "outcomes"):
        assert not holdout_patients & set(getattr(trained_on, name)["patient_id"])
    assert cohort.loc[held, "split_time"].min() >= cohort.loc[~held, "split_time"].max() - pd.Timedelta(0)
    assert len(without_patients(frames, []).observations) == len(frames.observations)


def test_a_better_model_is_promoted_and_serving_follows_then_rollback_restores(world: World, tmp_path: Path) -> None:
    registry = world.registry("shuffled", tmp_path / "models")
    weak = world.shuffled.version
    registry.promote(TASK, weak, reason="test: a weak champion")
    predictor = Predictor(registry)
    assert predictor.versions() == {TASK: weak}

    with threadpool_limits(1):
        result = run_retrain(world.store, registry, TASK, trainer=lambda _f: world.good_model, n_boot=100)
    assert result.promoted, result.decision.summary()
    assert result.champion_before == weak and result.champion_after == result.version
    disc = result.decision.results[0].figures
    assert disc["challenger_auroc"] > disc["champion_auroc"] and disc["champion_auroc"] < 0.7
    printed = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert printed["promoted"] and [g["gate"] for g in printed["gates"]] == [
        "discrimination", "calibration", "subgroups", "schema"]
    assert all(g["passed"] and g["reason"] for g in printed["gates"])

    predictor.refresh()  # what serving does every few seconds: no restart
    assert predictor.versions() == {TASK: result.version}

    registry.rollback(TASK, reason="test: back to the previous champion")
    assert registry.aliases(TASK)["champion"] == weak
    predictor.refresh()
    assert predictor.versions() == {TASK: weak}


def test_a_worse_model_is_refused_with_the_failing_gate_named(world: World, tmp_path: Path) -> None:
    registry = world.registry("good", tmp_path / "models")
    champion = world.good.version
    with threadpool_limits(1):
        result = run_retrain(world.store, registry, TASK, trainer=lambda _f: world.shuffled_model, n_boot=100)
    assert not result.promoted and "discrimination" in result.decision.failed
    assert result.champion_after == champion and registry.aliases(TASK)["champion"] == champion
    assert registry.aliases(TASK)["challenger"] == result.version  # left in shadow mode
    disc = result.decision.results[0]
    assert not disc.passed and disc.figures["difference"] < -0.02
    recorded = registry.decision(TASK, result.version)
    assert recorded is not None and not recorded["promoted"] and "discrimination" in recorded["failed"]
    assert "refused by discrimination" in registry.aliases(TASK)["history"][-1]["reason"]


def test_no_promote_records_the_decision_and_keeps_the_champion(world: World, tmp_path: Path) -> None:
    registry = world.registry("shuffled", tmp_path / "models")
    registry.promote(TASK, world.shuffled.version, reason="test: a weak champion")
    with threadpool_limits(1):
        result = run_retrain(world.store, registry, TASK, trainer=lambda _f: world.good_model, n_boot=50,
                             promote=False)
    assert result.decision.promote and not result.promoted
    assert registry.aliases(TASK)["champion"] == world.shuffled.version
    assert registry.aliases(TASK)["challenger"] == result.version
    assert "promotion not asked" in registry.aliases(TASK)["history"][-1]["reason"]


def test_too_little_data_is_a_clear_error(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    upgrade(engine)
    store = Store(engine=engine, keyring=Keyring.generate())
    try:
        with pytest.raises(TrainingError, match="no predictions"):
            run_retrain(store, Registry(tmp_path / "models"), TASK)
        with pytest.raises(TrainingError, match="unknown task"):
            run_retrain(store, Registry(tmp_path / "models"), "no_such_task")
    finally:
        store.close()


def test_the_cli_prints_the_decision_as_json(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Kept:
        engine, keyring = world.store.engine, world.store.keyring

        def close(self) -> None:  # the module's store stays open for the other tests
            pass

    monkeypatch.setattr(cli, "_open_store", Kept)
    registry = world.registry("good", tmp_path / "models")
    monkeypatch.setattr("carecast.jobs.retrain.train_task", lambda *_a, **_k: world.good_model)
    result = CliRunner().invoke(cli.main, ["retrain", "--task", TASK, "--bootstrap", "50", "--no-promote"],
                                env={"CARECAST_DATA_DIR": str(tmp_path / "var"),
                                     "CARECAST_MODEL_REGISTRY": str(tmp_path / "models")})
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    assert out["task"] == TASK and out["promoted"] is False and out["champion_before"] == world.good.version
    assert [g["gate"] for g in out["gates"]] == ["discrimination", "calibration", "subgroups", "schema"]
    assert registry.aliases(TASK)["challenger"] == out["challenger"]

    report = CliRunner().invoke(cli.main, ["retrain", "--task", TASK, "--shadow-report"],
                                env={"CARECAST_DATA_DIR": str(tmp_path / "var"),
                                     "CARECAST_MODEL_REGISTRY": str(tmp_path / "models")})
    assert report.exit_code == 0, report.output
    shadow = json.loads(report.stdout[report.stdout.index("{"):])
    assert (shadow["champion"], shadow["challenger"], shadow["pairs"]) == (world.good.version, out["challenger"], 0)


# -- the schedule ---------------------------------------------------------------------------------------------

def test_the_scheduler_runs_again_after_a_failure_and_stops() -> None:
    calls: list[int] = []
    third = threading.Event()

    def job() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a message that may quote data")
        if len(calls) == 2:
            raise TrainingError("too few outcomes")
        if len(calls) >= 3:
            third.set()
        return "ok"

    scheduler = RetrainScheduler(job, interval_s=0.01, first_after_s=0).start()
    assert third.wait(30), "the scheduler did not run three times"
    scheduler.stop()
    assert not scheduler.running
    assert scheduler.failures == 2 and scheduler.runs >= 3 and scheduler.last_result == "ok"
    with pytest.raises(ValueError):
        RetrainScheduler(job, interval_s=0)


def test_the_scheduler_keeps_only_safe_error_text() -> None:
    ready, done = threading.Event(), threading.Event()
    holder: list[RetrainScheduler] = []
    errors: list[str | None] = []

    def job() -> None:
        ready.wait(30)
        if not errors and holder[0].failures == 1:
            errors.append(holder[0].last_error)
            done.set()
            return
        raise ValueError("patient 12345 value 987")

    holder.append(RetrainScheduler(job, interval_s=0.01, first_after_s=0).start())
    ready.set()
    assert done.wait(30)
    holder[0].stop()
    assert errors == ["ValueError"]
    assert issubclass(TrainingError, CareCastError)


def test_the_schedule_is_a_setting_off_under_test(tmp_path: Path) -> None:
    assert scheduler_from_settings(Settings.from_env({"CARECAST_ENV": "test",
                                                      "CARECAST_DATA_DIR": str(tmp_path)})) is None
    every = scheduler_from_settings(Settings.from_env({"CARECAST_RETRAIN_INTERVAL_HOURS": "6",
                                                       "CARECAST_DATA_DIR": str(tmp_path)}))
    assert every is not None and every.interval_s == 6 * 3600 and not every.running
    assert Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path)}).retrain_interval_hours == 24
    assert scheduler_from_settings(Settings.from_env({"CARECAST_RETRAIN_INTERVAL_HOURS": "0"})) is None
