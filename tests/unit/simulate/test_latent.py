"""The latent model: its chain, and the oracle risk's calibration and discrimination."""

from __future__ import annotations

import numpy as np
import pytest

from carecast.simulate import SimulationConfig
from carecast.simulate.latent import (
    Covariates,
    LatentParameters,
    OracleRisk,
    SeverityChain,
    simulate_courses,
)
from carecast.simulate.metrics import auroc, calibration_table
from carecast.simulate.plan import Planner


@pytest.fixture(scope="module")
def chain() -> SeverityChain:
    return SeverityChain(LatentParameters())


def test_transition_matrix_is_stochastic_and_matches_sampling(chain: SeverityChain) -> None:
    matrix = chain.transition
    assert np.allclose(matrix.sum(axis=1), 1.0)
    assert (matrix >= 0).all()
    rng = np.random.default_rng(0)
    start = np.full(200_000, chain.index_of(np.array([1.5]))[0])
    empirical = np.bincount(chain.step(start, rng.standard_normal(len(start))), minlength=chain.size)
    expected = matrix[start[0]] * len(start)
    big = expected > 200
    assert np.all(np.abs(empirical[big] - expected[big]) < 5 * np.sqrt(expected[big]))


def test_oracle_is_calibrated_against_fresh_courses(chain: SeverityChain) -> None:
    """P(ICU or death within 24 h) from the dynamic programme equals the simulated frequency, for
    prediction times on and between hour boundaries."""
    rng = np.random.default_rng(11)
    n = 6000
    setpoint = rng.normal(0.0, 1.5, n)
    cov = Covariates(rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.normal(0, 0.3, n))
    start = chain.index_of(rng.normal(1.0, 1.0, n))
    courses = simulate_courses(chain, np.random.default_rng(12), start, setpoint, cov, np.full(n, 26))
    oracle = OracleRisk(chain, setpoint, cov)
    # Predict at minute 30 of hour 0: the patient must still be on the ward then.
    fraction = np.full(n, 0.5)
    risk = oracle.risk(np.arange(n), start.astype(np.int64), fraction)
    first = np.full(n, np.inf)
    alive = np.ones(n, dtype=bool)
    for i, events in enumerate(courses.events):
        for hour, kind in events:
            if hour <= 0.5:
                alive[i] = False
                break
            if kind in ("icu", "death"):
                first[i] = hour
                break
    label = first[alive] - 0.5 <= 24.0
    risk = risk[alive]
    assert abs(risk.mean() - label.mean()) < 3 * np.sqrt(label.mean() * (1 - label.mean()) / len(label))
    for group in calibration_table(risk, label, bins=5):
        tolerance = 4 * np.sqrt(max(group["mean_risk"], 0.002) / group["n"]) + 0.01
        assert abs(group["mean_risk"] - group["observed_rate"]) < tolerance
    assert auroc(risk, label) > 0.75


def test_oracle_risk_grows_with_severity(chain: SeverityChain) -> None:
    oracle = OracleRisk(chain, np.zeros(1), Covariates(np.zeros(1), np.zeros(1), np.zeros(1)))
    x = np.arange(chain.size, dtype=np.int64)
    risk = oracle.risk(np.zeros(chain.size, dtype=np.int64), x, np.zeros(chain.size))
    assert np.all(np.diff(risk) >= -1e-12)
    assert risk[0] < 0.01 < 0.5 < risk[-1] <= 1.0


def test_hospital_oracle_discriminates_and_is_calibrated() -> None:
    """Across a week of a 600-patient hospital (planning only, no files), the true risk at each ward
    vitals set predicts deterioration within 24 h well, and its mean matches the realised rate."""
    plan = Planner(SimulationConfig(seed=5, patients=600, days=7.0)).plan()
    risk = plan.risk
    assert len(risk) > 5000
    score = auroc(risk.risk, risk.label)
    assert 0.75 < score < 0.99
    # Rows of one admission are correlated, so the tolerance is loose: a factor, not a binomial interval.
    assert 0.6 < risk.risk.mean() / risk.label.mean() < 1.6
    deteriorations = sum(1 for adm in plan.admissions if adm.deterioration_times())
    assert 0.02 < deteriorations / len(plan.admissions) < 0.15


def test_auroc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    score = np.round(rng.random(300), 1)  # ties
    label = rng.random(300) < 0.3
    pos, neg = score[label], score[~label]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg))
    assert auroc(score, label) == pytest.approx(pairwise)
    assert np.isnan(auroc(score, np.zeros(300, dtype=bool)))
