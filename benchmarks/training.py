"""Training time for deterioration_24h at about 100,000 predictions, end to end.

Simulates a hospital large enough for ~100k ward vital-sign sets (no wearables, to keep ingestion
short), ingests it into a temporary SQLite store, then times `train_task` phase by phase (reading
the store, cohort, features, cross-validated selection, final fit, validation with 500 bootstrap
resamples). Reference measured in the same run: one fit of the chosen candidate on the same rows,
the floor below which selection and validation cannot go.

    python benchmarks/training.py [--patients 4000] [--days 21]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

from carecast.crypto import Keyring
from carecast.jobs.ingest import ingest_paths
from carecast.models.training import train_task
from carecast.simulate import SimulationConfig, simulate
from carecast.store.db import make_engine
from carecast.store.frames import load_frames
from carecast.store.migrate import upgrade
from carecast.store.writer import ClinicalWriter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=4000)
    parser.add_argument("--days", type=float, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        sim = simulate(SimulationConfig(seed=7, patients=args.patients, days=args.days, wearable_share=0.0),
                       work / "sim")
        print(f"simulated {sim.n_prediction_points:,} ward vital-sign sets in {time.perf_counter() - t:.1f} s")
        engine = make_engine(f"sqlite:///{work / 'bench.db'}")
        upgrade(engine)
        keyring = Keyring.generate()
        t = time.perf_counter()
        ingest_paths([work / "sim"], ClinicalWriter(engine, keyring))
        print(f"ingested in {time.perf_counter() - t:.1f} s")
        marks: list[tuple[float, str]] = []
        start = time.perf_counter()
        frames = load_frames(engine, keyring)
        marks.append((time.perf_counter(), "read the store"))
        result = train_task(frames, "deterioration_24h", n_boot=500,
                            progress=lambda m: marks.append((time.perf_counter(), m)))
        total = time.perf_counter() - start
        previous = start
        for when, message in marks:
            print(f"  {when - previous:6.1f} s  then: {message}")
            previous = when
        print(f"  {time.perf_counter() - previous:6.1f} s  validation and report")
        n = result.report["n_train"] + result.report["n_test"]
        print(f"deterioration_24h: {n:,} predictions ({result.report['n_train']:,} train), chosen "
              f"{result.report['chosen']}, model fit {result.report['training_seconds']:.1f} s, "
              f"end to end {total:.1f} s (target <= 60 s for 100,000)")
        print(f"AUROC {result.report['metrics']['auroc']['value']:.3f}")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
