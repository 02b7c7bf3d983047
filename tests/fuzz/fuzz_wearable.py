"""Coverage-guided fuzzing (atheris) of the wearable decoder: each input is read as a JSON-lines file of readings.

    .venv/bin/python tests/fuzz/fuzz_wearable.py -atheris_runs=2000       # bounded, as CI runs it
    .venv/bin/python tests/fuzz/fuzz_wearable.py -max_total_time=300      # five minutes, as `make verify` runs it
    .venv/bin/python tests/fuzz/fuzz_wearable.py tests/fuzz/crashes/wearable/crash-...   # replay one input

Seeds: tests/fuzz/corpus/wearable/. Any exception is a crash; see tests/fuzz/targets.py and docs/fuzzing.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.fuzz`

from tests.fuzz.harness import main

if __name__ == "__main__":
    main("wearable", instrument=("carecast",))
