"""Same seed and config -> byte-identical files; another seed -> different files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from carecast.simulate import SimulationConfig, SimulationSummary, simulate

from .conftest import SMALL


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(small_run: tuple[Path, SimulationSummary], tmp_path: Path) -> None:
    first, summary = small_run
    again = simulate(SMALL, tmp_path)
    assert _digests(first) == _digests(tmp_path)
    assert {k: v for k, v in again.to_dict().items() if k != "out_dir"} == \
        {k: v for k, v in summary.to_dict().items() if k != "out_dir"}


def test_expected_files_are_written(small_run: tuple[Path, SimulationSummary]) -> None:
    root, summary = small_run
    names = set(_digests(root))
    assert {"Patient.ndjson", "Encounter.ndjson", "Condition.ndjson", "Observation.ndjson",
            "ImagingStudy.ndjson", "DiagnosticReport.ndjson", "wearables.jsonl", "truth/risk.csv",
            "truth/encounters.csv", "truth/summary.json"} <= names
    for name, count in summary.counts.items():
        file_name = "wearables.jsonl" if name == "wearables" else f"{name}.ndjson"
        with open(root / file_name, "rb") as handle:
            assert sum(1 for _ in handle) == count, name


def test_another_seed_differs(small_run: tuple[Path, SimulationSummary], tmp_path: Path) -> None:
    first, _ = small_run
    simulate(SimulationConfig(seed=SMALL.seed + 1, patients=SMALL.patients, days=SMALL.days), tmp_path)
    a, b = _digests(first), _digests(tmp_path)
    assert all(a[name] != b[name] for name in ("Patient.ndjson", "Observation.ndjson", "truth/risk.csv"))
