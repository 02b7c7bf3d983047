"""The model report: files written, numbers carried into the Markdown, NaN written as JSON null."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from carecast.models.metrics import (
    age_band,
    binary_metrics,
    compare_auroc,
    reliability_curve,
    subgroup_metrics,
    threshold_table,
)
from carecast.models.report import FIGURES, render_markdown, to_jsonable, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scored() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(21)
    n = 1200
    severity = rng.normal(size=n)
    p = 1.0 / (1.0 + np.exp(-(-2.2 + 1.4 * severity)))
    y = (rng.random(n) < p).astype(int)
    news2 = np.clip(np.round(2.5 + 1.5 * severity + rng.normal(0.0, 1.5, size=n)), 0, 20)
    return {"y": y, "p": p, "news2": news2, "patient": np.arange(n) // 4, "age": rng.uniform(16, 95, size=n)}


@pytest.fixture(scope="module")
def report(scored) -> dict:
    y, p = scored["y"], scored["p"]
    n = y.size
    times = pd.Series(pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"))
    events = times.where(y == 1) + pd.Timedelta(hours=6)
    thresholds = threshold_table(
        y, p, times=times, event_times=events, encounter_ids=scored["patient"], patient_days=n / 6
    )
    attributes = pd.DataFrame({
        "sex": np.where(np.arange(n) % 2 == 0, "female", "male"),
        "age_band": age_band(scored["age"]),
    })
    news2_auc = binary_metrics(y, scored["news2"] / 20, scored["patient"], n_boot=50)["auroc"]
    return {
        "task": "deterioration_24h",
        "description": "ICU transfer or death within 24 h of a set of vital signs.",
        "model_version": "deterioration_24h-20240301-abc123",
        "created_at": "2024-03-01T12:00:00+00:00",
        "candidate_cv": {"logistic": {"auroc_mean": 0.801, "auroc_std": 0.012}, "hgb": {"auroc_mean": 0.823,
                                                                                       "auroc_std": 0.011}},
        "chosen": "hgb",
        "calibration_method": "isotonic",
        "n_train": 5000,
        "n_test": n,
        "prevalence_train": 0.15,
        "prevalence_test": float(y.mean()),
        "metrics": binary_metrics(y, p, scored["patient"], n_boot=50),
        "baselines": {"news2": {"auroc": news2_auc,
                                "difference": compare_auroc(y, p, scored["news2"], scored["patient"], n_boot=50)}},
        "oracle": {"auroc": 0.8771, "note": "The simulator's true risk."},
        "reliability": reliability_curve(y, p),
        "thresholds": thresholds,
        "chosen_threshold": thresholds[3],
        "subgroups": subgroup_metrics(y, p, attributes, groups=scored["patient"], n_boot=30, min_n=200),
        "training_seconds": 12.3456,
        "something_new": {"ignored": True},
    }


def test_write_report_writes_every_file(tmp_path, report, scored):
    paths = write_report(report, tmp_path / "out", y=scored["y"], p=scored["p"], baselines={"news2": scored["news2"]})
    assert set(paths) == {"json", "markdown", *FIGURES}
    for name, file in FIGURES.items():
        assert paths[name] == tmp_path / "out" / file
        assert paths[name].read_bytes().startswith(PNG_MAGIC)
        assert paths[name].stat().st_size > 5_000
    assert json.loads(paths["json"].read_text())["task"] == "deterioration_24h"
    assert paths["markdown"].read_text() == render_markdown(report)


def test_markdown_carries_the_key_numbers(report):
    md = render_markdown(report)
    auc = report["metrics"]["auroc"]
    assert md.startswith("# Model validation report: deterioration_24h")
    assert f"{auc['value']:.3f} (95% CI {auc['ci_low']:.3f} to {auc['ci_high']:.3f})" in md
    diff = report["baselines"]["news2"]["difference"]
    assert f"{diff['difference']:+.3f}" in md
    assert f"{diff['ci_low']:.3f} to {diff['ci_high']:.3f}" in md
    assert "| NEWS2 |" in md
    assert "0.877" in md and "The simulator's true risk." in md
    chosen = report["chosen_threshold"]
    assert f"{chosen['threshold']:.3f} (chosen)" in md
    assert f"{chosen['alerts_per_100_patient_days']:.3f}" in md
    assert f"{report['metrics']['calibration_slope']['value']:.3f}" in md
    assert "| hgb (chosen) | 0.823 | 0.011 |" in md
    assert "### Age band" in md and "too few to estimate" in md  # "<18" has fewer than 200 predictions
    assert "12.346 s" in md
    for file in FIGURES.values():
        assert f"]({file})" in md
    assert "something_new" not in md


def test_markdown_threshold_table_has_one_row_per_threshold(report):
    md = render_markdown(report)
    header = next(line for line in md.splitlines() if line.startswith("| Threshold |"))
    lines = md.splitlines()
    start = lines.index(header) + 2
    body = [line for line in lines[start:start + len(report["thresholds"]) + 1] if line.startswith("|")]
    assert len(body) == len(report["thresholds"])
    assert "Alerts per 100 patient-days" in header and "PPV" in header and "Median lead time (h)" in header


def test_render_markdown_copes_with_sparse_and_missing_values():
    md = render_markdown({})
    assert md.startswith("# Model validation report")
    md = render_markdown({
        "task": "readmission_30d",
        "metrics": {"auroc": {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan}},
        "baselines": {"lace": {"auroc": {"value": 0.684}}},
        "subgroups": {"sex": {"female": {"n": 3, "too_small": 1}}},
        "unknown_section": [1, 2, 3],
    })
    assert "AUROC was n/a (95% CI n/a)" in md
    assert "| LACE index | 0.684 | n/a | n/a | n/a |" in md
    assert "| female | 3 | too few to estimate |" in md


def test_nan_is_written_as_null(tmp_path, scored):
    report = {
        "task": "t",
        "metrics": {"calibration_slope": {"value": math.nan, "ci_low": float("inf"), "ci_high": np.float64("nan")}},
        "counts": np.array([1, 2]),
        "n": np.int64(3),
        "thresholds": [{"threshold": 0.5, "ppv": math.nan, "sensitivity": 0.0, "alerts_per_100_patient_days": 0.0}],
    }
    paths = write_report(report, tmp_path, y=scored["y"], p=scored["p"])
    text = paths["json"].read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["metrics"]["calibration_slope"] == {"value": None, "ci_low": None, "ci_high": None}
    assert data["thresholds"][0]["ppv"] is None
    assert data["counts"] == [1, 2] and data["n"] == 3
    assert paths["reliability"].read_bytes().startswith(PNG_MAGIC)  # computed from y and p when not in the report


def test_a_report_read_back_from_json_renders_again(tmp_path, report, scored):
    """Nulls where NaN was must not break the Markdown or the figures."""
    report = json.loads(json.dumps(to_jsonable(report)))
    report["metrics"]["calibration_slope"]["value"] = None
    report["reliability"][0]["high"] = None
    report["thresholds"][0]["ppv"] = None
    paths = write_report(report, tmp_path, y=scored["y"], p=scored["p"])
    assert "| Calibration slope (1 is ideal; < 1 predictions too extreme) | n/a |" in paths["markdown"].read_text()


def test_to_jsonable_handles_numpy_and_timestamps():
    value = {"a": (np.float32(0.5), np.bool_(True)), 1: pd.Timestamp("2024-01-01", tz="UTC")}
    assert to_jsonable(value) == {"a": [0.5, True], "1": "2024-01-01T00:00:00+00:00"}


def test_write_report_rejects_mismatched_baseline(tmp_path, scored):
    with pytest.raises(ValueError, match="baseline"):
        write_report({}, tmp_path, y=scored["y"], p=scored["p"], baselines={"news2": [1.0, 2.0]})
