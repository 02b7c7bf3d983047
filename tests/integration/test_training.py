"""Training end to end on the store (simulated hospital), on a CSV table, and on SUPPORT2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from carecast.cli import main
from carecast.jobs.ingest import ingest_paths
from carecast.jobs.training import run_training
from carecast.models.registry import Registry
from carecast.simulate import SimulationConfig, simulate
from carecast.store import Store


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train-hospital")
    simulate(SimulationConfig(seed=5, patients=500, days=10, wearable_share=0.0), out)
    return out


def test_train_deterioration_on_the_store(store: Store, hospital: Path, tmp_path: Path) -> None:
    ingest_paths([hospital], store.writer())
    registry = Registry(tmp_path / "models")
    run = run_training(store, registry, "deterioration_24h", truth_csv=hospital / "truth" / "risk.csv", n_boot=100)
    report = run.result.report
    assert run.alias == "champion"  # the task's first model
    assert report["n_train"] > 1000 and report["n_test"] > 300
    auroc = report["metrics"]["auroc"]
    assert auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"]
    assert auroc["value"] > 0.65  # learnable: the simulator's vitals carry the latent state
    assert {"news2", "qsofa", "lace"} <= set(report["baselines"])
    assert 0.7 < report["oracle"]["auroc"] <= 1.0
    assert report["thresholds"] and report["subgroups"]["sex"]
    card = registry.card("deterioration_24h", "champion")
    assert card["feature_schema"]["hash"] and len(card["feature_schema"]["columns"]) > 100
    assert card["training_data"]["snapshot_sha256"] and card["model_sha256"]
    assert card["reference"]["heart_rate_last_4h"]["shares"]
    loaded = registry.load("deterioration_24h")
    report_dir = tmp_path / "models" / "deterioration_24h" / run.version / "report"
    assert {"report.json", "report.md", "reliability.png", "roc.png"} <= {p.name for p in report_dir.iterdir()}
    assert loaded.version == run.version
    second = run_training(store, registry, "deterioration_24h", n_boot=50)
    assert second.alias == "challenger"


def test_train_on_a_csv_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 1500
    age = rng.normal(65, 12, n)
    lactate = rng.gamma(2, 1, n)
    ward = rng.choice(["A", "B", "C"], n)
    risk = 1 / (1 + np.exp(-(-4 + 0.04 * (age - 65) + 0.8 * lactate + (ward == "C"))))
    df = pd.DataFrame({"pid": np.arange(n) // 2, "age": age, "lactate": lactate, "ward": ward,
                       "died": (rng.random(n) < risk).astype(int), "leak": 0})
    df["leak"] = df["died"]
    path = tmp_path / "cohort.csv"
    df.to_csv(path, index=False)
    result = CliRunner().invoke(main, ["train", "--table", str(path), "--target", "died", "--id-column", "pid",
                                       "--drop", "leak", "--bootstrap", "50"],
                                env={"CARECAST_DATA_DIR": str(tmp_path / "var")})
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    assert "leak" not in out["features"] and "died" not in out["features"] and "pid" not in out["features"]
    assert 0.7 < out["auroc"]["value"] < 0.99
    assert out["auroc"]["ci_low"] < out["auroc"]["value"] < out["auroc"]["ci_high"]


def test_support2_benchmark_keeps_baselines_out_of_the_features(tmp_path: Path) -> None:
    from carecast.models.tabular import benchmark_support2

    out = benchmark_support2(n_boot=50)
    forbidden = {"num_surv2m", "num_surv6m", "fac_sfdm2", "num_aps", "fac_dnr", "event", "time",
                 "support_model_risk_180d", "physiology_score"}
    assert not forbidden & set(out["features"])
    assert {"num_sps", "dnr_before_entry", "fac_dzgroup"} <= set(out["features"])  # day-3 score and baseline facts
    assert out["n_train"] + out["n_test"] > 8000
    assert 0.7 < out["auroc"]["value"] < 0.85
    support = out["baselines"]["support_model"]
    assert 0.75 < support["auroc"]["value"] < 0.85
    # The target, on the same test patients: above the SUPPORT model's own (in-sample) estimate.
    assert support["difference"]["difference"] > 0
    assert out["auroc"]["value"] > support["auroc"]["value"]
