"""The common body of the atheris harnesses: libFuzzer arguments with sensible defaults, the decoder's modules
instrumented for coverage, and one input checked per run by tests/fuzz/targets.py.

Defaults added when the command line does not say otherwise:
- no corpus given: a fresh working directory (where libFuzzer keeps the inputs it finds; printed) and the seed
  corpus tests/fuzz/corpus/<decoder>/ (read only: libFuzzer writes new inputs to the first directory alone);
- no -artifact_prefix: crash inputs go to tests/fuzz/crashes/<decoder>/ (git-ignored).
A file given instead of a directory is replayed once (reproducing a crash).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"


def arguments(argv: Sequence[str], decoder: str) -> list[str]:
    """`argv` with the default corpus directories and artifact prefix added where missing."""
    args = list(argv)
    flags = [a for a in args[1:] if a.startswith("-")]
    positional = [a for a in args[1:] if not a.startswith("-")]
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        (CRASHES / decoder).mkdir(parents=True, exist_ok=True)
        args.append(f"-artifact_prefix={CRASHES / decoder}/")
    if not positional:
        work = tempfile.mkdtemp(prefix=f"carecast-fuzz-{decoder}-")
        print(f"fuzz {decoder}: new inputs go to {work}; seeds from {CORPUS / decoder}", file=sys.stderr)
        args += [work, str(CORPUS / decoder)]
    return args


def main(decoder: str, instrument: Sequence[str]) -> None:
    """Fuzz one decoder (a key of targets.CHECKS), instrumenting the packages named in `instrument`."""
    import atheris

    args = arguments(sys.argv, decoder)
    with atheris.instrument_imports(include=list(instrument)):
        from tests.fuzz import targets
    check = targets.CHECKS[decoder]
    scratch = Path(tempfile.mkdtemp(prefix=f"carecast-fuzz-{decoder}-scratch-"))

    def one_input(data: bytes) -> None:
        check(data, scratch)

    atheris.Setup(args, one_input)
    atheris.Fuzz()
