"""Offline, seeded FHIR R4 fixture generators backed by two independent third-party tools.

Both packages are test-only dependencies installed in the project venv:

* ``carebundle`` (0.5.0) -- a library that builds one US Core 6.1.0 *transaction* Bundle
  per patient (single ambulatory visit; labs, vitals, conditions, meds). Driven here
  through its own CLI (``carebundle.cli.main``) in-process, which writes one Bundle JSON
  file per patient, or -- with ``fmt="ndjson"`` -- FHIR Bulk Data NDJSON, one file per
  resource type.
* ``clinosim`` (0.6.5) -- a population/physiology hospital simulator that natively emits
  FHIR R4 Bulk Data NDJSON (one file per resource type plus a bulk ``manifest.json``).
  Driven through its own CLI (``clinosim simulate``) in a subprocess, because it prints
  a lot, configures a global log sink and is comparatively slow.

Neither tool touches the network on these paths (clinosim's only HTTP code is its
optional LLM narrative providers; ``simulate`` always uses the offline template pass).
See ``tests/compat/NOTES.md`` for what the output looks like.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

__all__ = ["generate_carebundle", "generate_clinosim"]

# carebundle never reads the clock; pin it anyway so fixtures do not depend on its default.
CAREBUNDLE_REFERENCE_DATE = "2026-01-01"

# clinosim's --end defaults to *today*, which would make output date-dependent. Pin a
# one-year window so output is byte-identical for a given seed.
CLINOSIM_START = "2025-01-01"
CLINOSIM_END = "2025-12-31"

# clinosim's size knob is the *catchment population*, not a patient count: only people
# who had at least one encounter in the window become Patient resources. Empirically
# (US, one-year window) about 60% of the catchment do, so 20 patients ~= 32 catchment
# (seeds 1/2/3/7 gave 20/17/21/16 Patients).
CLINOSIM_PATIENTS_PER_PERSON = 0.62

CLINOSIM_TIMEOUT_S = 600


def generate_carebundle(
    out_dir: Path,
    n_patients: int = 20,
    seed: int = 7,
    *,
    fmt: Literal["bundle", "ndjson"] = "bundle",
) -> list[Path]:
    """Write ``n_patients`` carebundle patients into ``out_dir`` and return the files.

    Uses a ``mixed`` cohort (profiles healthy / hypertension / type2_diabetes /
    ckd_stage3 drawn by prevalence, alternating F/M, ages 45-65), all lab panels and
    vitals. ``fmt="bundle"`` (default) writes one transaction Bundle per patient named
    ``mixed-<seed>-<index>.json``; ``fmt="ndjson"`` writes ``<ResourceType>.ndjson``.
    Deterministic: same seed -> same bytes. Runs in well under a second for 20 patients.
    """
    from carebundle.cli import main as carebundle_main

    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        "generate",
        "--profile", "mixed",
        "--count", str(n_patients),
        "--seed", str(seed),
        "--sex", "mixed",
        "--reference-date", CAREBUNDLE_REFERENCE_DATE,
        "--panels", "all",
        "--format", fmt,
        "--out", str(out_dir),
    ]  # fmt: skip
    rc = carebundle_main(argv)
    if rc != 0:
        raise RuntimeError(f"carebundle generate exited with {rc}")

    if fmt == "ndjson":
        files = sorted(out_dir.glob("*.ndjson"))
    else:
        files = [out_dir / f"mixed-{seed}-{index:04d}.json" for index in range(n_patients)]
    missing = [path for path in files if not path.is_file()]
    if not files or missing:
        raise RuntimeError(f"carebundle did not write the expected files (missing: {missing})")
    return files


def clinosim_catchment_for(n_patients: int) -> int:
    """Catchment population that yields roughly ``n_patients`` Patient resources."""
    return max(2, math.ceil(n_patients / CLINOSIM_PATIENTS_PER_PERSON))


def generate_clinosim(out_dir: Path, n_patients: int = 20, seed: int = 7) -> list[Path]:
    """Run ``clinosim simulate`` (US, one year, FHIR R4) into ``out_dir``; return NDJSON files.

    ``n_patients`` is approximate (see ``CLINOSIM_PATIENTS_PER_PERSON``). The run writes
    ``out_dir/cif/`` (its intermediate format), ``out_dir/simulator.log``,
    ``out_dir/_cache_manifest.json`` and ``out_dir/fhir_r4/``. Only the
    ``fhir_r4/*.ndjson`` files are returned: they are byte-identical per seed, whereas
    ``fhir_r4/manifest.json`` (Bulk Data manifest) and ``_generator_metadata.json`` carry
    wall-clock timestamps. ~6 s for 20 patients.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "clinosim.simulator.cli", "simulate",
        "--country", "US",
        "--population", str(clinosim_catchment_for(n_patients)),
        "--seed", str(seed),
        "--start", CLINOSIM_START,
        "--end", CLINOSIM_END,
        "--format", "fhir-r4",
        "--output", str(out_dir),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0", "CLINOSIM_LOG_LEVEL": "WARNING"}
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env,
        timeout=CLINOSIM_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"clinosim simulate exited with {proc.returncode}\n"
            f"stdout tail:\n{proc.stdout[-2000:]}\nstderr tail:\n{proc.stderr[-4000:]}"
        )
    files = sorted((out_dir / "fhir_r4").glob("*.ndjson"))
    if not files:
        raise RuntimeError(f"clinosim wrote no NDJSON under {out_dir / 'fhir_r4'}")
    return files
