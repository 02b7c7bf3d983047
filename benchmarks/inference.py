"""Single-row scoring cost: the fitted scikit-learn pipeline against its compiled fast path.

For each candidate model (logistic regression, gradient boosting) fitted on synthetic rows shaped like the
feature spec (every numeric column with ~20% missing, the categorical columns with frequent, rare and
absent levels) and Platt-calibrated on held-out rows, this times one row at a time:

- reference: `PlattCalibrated.predict_proba` on a one-row DataFrame (the pipeline as trained);
- fast path: `FastModel.predict_one` on the same row as a float array plus a list of levels, including
  the top-5 explanation.

Each is timed with time.perf_counter_ns over --calls calls on distinct rows after a warm-up, and p50/p99
are printed with their ratio; so is the largest |Δp| between the two over --calls random rows, and
whether the fast path meets the 100 µs budget (at p50 and at p99).

    python benchmarks/inference.py [--rows 20000] [--calls 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from carecast.features.spec import default_spec
from carecast.models.calibration import PlattCalibrated, fit_platt
from carecast.models.fastpath import compile_model
from carecast.models.pipeline import candidates

BUDGET_US = 100.0
WARM_UP = 200


def synthetic_rows(numeric: list[str], categorical: list[str], n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Numeric columns: correlated normals, ~20% NaN. Categoricals: 6 frequent levels, 3 rare ones, ~5% None."""
    shared = rng.normal(size=(n, 1))
    X = pd.DataFrame(0.6 * shared + 0.8 * rng.normal(size=(n, len(numeric))), columns=numeric)
    X = X.mask(rng.random(X.shape) < 0.2)
    levels = np.array([f"level_{k}" for k in range(6)] + ["rare_1", "rare_2", "rare_3"], dtype=object)
    weights = np.array([30, 25, 20, 12, 8, 4.9, 0.0002, 0.0002, 0.0002])
    for name in categorical:
        values = rng.choice(levels, size=n, p=weights / weights.sum())
        values[rng.random(n) < 0.05] = None
        X[name] = values
    return X


def outcome(X: pd.DataFrame, numeric: list[str], categorical: list[str], rng: np.random.Generator) -> np.ndarray:
    """A few numeric features, one interaction and one level drive the risk (~15% prevalence)."""
    v = np.nan_to_num(X[numeric[:6]].to_numpy())
    margin = (-2.0 + 0.9 * v[:, 0] - 0.6 * v[:, 1] + 0.5 * v[:, 2] * v[:, 3] + 0.4 * np.abs(v[:, 4])
              + 0.7 * (X[categorical[0]] == "level_1").to_numpy())
    return (rng.random(len(X)) < 1.0 / (1.0 + np.exp(-margin))).astype(int)


def timed(call: Callable[[int], object], calls: int) -> np.ndarray:
    for i in range(WARM_UP):
        call(i)
    out = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter_ns()
        call(i)
        out[i] = time.perf_counter_ns() - t0
    return out / 1000.0  # µs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="training rows (a quarter more are held out)")
    parser.add_argument("--calls", type=int, default=2_000, help="timed calls, and rows compared, per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    spec = default_spec()
    numeric, categorical = spec.numeric_columns(), spec.categorical
    rng = np.random.default_rng(args.seed)
    held_out = args.rows // 4
    X = synthetic_rows(numeric, categorical, args.rows + held_out, rng)
    y = outcome(X, numeric, categorical, rng)
    X_fit, y_fit, X_cal, y_cal = X.iloc[:args.rows], y[:args.rows], X.iloc[args.rows:], y[args.rows:]
    scoring = synthetic_rows(numeric, categorical, args.calls, rng)
    scoring.loc[scoring.index[::10], categorical[1]] = "never_seen_in_training"
    numeric_rows = scoring[numeric].to_numpy(dtype=np.float64)
    level_rows = [list(r) for r in scoring[categorical].itertuples(index=False)]
    one_row_frames = [scoring.iloc[[i]] for i in range(len(scoring))]

    print(f"{args.rows:,} training rows x {len(numeric)} numeric + {len(categorical)} categorical features; "
          f"{args.calls:,} timed single-row calls per model after {WARM_UP} warm-up calls")
    header = (f"{'model':<24}{'sklearn p50':>12}{'p99':>10}{'fast p50':>10}{'p99':>9}{'ratio p50':>11}"
              f"{'max |Δp|':>10}  within {BUDGET_US:.0f} µs (p50 / p99)")
    print(header)
    print("-" * len(header))
    n = len(one_row_frames)
    for kind, pipeline in candidates(numeric, categorical, seed=args.seed).items():
        model = PlattCalibrated(pipeline).fit(X_fit, y_fit)
        slope, intercept = fit_platt(model.estimator_.predict_proba(X_cal)[:, 1], y_cal)
        model.set_params(slope=slope, intercept=intercept)
        fast = compile_model(model)

        reference = timed(lambda i, model=model: model.predict_proba(one_row_frames[i % n]), args.calls)
        compiled = timed(lambda i, fast=fast: fast.predict_one(numeric_rows[i % n], level_rows[i % n]), args.calls)

        expected = model.predict_proba(scoring)[:, 1]
        got = np.array([fast.predict_one(numeric_rows[i], level_rows[i]).probability for i in range(n)])
        max_dp = float(np.abs(got - expected).max())

        ref50, ref99 = np.percentile(reference, [50, 99])
        fast50, fast99 = np.percentile(compiled, [50, 99])
        verdict = " / ".join("met" if t <= BUDGET_US else "MISSED" for t in (fast50, fast99))
        print(f"{kind:<24}{ref50:>10,.0f}µs{ref99:>8,.0f}µs{fast50:>8.1f}µs{fast99:>7.1f}µs{ref50 / fast50:>10,.0f}x"
              f"{max_dp:>10.1e}  {verdict}")
    # Percentiles of microsecond calls move with whatever else the machine runs; say what that was.
    print(f"{os.cpu_count()} CPUs; load average over the last minute: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
