"""Session-cached simulated hospitals for the monitoring tests: one to train on, and independent samples
(other seeds, with or without a population shift), each ingested into its own SQLite store.

Builders rather than fixtures so that each test module wraps them in its own fixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from threadpoolctl import threadpool_limits

from carecast.crypto import Keyring, write_key_file
from carecast.domain.frames import ClinicalFrames
from carecast.jobs.ingest import ingest_paths
from carecast.jobs.training import run_training
from carecast.models.registry import Registry
from carecast.simulate import SimulationConfig, simulate
from carecast.store import Store
from carecast.store.db import make_engine
from carecast.store.frames import load_frames
from carecast.store.migrate import upgrade
from carecast.store.writer import ClinicalWriter

TASK = "deterioration_24h"
PATIENTS, DAYS = 300, 8.0  # the false-alarm benchmark shows ~300 patients keep same-distribution PSIs below 0.25
_CACHE: dict[Any, Any] = {}


@dataclass(frozen=True)
class Hospital:
    url: str
    key_file: Path
    keyring: Keyring
    frames: ClinicalFrames

    def store(self) -> Store:
        return Store(engine=make_engine(self.url), keyring=self.keyring)


def hospital(factory: pytest.TempPathFactory, seed: int, shift: str | None = None) -> Hospital:
    """A simulated hospital (PATIENTS patients over DAYS days, no wearables) in its own SQLite store."""
    key = (seed, shift)
    if key not in _CACHE:
        root = factory.mktemp(f"monitoring-{seed}-{shift or 'base'}")
        simulate(SimulationConfig(seed=seed, patients=PATIENTS, days=DAYS, wearable_share=0.0, shift=shift),
                 root / "sim")
        url = f"sqlite:///{root / 'carecast.db'}"
        engine = make_engine(url)
        upgrade(engine)
        keyring = Keyring.generate()
        ingest_paths([root / "sim"], ClinicalWriter(engine, keyring))
        frames = load_frames(engine, keyring)
        engine.dispose()
        write_key_file(root / "keyring.json", keyring)
        _CACHE[key] = Hospital(url=url, key_file=root / "keyring.json", keyring=keyring, frames=frames)
    found: Hospital = _CACHE[key]
    return found


def trained_registry(factory: pytest.TempPathFactory) -> Registry:
    """A registry whose deterioration_24h champion was trained on the hospital of seed 0."""
    if "registry" not in _CACHE:
        base = hospital(factory, 0)
        registry = Registry(factory.mktemp("monitoring-models"))
        store = base.store()
        try:
            with threadpool_limits(1):
                run_training(store, registry, TASK, seed=0, folds=2, n_boot=20)
        finally:
            store.close()
        _CACHE["registry"] = registry
    found: Registry = _CACHE["registry"]
    return found
