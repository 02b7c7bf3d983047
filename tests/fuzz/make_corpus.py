"""Write the seed corpora of the atheris harnesses, tests/fuzz/corpus/<decoder>/, from the test factories, the
synthetic hospital and small synthetic DICOM files (no real patient data):

    .venv/bin/python tests/fuzz/make_corpus.py

The seeds are small on purpose (libFuzzer mutates better from small inputs) and cover each resource type, each
bundle type, each reading form and each DICOM transfer syntax the decoders read. Inputs that once broke a
decoder (regress-*) are written here too, so every run replays them first; a crash input a harness found is
copied into the corpus as it was found, and this script leaves it alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests`

from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests import factories as F
from tests.fuzz import strategies as S
from tests.fuzz.harness import CORPUS
from tests.fuzz.targets import MARKER

US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _ndjson(values: list[Any]) -> bytes:
    return b"".join(_json(v) + b"\n" for v in values)


def _simulated(workdir: Path) -> dict[str, list[bytes]]:
    """The first lines of each file of a tiny simulated hospital."""
    carecast = Path(sys.executable).with_name("carecast")
    subprocess.run([str(carecast), "simulate", "--patients", "3", "--days", "0.3", "--wearable-share", "1",
                    "--seed", "11", "--out", str(workdir)], check=True, capture_output=True)
    return {p.name: p.read_bytes().splitlines(keepends=True)[:3] for p in sorted(workdir.glob("*.*json*"))}


def fhir(sim: dict[str, list[bytes]]) -> dict[str, bytes]:
    resources = S.fhir_resources()
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    out = {
        "bundle-transaction-urn.json": _json(F.bundle(list(resources[:5]), "transaction", urn=True)),
        "bundle-batch.json": _json(F.bundle(list(resources[4:]), "batch")),
        "bundle-collection.json": _json(F.bundle([resources[0], resources[9]], "collection")),
        "patient.json": _json(resources[1]),
        "resources.ndjson": _ndjson(list(resources)),
        "regress-us-core-extension-not-a-list.json": _json(
            F.patient("p1", extension=[{"url": US_CORE_RACE, "extension": 5}])),
        "regress-entry-nested-300-deep.json": _json(F.bundle([F.patient("p1", extension=deep)], "batch")),
        "regress-year-0999.ndjson": _ndjson([F.vital("o1", "8867-4", 80, "/min", when="0999")]),
        "regress-onset-year-8674.ndjson": _ndjson([{**F.condition("c1"), "onsetDateTime": "8674-06-11"}]),
    }
    for name, lines in sim.items():
        if name.endswith(".ndjson"):
            out[f"simulated-{name}"] = b"".join(lines)
    return out


def wearable(sim: dict[str, list[bytes]]) -> dict[str, bytes]:
    base = {"device_id": "WX-0001", "patient": "Patient/p1", "type": "heart_rate", "value": 88, "unit": "/min",
            "time": "2026-01-05T10:01:00Z"}
    forms = [base, {**base, "type": "59408-5", "value": 97, "unit": "%"},
             {**base, "patient": f"mrn:{MARKER}", "type": "temperature", "value": 99.1, "unit": "[degF]"},
             {**base, "type": "steps", "value": "120", "unit": "{steps}", "time": "2026-01-05T05:01:00-05:00"},
             {**base, "type": "respiratory_rate", "value": 18, "unit": "{breaths}/min"}]
    return {
        "readings.jsonl": _ndjson(forms),
        "rejected.jsonl": _ndjson([{**base, "value": None}, {**base, "time": "2026-01-05T10:01:00"},
                                   {**base, "patient": MARKER}, [base]]) + b"not json\n",
        "simulated-wearables.jsonl": b"".join(sim.get("wearables.jsonl", [])),
    }


def dicom() -> dict[str, bytes]:
    ct, implicit, sr = S.dicom_seeds()
    return {"ct-explicit.dcm": ct, "ct-implicit-no-pixels.dcm": implicit, "sr-text.dcm": sr,
            "ct-deflated.dcm": S.dicom_bytes(transfer_syntax=DeflatedExplicitVRLittleEndian, pixels=False),
            "ct-timezone-date-only.dcm": S.dicom_bytes({"StudyTime": "", "TimezoneOffsetFromUTC": "-0500"},
                                                       transfer_syntax=ImplicitVRLittleEndian)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sim = _simulated(Path(tmp))
    for decoder, files in (("fhir", fhir(sim)), ("wearable", wearable(sim)), ("dicom", dicom())):
        folder = CORPUS / decoder
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        print(f"{decoder}: {len(files)} seeds in {folder}")


if __name__ == "__main__":
    main()
