"""The synthetic hospital ingests whole, on SQLite and PostgreSQL: nothing refused, outcomes as simulated,
and a second ingest changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from carecast.errors import ExitCode
from carecast.jobs.ingest import ingest_paths
from carecast.simulate import SimulationConfig, SimulationSummary, simulate
from carecast.store import Store, queries


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimulationSummary]:
    out = tmp_path_factory.mktemp("hospital")
    summary = simulate(SimulationConfig(seed=3, patients=120, days=5, wearable_share=0.2), out)
    return out, summary


def test_simulated_hospital_ingests_whole(store: Store, hospital: tuple[Path, SimulationSummary]) -> None:
    out, sim = hospital
    result = ingest_paths([out], store.writer())
    assert result.exit_code == ExitCode.OK, result.to_dict()
    assert result.total("rejected") == 0
    counts = queries.counts(store.engine)
    assert counts["patients"] == sim.counts["Patient"]
    assert counts["imaging_studies"] == sim.counts["ImagingStudy"]
    assert counts["conditions"] == sim.counts["Condition"]
    wearable_lines = sim.counts["wearables"]
    assert 0.98 * wearable_lines <= queries.observation_counts_by(store.engine, "source")["wearable"] <= wearable_lines
    outcomes = queries.outcome_counts(store.engine)
    assert outcomes.get("death", 0) >= sim.n_deaths
    assert outcomes.get("icu_transfer", 0) >= sim.n_icu_transfers
    again = ingest_paths([out], store.writer())
    assert again.total("inserted") == 0 and again.total("updated") == 0
    assert queries.counts(store.engine)["observations"] == counts["observations"]
