"""Figure 2 of issue 8, the long runs: the decoder properties (tests/unit/ingest/test_properties.py) with 5,000
examples each, and each atheris harness (tests/fuzz/fuzz_*.py) for 200,000 inputs or 5 minutes, whichever comes
first, from its seed corpus. Zero crashes and zero broken invariants; each test prints what it ran.

CARECAST_VERIFY_PROPERTY_EXAMPLES and CARECAST_VERIFY_ATHERIS_SECONDS change the lengths (the figures in
docs/fuzzing.md were measured with the defaults)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import CHECKS
from tests.unit.ingest.test_fuzz_bounded import fail_on_crash, run_harness, runs_done

ROOT = Path(__file__).resolve().parents[2]
PROPERTY_EXAMPLES = int(os.environ.get("CARECAST_VERIFY_PROPERTY_EXAMPLES", "5000"))
ATHERIS_RUNS = 200_000
ATHERIS_SECONDS = int(os.environ.get("CARECAST_VERIFY_ATHERIS_SECONDS", "300"))


def test_figure_2_decoder_properties() -> None:
    env = {**os.environ, "CARECAST_PROPERTY_EXAMPLES": str(PROPERTY_EXAMPLES)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                             "tests/unit/ingest/test_properties.py"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=7200, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    tried = dict(re.findall(r"property ([a-z ]+): (\d+) examples", result.stdout))  # after pytest's progress dots
    assert tried and all(int(n) == PROPERTY_EXAMPLES for n in tried.values()), tried
    print(f"figure 2 (hypothesis): {len(tried)} properties x {PROPERTY_EXAMPLES:,} examples "
          f"({', '.join(tried)}), 0 failures")


@pytest.mark.parametrize("decoder", sorted(CHECKS))
def test_figure_2_atheris(decoder: str, tmp_path: Path) -> None:
    result = run_harness(decoder, tmp_path, f"-atheris_runs={ATHERIS_RUNS}", f"-max_total_time={ATHERIS_SECONDS}",
                         timeout=ATHERIS_SECONDS + 600)
    fail_on_crash(decoder, result, tmp_path)
    runs = runs_done(result.stderr)
    assert runs > 0, result.stderr[-2000:]
    seconds = re.findall(r"^Done \d+ (?:runs )?in (\d+) second", result.stderr, re.MULTILINE)
    coverage = re.findall(r"cov: (\d+)", result.stderr)
    found = sum(1 for _ in (tmp_path / "corpus").iterdir())
    print(f"figure 2 (atheris {decoder}): {runs:,} inputs in {seconds[-1]} s, coverage {coverage[-1]} edges, "
          f"{found} new corpus inputs, 0 crashes")
