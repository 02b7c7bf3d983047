"""Coverage-guided fuzzing (atheris) of the DICOM decoder and the pydicom reader under it: each input is read as
one uploaded file.

    .venv/bin/python tests/fuzz/fuzz_dicom.py -atheris_runs=2000       # bounded, as CI runs it
    .venv/bin/python tests/fuzz/fuzz_dicom.py -max_total_time=300      # five minutes, as `make verify` runs it
    .venv/bin/python tests/fuzz/fuzz_dicom.py tests/fuzz/crashes/dicom/crash-...   # replay one input

Seeds: tests/fuzz/corpus/dicom/. Any exception is a crash; see tests/fuzz/targets.py and docs/fuzzing.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.fuzz`

from tests.fuzz.harness import main

if __name__ == "__main__":
    main("dicom", instrument=("carecast", "pydicom"))
