"""Promotion gates on simulated holdouts: each gate passes a sound challenger and names itself when it refuses."""

from __future__ import annotations

import doctest
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

import carecast.jobs.retrain
import carecast.models.gates
from carecast.models.gates import (
    Candidate,
    GateDecision,
    Holdout,
    PromotionGates,
    evaluate_gates,
    holdout_attributes,
)

GATES = PromotionGates(n_boot=200)
COLUMNS = ["age", "heart_rate_last_4h", "sex"]
SCHEMA = {"columns": COLUMNS, "numeric": COLUMNS[:2], "categorical": ["sex"], "hash": "h1"}


def _expit(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    """3,000 predictions of 600 patients; the true risk depends on a latent severity."""
    rng = np.random.default_rng(7)
    patients = np.repeat(np.arange(600), 5)
    severity = rng.normal(size=600)[patients] + rng.normal(scale=0.5, size=3000)
    true_risk = _expit(-2.0 + 1.5 * severity)
    y = (rng.random(3000) < true_risk).astype(np.int64)
    sex = np.where(rng.random(600) < 0.5, "female", "male")[patients]
    age = rng.uniform(20, 95, 600)[patients]
    attributes = holdout_attributes(pd.DataFrame({"sex": sex, "age": age, "race": "White", "ethnicity": None}))
    return {"holdout": Holdout(y=y, groups=patients, attributes=attributes), "true": true_risk,
            "weak": _expit(-2.0 + 0.4 * severity + rng.normal(scale=1.5, size=3000)),
            "noise": rng.random(3000), "sex": sex}


def _cand(name: str, p: np.ndarray, schema: Mapping[str, Any] = SCHEMA) -> Candidate:
    return Candidate(name, np.asarray(p, np.float64), schema)


def _decide(world: dict[str, Any], challenger: Candidate, champion: Candidate | None) -> GateDecision:
    return evaluate_gates(world["holdout"], challenger, champion, available_columns=COLUMNS, gates=GATES)


def test_a_better_challenger_passes_every_gate(world: dict[str, Any]) -> None:
    decision = _decide(world, _cand("new", world["true"]), _cand("old", world["weak"]))
    assert decision.promote, decision.summary()
    assert [r.gate for r in decision.results] == ["discrimination", "calibration", "subgroups", "schema"]
    disc = decision.results[0].figures
    assert disc["difference"] > 0.1 and disc["ci_low"] > 0
    assert decision.summary().startswith("all gates passed")
    # JSON-ready, with the thresholds it was judged by
    record = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert record["promote"] and record["thresholds"]["auroc_max_drop"] == GATES.auroc_max_drop


def test_an_equal_challenger_passes(world: dict[str, Any]) -> None:
    decision = _decide(world, _cand("new", world["true"]), _cand("old", world["true"]))
    assert decision.promote and decision.results[0].figures["difference"] == 0


def test_random_scores_are_refused_by_discrimination(world: dict[str, Any]) -> None:
    decision = _decide(world, _cand("new", world["noise"]), _cand("old", world["true"]))
    assert not decision.promote and "discrimination" in decision.failed
    disc = decision.results[0]
    assert disc.figures["ci_high"] < 0 and "worse beyond the CI" in disc.reason
    assert "discrimination" in decision.summary()


def test_a_point_drop_beyond_the_margin_is_refused_even_inside_the_ci(world: dict[str, Any]) -> None:
    strict = PromotionGates(n_boot=200, auroc_max_drop=0.0)
    rng = np.random.default_rng(1)
    slightly_worse = _expit(np.log(world["true"] / (1 - world["true"])) + rng.normal(scale=0.15, size=3000))
    decision = evaluate_gates(world["holdout"], _cand("new", slightly_worse), _cand("old", world["true"]),
                              available_columns=COLUMNS, gates=strict)
    disc = decision.results[0]
    assert disc.figures["difference"] < 0 and not disc.passed and "drop beyond" in disc.reason


def test_overconfident_scores_are_refused_by_calibration(world: dict[str, Any]) -> None:
    logit = np.log(world["true"] / (1 - world["true"]))
    extreme = _expit(3 * logit + 2)  # same ranking, far too extreme: slope about 1/3
    decision = _decide(world, _cand("new", extreme), _cand("old", world["true"]))
    assert decision.failed == ["calibration"]
    cal = decision.results[1]
    assert cal.figures["slope"]["ci_high"] < GATES.calibration_slope_bounds[0] and "outside" in cal.reason
    assert abs(cal.figures["champion_slope"] - 1) < 0.2


def test_a_subgroup_gap_widened_beyond_the_threshold_is_refused(world: dict[str, Any]) -> None:
    unfair = np.where(world["sex"] == "male", world["noise"] * world["true"].mean() * 2, world["true"])
    decision = _decide(world, _cand("new", unfair), _cand("old", world["true"]))
    assert "subgroups" in decision.failed
    sub = decision.results[2]
    assert "sex gap widened" in sub.reason
    assert sub.figures["sex"]["widening"] > GATES.subgroup_max_widening
    assert set(sub.figures["sex"]["challenger_auroc"]) == {"female", "male"}


def test_levels_too_small_are_left_out(world: dict[str, Any]) -> None:
    picky = PromotionGates(n_boot=50, subgroup_min_n=10_000)
    decision = evaluate_gates(world["holdout"], _cand("new", world["true"]), None, available_columns=COLUMNS,
                              gates=picky)
    sub = decision.results[2]
    assert sub.passed and "no attribute" in sub.reason


def test_schema_must_be_served_and_keep_its_kinds(world: dict[str, Any]) -> None:
    unknown = {**SCHEMA, "columns": [*COLUMNS, "lactate_last"], "numeric": [*COLUMNS[:2], "lactate_last"]}
    decision = _decide(world, _cand("new", world["true"], unknown), _cand("old", world["true"]))
    assert decision.failed == ["schema"] and decision.results[3].figures["not_served"] == ["lactate_last"]

    switched = {**SCHEMA, "numeric": ["age", "heart_rate_last_4h", "sex"], "categorical": []}
    decision = _decide(world, _cand("new", world["true"], switched), _cand("old", world["true"]))
    assert decision.failed == ["schema"] and decision.results[3].figures["kind_changed"] == ["sex"]

    same = _decide(world, _cand("new", world["true"]), _cand("old", world["true"])).results[3]
    assert same.passed and same.figures["same_hash"]


def test_without_a_champion_the_absolute_floors_apply(world: dict[str, Any]) -> None:
    good = _decide(world, _cand("first", world["true"]), None)
    assert good.promote and good.against is None
    assert good.results[0].figures["auroc"] >= GATES.min_auroc
    bad = _decide(world, _cand("first", world["noise"]), None)
    assert "discrimination" in bad.failed and "floors" in bad.results[0].reason


def test_inputs_that_cannot_be_compared_are_refused(world: dict[str, Any]) -> None:
    holdout = world["holdout"]
    with pytest.raises(ValueError, match="holdout scores"):
        _decide(world, _cand("new", world["true"][:10]), None)
    with pytest.raises(ValueError, match="one row per prediction"):
        Holdout(y=holdout.y[:5], groups=holdout.groups, attributes=holdout.attributes)
    one_class = Holdout(y=np.zeros(3000, np.int64), groups=holdout.groups, attributes=holdout.attributes)
    with pytest.raises(ValueError, match="both outcomes"):
        evaluate_gates(one_class, _cand("new", world["true"]), None, available_columns=COLUMNS)


def test_docstring_examples() -> None:
    for module in (carecast.models.gates, carecast.jobs.retrain):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0
