"""Figure 1 of issue 8: OpenAPI fuzzing of API v1 with 1,000 cases per operation, 0 server errors, every response
conforming to the document (declared status code and content type, body valid against the declared schema).

It runs the CI fuzzing test, tests/unit/serving/test_fuzz.py (schemathesis over `/api/v1/openapi.json`, valid and
invalid requests, a token of a role holding each operation's permission, seeded patients), in its own pytest
process with CARECAST_FUZZ_EXAMPLES=1000, reads the line that test prints per operation, and prints the figure.
An operation without parameters or body (the document itself, its docs page) has a single possible request,
which is all hypothesis sends.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from flask import Flask

from carecast.serving.api_v1 import API_TITLE, API_VERSION
from carecast.serving.api_v1 import bp as api_v1
from carecast.serving.openapi import build_spec
from tests.unit.serving.test_fuzz import OPERATIONS, SPEC_PATH

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 1000
# Not anchored: with -s, pytest's progress dot comes before a test's first line.
LINE = re.compile(r"fuzz ([A-Z]+) (/\S+): (\d+) cases, (\d+) distinct failures")


def _takes_input(method: str, path: str) -> bool:
    bare = Flask("carecast-fuzz-figure")
    bare.register_blueprint(api_v1)
    operation = build_spec(bare, api_v1.name, title=API_TITLE, version=API_VERSION)["paths"][path][method.lower()]
    return bool(operation.get("parameters") or operation.get("requestBody"))


def test_figure_1_openapi_fuzzing() -> None:
    env = {**os.environ, "CARECAST_FUZZ_EXAMPLES": str(EXAMPLES)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                             "tests/unit/serving/test_fuzz.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=3600, check=False)
    print(result.stdout[-6000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    runs = {(m, p): (int(n), int(f)) for m, p, n, f in LINE.findall(result.stdout)}
    assert set(runs) == set(OPERATIONS), f"operations not fuzzed: {sorted(set(OPERATIONS) - set(runs))}"
    failures = sum(f for _, f in runs.values())
    assert failures == 0
    # Hypothesis stops early only where it has run out of distinct requests: an operation without input.
    short = {op: n for op, (n, _) in runs.items() if n < EXAMPLES}
    assert all(n >= 1 and not _takes_input(*op) for op, n in short.items()), \
        f"fewer than {EXAMPLES} cases: {short}"
    full = [op for op in OPERATIONS if op not in short]
    print(f"figure 1: {len(full)} operations x {EXAMPLES:,} cases ({sum(runs[op][0] for op in full):,} requests), "
          f"0 errors: no 5xx, every status, content type and body conforming to {SPEC_PATH}; plus {len(short)} "
          f"operations without input ({', '.join(p for _, p in sorted(short))}: every possible request sent); "
          "GET /api/v1/stream excluded (an endless SSE response)")
