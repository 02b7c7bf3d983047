"""Benchmark the synthetic hospital: seconds and lines per second for 1,000 patients over 7 days with
wearables, and the ratio against a reference measured in the same run: writing the same number of
precomputed lines (real resources from the run, already parsed into dicts) with orjson alone.

    .venv/bin/python benchmarks/simulate.py [--patients 1000] [--days 7] [--seed 0]

The ratio says how much the simulation itself costs over bare serialisation; it is stable across
machines where the absolute seconds are not.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import orjson

from carecast.simulate import FILE_NAMES, SimulationConfig, simulate

SAMPLE = 512  # lines per file re-serialised by the reference


def reference_write(run_dir: Path, counts: dict[str, int], out_dir: Path) -> float:
    """Seconds to write `counts` lines per file by cycling through parsed lines of the real output."""
    samples = {}
    for name, file_name in FILE_NAMES.items():
        with open(run_dir / file_name, "rb") as handle:
            samples[name] = [orjson.loads(line) for line in itertools.islice(handle, SAMPLE)]
    started = time.perf_counter()
    for name, file_name in FILE_NAMES.items():
        objects = samples[name]
        if not objects:
            continue
        with open(out_dir / file_name, "wb", buffering=1 << 20) as handle:
            dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
            for obj in itertools.islice(itertools.cycle(objects), counts[name]):
                handle.write(dumps(obj, option=newline))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wearable-share", type=float, default=0.3)
    args = parser.parse_args()
    config = SimulationConfig(seed=args.seed, patients=args.patients, days=args.days,
                              wearable_share=args.wearable_share)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, ref_dir = Path(tmp) / "run", Path(tmp) / "reference"
        ref_dir.mkdir()
        started = time.perf_counter()
        summary = simulate(config, run_dir)
        seconds = time.perf_counter() - started
        reference = reference_write(run_dir, summary.counts, ref_dir)
        size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())

    lines = sum(summary.counts.values())
    fhir = lines - summary.counts["wearables"]
    print(f"simulate: {args.patients} patients x {args.days:g} days, wearable share {args.wearable_share:g}, "
          f"seed {args.seed}")
    print(f"  seconds               {seconds:8.2f}")
    print(f"  FHIR resources        {fhir:8d}   ({fhir / seconds:,.0f}/s)")
    print(f"  wearable readings     {summary.counts['wearables']:8d}")
    print(f"  all lines             {lines:8d}   ({lines / seconds:,.0f}/s), {size / 1e6:,.0f} MB")
    print(f"  reference (orjson write of the same lines) {reference:.2f} s "
          f"-> ratio {seconds / reference:.2f}x")
    print(f"  admissions {summary.n_admissions}, ICU transfers {summary.n_icu_transfers}, "
          f"deaths {summary.n_deaths}, readmissions {summary.n_readmissions}, "
          f"deteriorations {summary.n_deteriorations}")
    print(f"  prediction points {summary.n_prediction_points}, deterioration_24h rate "
          f"{summary.deterioration_24h_rate:.3f}, mean true risk {summary.mean_true_risk_24h:.3f}, "
          f"oracle AUROC {summary.best_auroc_deterioration_24h:.3f}")


if __name__ == "__main__":
    main()
