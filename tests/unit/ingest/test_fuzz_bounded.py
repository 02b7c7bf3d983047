"""Coverage-guided fuzzing of the decoders, bounded for CI: every seed of tests/fuzz/corpus/ (including the inputs
that once crashed a decoder) replays cleanly, and each atheris harness runs 2,000 inputs without a crash or a
broken invariant (a few seconds each). `make verify` runs the same harnesses for minutes
(tests/verify/test_fuzz_decoders.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.fuzz.harness import CORPUS, CRASHES, HERE, arguments
from tests.fuzz.targets import CHECKS

ROOT = HERE.parents[1]
DECODERS = sorted(CHECKS)
RUNS = 2000


def run_harness(decoder: str, workdir: Path, *flags: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """One atheris harness in its own process, new inputs kept in `workdir`, crash inputs written beside it."""
    corpus = workdir / "corpus"
    corpus.mkdir(exist_ok=True)
    command = [sys.executable, str(HERE / f"fuzz_{decoder}.py"), *flags, "-seed=1", "-timeout=60",
               "-rss_limit_mb=2048", f"-artifact_prefix={workdir}/", str(corpus), str(CORPUS / decoder)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def runs_done(output: str) -> int:
    """The number of inputs libFuzzer reports having run ("Done 2000 in 3 second(s)")."""
    found = re.findall(r"^Done (\d+) (?:runs )?in", output, re.MULTILINE)
    return int(found[-1]) if found else 0


def fail_on_crash(decoder: str, result: subprocess.CompletedProcess[str], workdir: Path) -> None:
    """Fail with the harness's traceback when it crashed, keeping the crash inputs in tests/fuzz/crashes/ (a test's
    temporary directory does not outlive a few later pytest runs)."""
    crashes = sorted(p for p in workdir.iterdir() if p.is_file())
    if result.returncode == 0 and not crashes:
        return
    kept = CRASHES / decoder
    kept.mkdir(parents=True, exist_ok=True)
    for crash in crashes:
        shutil.copy(crash, kept / crash.name)
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("#", "INFO:", "0x"))]
    pytest.fail(f"fuzz_{decoder} exited {result.returncode}; crash inputs kept in {kept}: "
                f"{[c.name for c in crashes]}\n" + "\n".join(lines[-60:]), pytrace=False)


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_seed_replays_cleanly(decoder: str, tmp_path: Path) -> None:
    seeds = sorted(p for p in (CORPUS / decoder).iterdir() if p.is_file())
    assert len(seeds) >= 3, f"the {decoder} seed corpus is missing (tests/fuzz/make_corpus.py writes it)"
    accepted = 0
    for seed in seeds:
        units = CHECKS[decoder](seed.read_bytes(), tmp_path)
        accepted += sum(len(u.records) for u in units)
    assert accepted, f"no {decoder} seed is accepted: the corpus starts from nothing well formed"


@pytest.mark.parametrize("decoder", DECODERS)
def test_bounded_atheris_run(decoder: str, tmp_path: Path) -> None:
    result = run_harness(decoder, tmp_path, f"-atheris_runs={RUNS}", timeout=600)
    fail_on_crash(decoder, result, tmp_path)
    assert runs_done(result.stderr) >= RUNS - 1, result.stderr[-2000:]
    print(f"atheris {decoder}: {runs_done(result.stderr)} runs, 0 crashes")


def test_harness_defaults_keep_the_seed_corpus_read_only(tmp_path: Path) -> None:
    given = ["fuzz_fhir.py", "-atheris_runs=5", f"-artifact_prefix={tmp_path}/"]
    args = arguments(given, "fhir")
    assert args[:3] == given
    work, seeds = args[3:]
    assert seeds == str(CORPUS / "fhir") and Path(work).is_dir() and not any(Path(work).iterdir())
    Path(work).rmdir()
    replay = [*given, str(tmp_path / "crash-1")]
    assert arguments(replay, "fhir") == replay
