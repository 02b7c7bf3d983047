"""Which decoder reads which file, and in which order files are read so references resolve."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from carecast.domain.records import Rejection, UnitOfWork
from carecast.errors import InputError

FHIR_ORDER = ("Patient", "Encounter", "Condition", "Observation", "ImagingStudy", "DiagnosticReport")
KIND_ORDER = ("fhir-json", "fhir-ndjson", "wearable-jsonl", "dicom", "csv", "unknown")


@dataclass(frozen=True)
class InputFile:
    path: Path
    kind: str  # one of KIND_ORDER
    resource_type: str | None = None  # first resource type of a FHIR NDJSON file

    @property
    def source(self) -> str:
        return {"wearable-jsonl": "wearable", "dicom": "dicom", "csv": "csv"}.get(self.kind, "fhir")

    def sort_key(self) -> tuple[int, int, str]:
        rtype_rank = FHIR_ORDER.index(self.resource_type) if self.resource_type in FHIR_ORDER else len(FHIR_ORDER)
        return (KIND_ORDER.index(self.kind), rtype_rank, str(self.path))


def _first_json_line(path: Path) -> object | None:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                try:
                    return orjson.loads(line)
                except orjson.JSONDecodeError:
                    return None
    return None


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def classify(path: Path) -> InputFile:
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in (".ndjson", ".jsonl"):
        first = _first_json_line(path)
        if isinstance(first, dict) and "resourceType" in first:
            rtype = first.get("resourceType")
            return InputFile(path, "fhir-ndjson", rtype if isinstance(rtype, str) else None)
        if isinstance(first, dict) and "device_id" in first:
            return InputFile(path, "wearable-jsonl")
        stem_type = path.name.split(".")[0]
        if stem_type in FHIR_ORDER:
            return InputFile(path, "fhir-ndjson", stem_type)
        return InputFile(path, "wearable-jsonl" if "wearable" in path.name.lower() else "fhir-ndjson")
    if suffix == ".json":
        return InputFile(path, "fhir-json")
    if suffix == ".csv":
        return InputFile(path, "csv")
    if suffix in (".dcm", ".dicom") or _is_dicom(path):
        return InputFile(path, "dicom")
    return InputFile(path, "unknown")


def collect(paths: Iterable[Path]) -> list[InputFile]:
    """Every input file under the given paths, classified and in reading order."""
    files: list[InputFile] = []
    for p in paths:
        if p.is_dir():
            for child in sorted(p.rglob("*")):
                # Inside a directory only recognised inputs are read (a README or a .db is not input);
                # `truth/` is the simulator's answer key, never input.
                if child.is_file() and not child.name.startswith(".") and "truth" not in child.parts:
                    item = classify(child)
                    if item.kind != "unknown":
                        files.append(item)
        elif p.is_file():
            files.append(classify(p))
        else:
            raise InputError(f"no such file or directory: {p.name}")
    return sorted(files, key=InputFile.sort_key)


def unreadable(path: Path, reason: str) -> UnitOfWork:
    unit = UnitOfWork(where=path.name)
    unit.rejections.append(Rejection(where=path.name, reason=reason))
    return unit


def decode_file(item: InputFile, chunk_size: int, csv_mapping: object | None = None) -> Iterator[UnitOfWork]:
    """Units of work of one input file."""
    from carecast.ingest import fhir, wearable

    if item.kind == "fhir-ndjson":
        yield from fhir.decode_ndjson(item.path, chunk_size)
    elif item.kind == "wearable-jsonl":
        yield from wearable.decode_jsonl(item.path, chunk_size)
    elif item.kind == "fhir-json":
        yield fhir.decode_json_document(item.path.read_bytes(), item.path.name)
    elif item.kind == "dicom":
        from carecast.ingest.dicom import decode_dicom

        yield from decode_dicom([item.path])
    elif item.kind == "csv":
        if csv_mapping is None:
            yield unreadable(item.path, "a CSV file needs a column mapping (--mapping FILE.toml)")
            return
        from carecast.ingest.tabular import CsvMapping, decode_csv

        assert isinstance(csv_mapping, CsvMapping)
        yield from decode_csv(item.path, csv_mapping, chunk_size)
    else:
        yield unreadable(item.path, "unrecognised file type (expected .json, .ndjson, .jsonl, .csv or DICOM)")
