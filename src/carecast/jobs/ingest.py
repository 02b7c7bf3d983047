"""The ingestion job: decode files, write them to the store, quarantine what was refused.

`ingest_units` (the write-and-quarantine loop, shared with the API's ingest endpoints) lives in
carecast.store.batches; this module adds files, formats and reading order.

One ingest batch per input file (all DICOM files of a run form one batch, so that the instances
of a study are counted together). The job owns the loop and the progress display; decoders and
the writer stay ignorant of each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from carecast.domain.records import UnitOfWork
from carecast.errors import ExitCode
from carecast.ingest.files import InputFile, collect, decode_file
from carecast.store.batches import FileSummary, ingest_units
from carecast.store.writer import ClinicalWriter


@dataclass
class IngestSummary:
    files: list[FileSummary] = field(default_factory=list)

    def total(self, attr: str) -> int:
        return sum(getattr(f, attr) for f in self.files)

    @property
    def exit_code(self) -> int:
        rejected, stored = self.total("rejected"), self.total("stored")
        if rejected == 0:
            return ExitCode.OK
        return ExitCode.PARTIAL if stored or self.total("skipped") else ExitCode.NOTHING_STORED

    def to_dict(self) -> dict[str, object]:
        return {
            "files": [{"file": f.label, "kind": f.kind, "batch": f.batch_id, "inserted": f.inserted,
                       "updated": f.updated, "unchanged": f.unchanged, "rejected": f.rejected,
                       "skipped": f.skipped, "reasons": f.reasons} for f in self.files],
            "inserted": self.total("inserted"), "updated": self.total("updated"),
            "unchanged": self.total("unchanged"), "rejected": self.total("rejected"),
            "skipped": self.total("skipped"),
        }


Progress = Callable[[int], None]


def _units(items: list[InputFile], chunk: int, mapping: object | None) -> Iterator[UnitOfWork]:
    for item in items:
        yield from decode_file(item, chunk, mapping)


def ingest_paths(paths: Iterable[Path], writer: ClinicalWriter, *, chunk_size: int = 5000,
                 csv_mapping: object | None = None, progress: Progress | None = None,
                 on_file: Callable[[InputFile], None] | None = None) -> IngestSummary:
    """Ingest every file under `paths`. `progress(n)` is called with the records handled."""
    files = collect(paths)
    dicom = [f for f in files if f.kind == "dicom"]
    groups: list[list[InputFile]] = [[f] for f in files if f.kind != "dicom"]
    if dicom:
        groups.append(dicom)
    groups.sort(key=lambda g: g[0].sort_key())
    summary = IngestSummary()
    for group in groups:
        first = group[0]
        if on_file:
            on_file(first)
        if first.kind == "dicom":
            from carecast.ingest.dicom import decode_dicom

            label = f"{len(group)} DICOM file(s)" if len(group) > 1 else first.path.name
            units: Iterable[UnitOfWork] = decode_dicom([f.path for f in group])
        else:
            label = first.path.name
            units = _units(group, chunk_size, csv_mapping)
        summary.files.append(ingest_units(units, writer, source=first.source, label=label, kind=first.kind,
                                          progress=progress))
    return summary
