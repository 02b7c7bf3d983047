"""Coverage-guided fuzzing (atheris) of the FHIR decoders: each input is read as a .json document (a Bundle or
one resource) and as bulk NDJSON.

    .venv/bin/python tests/fuzz/fuzz_fhir.py -atheris_runs=2000       # bounded, as CI runs it
    .venv/bin/python tests/fuzz/fuzz_fhir.py -max_total_time=300      # five minutes, as `make verify` runs it
    .venv/bin/python tests/fuzz/fuzz_fhir.py tests/fuzz/crashes/fhir/crash-...   # replay one input

Seeds: tests/fuzz/corpus/fhir/. Any exception is a crash; see tests/fuzz/targets.py and docs/fuzzing.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.fuzz`

from tests.fuzz.harness import main

if __name__ == "__main__":
    main("fhir", instrument=("carecast",))
