"""Shared, session-cached builders for the scoring tests: a model trained once on a simulated hospital (a
champion and a second version to promote), and a small simulated hospital to ingest into each test's store.

Builders rather than fixtures so that each test module wraps them in its own fixture (no fixture imports).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import insert, select
from threadpoolctl import threadpool_limits

from carecast.crypto import Keyring
from carecast.features.builder import build_features
from carecast.jobs.ingest import ingest_paths
from carecast.models.calibration import PlattCalibrated
from carecast.models.pipeline import candidates
from carecast.models.registry import Registry
from carecast.models.tasks import TASKS
from carecast.models.training import train_task
from carecast.simulate import SimulationConfig, simulate
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.db import make_engine
from carecast.store.frames import load_frames
from carecast.store.migrate import upgrade
from carecast.store.writer import ClinicalWriter

TASK = "deterioration_24h"
REDIS_URL = os.environ.get("CARECAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_CACHE: dict[str, Any] = {}


@dataclass(frozen=True)
class TrainedModels:
    root: Path  # a registry with `champion` promoted and `other` saved beside it
    champion: str
    other: str
    X: pd.DataFrame  # feature rows of the training hospital, for comparisons with the estimator


def _train(root: Path) -> TrainedModels:
    sim = root / "sim"
    simulate(SimulationConfig(seed=5, patients=300, days=8, wearable_share=0.0), sim)
    engine = make_engine(f"sqlite:///{root / 'train.db'}")
    upgrade(engine)
    keyring = Keyring.generate()
    ingest_paths([sim], ClinicalWriter(engine, keyring))
    frames = load_frames(engine, keyring)
    engine.dispose()
    registry = Registry(root / "models")
    with threadpool_limits(1):  # OpenMP threads on a small, busy machine cost more than they give
        result = train_task(frames, TASK, seed=0, folds=2, n_boot=20)
        champion = registry.save(TASK, result.estimator, result.card)
        # A second real model of the same features to promote: logistic regression on the same cohort.
        cohort = TASKS[TASK].cohort(frames)
        X = build_features(frames, cohort[["patient_id", "encounter_id", "t"]])
        numeric, categorical = result.card["feature_schema"]["numeric"], result.card["feature_schema"]["categorical"]
        logistic = PlattCalibrated(candidates(numeric, categorical)["logistic"], slope=1.0, intercept=0.0)
        logistic.fit(X, cohort["label"].to_numpy())
    other = registry.save(TASK, logistic, {**result.card, "estimator": "logistic"})
    registry.promote(TASK, champion, reason="test champion")
    assert champion != other
    return TrainedModels(root=root / "models", champion=champion, other=other,
                         X=X.sample(n=200, random_state=0).reset_index(drop=True))


def trained_models(factory: pytest.TempPathFactory) -> TrainedModels:
    """Trained once per test session (about 10 s)."""
    if "models" not in _CACHE:
        _CACHE["models"] = _train(factory.mktemp("scoring-models"))
    found: TrainedModels = _CACHE["models"]
    return found


def registry_copy(models: TrainedModels, dest: Path) -> Registry:
    """A private copy of the trained registry, for tests that promote or break models."""
    shutil.copytree(models.root, dest)
    return Registry(dest)


def small_hospital(factory: pytest.TempPathFactory) -> Path:
    """FHIR NDJSON of a small simulated hospital, written once per session."""
    if "hospital" not in _CACHE:
        out = factory.mktemp("scoring-hospital")
        simulate(SimulationConfig(seed=11, patients=8, days=2, wearable_share=0.0), out)
        for extra in ("truth", "encounters.csv", "risk.csv", "summary.json", "wearables.jsonl"):
            target = out / extra
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        _CACHE["hospital"] = out
    found: Path = _CACHE["hospital"]
    return found


def ingest(store: Store, path: Path, hook: Callable[[set[int], datetime | None], None] | None = None) -> None:
    summary = ingest_paths([path], ClinicalWriter(store.engine, store.keyring, on_patients_changed=hook))
    assert summary.total("rejected") == 0, summary.to_dict()


def patient_ids(store: Store) -> list[int]:
    with store.engine.connect() as conn:
        return [int(p) for p in conn.execute(select(S.Patient.id).order_by(S.Patient.id)).scalars()]


def make_patients(store: Store, n: int) -> list[int]:
    """Bare patient rows (the queue only needs their ids to exist)."""
    now = datetime.now(UTC)
    rows = [{"uid": str(uuid.uuid4()), "source_key": uuid.uuid4().hex, "content_hash": uuid.uuid4().hex,
             "sex": "unknown", "created_at": now, "updated_at": now} for _ in range(n)]
    with store.engine.begin() as conn:
        conn.execute(insert(S.table(S.Patient)), rows)
    return patient_ids(store)[-n:]


def redis_prefix() -> Iterator[str]:
    """A unique key prefix on the test Redis, deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:  # pragma: no cover - environment problem, reported clearly
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({type(exc).__name__}); start it or set "
                    "CARECAST_TEST_REDIS_URL")
    prefix = f"cc-test-{uuid.uuid4().hex[:10]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
