"""Measure the drift check: its false-alarm rate on independent same-distribution hospitals and its detection
rate on shifted ones (the simulator's `older`, `sicker` and `covid` populations).

A deterioration_24h model is trained on the hospital of seed 0; then, for `--samples` other seeds per
condition, a hospital of the same size is simulated (unshifted, or with a shift), ingested into its own SQLite
store and checked by `check_drift` (the code behind `carecast monitor drift`) over each window of `--windows`
(hours back from the end of the data). An alarm is status "alert"; "warn" is counted apart.

    .venv/bin/python benchmarks/drift.py [--patients 300] [--days 8] [--samples 10] [--windows 720,72]

Prints one line per sample and a table of rates with Wilson 95% intervals; `--json FILE` writes them too.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from carecast.crypto import Keyring
from carecast.jobs.ingest import ingest_paths
from carecast.jobs.training import run_training
from carecast.models.metrics import wilson_interval
from carecast.models.registry import Registry
from carecast.monitoring.drift import check_drift
from carecast.simulate import SHIFTS, SimulationConfig, simulate
from carecast.store import Store
from carecast.store.db import make_engine
from carecast.store.migrate import upgrade
from carecast.store.writer import ClinicalWriter

TASK = "deterioration_24h"


def hospital_store(root: Path, seed: int, patients: int, days: float, shift: str | None) -> Store:
    simulate(SimulationConfig(seed=seed, patients=patients, days=days, wearable_share=0.0, shift=shift), root / "sim")
    engine = make_engine(f"sqlite:///{root / 'carecast.db'}")
    upgrade(engine)
    store = Store(engine=engine, keyring=Keyring.generate())
    ingest_paths([root / "sim"], ClinicalWriter(store.engine, store.keyring))
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--days", type=float, default=8.0)
    parser.add_argument("--samples", type=int, default=10, help="Hospitals per condition.")
    parser.add_argument("--windows", default="720,72", help="Comma-separated window lengths in hours.")
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--json", dest="json_out", type=Path, default=None)
    args = parser.parse_args()
    windows = [float(w) for w in args.windows.split(",")]
    conditions: list[str | None] = [None, *sorted(SHIFTS)]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        base = Path(tmp)
        started = time.perf_counter()
        train_store = hospital_store(base / "train", 0, args.patients, args.days, None)
        registry = Registry(base / "models")
        run = run_training(train_store, registry, TASK, seed=0, folds=2, n_boot=20)
        train_store.close()
        print(f"trained {TASK} {run.version} on {args.patients} patients over {args.days:g} days "
              f"({run.result.card['training_data']['n']} rows) in {time.perf_counter() - started:.0f} s")
        for c_index, condition in enumerate(conditions):
            for i in range(args.samples):
                seed = args.first_seed + 100 * c_index + i
                store = hospital_store(base / f"{condition or 'base'}-{seed}", seed, args.patients, args.days,
                                       condition)
                try:
                    for hours in windows:
                        t0 = time.perf_counter()
                        report = check_drift(store, registry, TASK, since_hours=hours)
                        seconds = time.perf_counter() - t0
                        psis = [f.psi for f in report.features if f.psi is not None]
                        row = {"condition": condition or "none", "seed": seed, "window_hours": hours,
                               "status": report.status, "n_rows": report.n_rows, "n_patients": report.n_patients,
                               "max_psi": max(psis) if psis else None,
                               "alerting": [f.feature for f in report.flagged if f.level == "alert"],
                               "warning": [f.feature for f in report.flagged if f.level == "warn"],
                               "check_seconds": seconds}
                        results.append(row)
                        print(f"  {row['condition']:<6} seed {seed} window {hours:g} h: {report.status:<17} "
                              f"{report.n_rows} rows of {report.n_patients} patients, max PSI {row['max_psi']:.3f}, "
                              f"alerts {row['alerting'][:4]}")
                finally:
                    store.close()
    print()
    print(f"{'shift':<8}{'window h':>9}{'n':>4}{'alert rate':>12}{'95% CI':>16}{'warn-or-alert':>15}"
          f"{'median max PSI':>16}  most frequent alerting features")
    summary = []
    for condition in conditions:
        name = condition or "none"
        for hours in windows:
            rows = [r for r in results if r["condition"] == name and r["window_hours"] == hours]
            alerts = sum(r["status"] == "alert" for r in rows)
            flagged = sum(r["status"] in ("alert", "warn") for r in rows)
            low, high = wilson_interval(alerts, len(rows))
            common = Counter(f for r in rows for f in r["alerting"]).most_common(3)
            median_psi = float(np.median([r["max_psi"] for r in rows if r["max_psi"] is not None]))
            summary.append({"shift": name, "window_hours": hours, "n": len(rows), "alert_rate": alerts / len(rows),
                            "alert_rate_ci": [low, high], "warn_or_alert_rate": flagged / len(rows),
                            "median_max_psi": median_psi, "common_alerts": common})
            print(f"{name:<8}{hours:>9g}{len(rows):>4}{alerts / len(rows):>12.2f}{f'{low:.2f}-{high:.2f}':>16}"
                  f"{flagged / len(rows):>15.2f}{median_psi:>16.3f}  {', '.join(f'{f} ({k})' for f, k in common)}")
    print("\nshift 'none' row: the false-alarm rate (same distribution, other seeds); the others: detection rates.")
    print(f"check_drift: median {np.median([r['check_seconds'] for r in results]):.2f} s per check "
          f"(load, features, comparison) on {args.patients}-patient stores")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": vars(args) | {"json_out": str(args.json_out)},
                                             "summary": summary, "samples": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
