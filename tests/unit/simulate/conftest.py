"""Small simulated hospitals shared by the simulator's tests (each is run once per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from carecast.simulate import SimulationConfig, SimulationSummary, simulate

SMALL = SimulationConfig(seed=7, patients=40, days=3.0)


def read_ndjson(path: Path) -> Iterator[dict]:
    with open(path, "rb") as handle:
        for line in handle:
            yield orjson.loads(line)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimulationSummary]:
    out = tmp_path_factory.mktemp("small")
    return out, simulate(SMALL, out)


@pytest.fixture(scope="session")
def medium_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimulationSummary]:
    """Enough admissions for deaths, ICU transfers, readmissions and imaging to all occur."""
    out = tmp_path_factory.mktemp("medium")
    return out, simulate(SimulationConfig(seed=3, patients=250, days=6.0, wearable_share=0.05), out)
