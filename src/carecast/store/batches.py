"""One ingest batch: write units of work, quarantine every rejection with its reason, record the totals.

Shared by the file-ingestion job and the API's ingest endpoints, so both follow the same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from carecast.domain.records import Rejection, UnitOfWork
from carecast.store.writer import ClinicalWriter, WriteResult

Progress = Callable[[int], None]
MAX_EXAMPLES = 100


@dataclass
class FileSummary:
    label: str
    kind: str
    batch_id: int
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    skipped: int = 0
    status: str = "running"
    reasons: dict[str, int] = field(default_factory=dict)  # "field: reason" -> how many records
    examples: list[Rejection] = field(default_factory=list)  # the first MAX_EXAMPLES rejections, in order

    @property
    def stored(self) -> int:
        return self.inserted + self.updated + self.unchanged

    @property
    def nothing_stored(self) -> bool:
        """Every record was refused (and none was merely of a kind CareCast skips)."""
        return self.stored == 0 and self.rejected > 0 and self.skipped == 0


def ingest_units(units: Iterable[UnitOfWork], writer: ClinicalWriter, *, source: str, label: str,
                 kind: str = "", progress: Progress | None = None) -> FileSummary:
    """Write units of work as one ingest batch, quarantining every rejection with its reason."""
    batch_id = writer.begin_batch(source, label)
    fs = FileSummary(label=label, kind=kind, batch_id=batch_id)
    total = WriteResult()
    status = "failed"
    try:
        for unit in units:
            result = writer.write(unit, batch_id)
            writer.quarantine(batch_id, source, result.rejections)
            total.merge(result)
            fs.skipped += unit.skipped
            fs.examples.extend(result.rejections[: max(0, MAX_EXAMPLES - len(fs.examples))])
            for r in result.rejections:
                key = f"{r.field}: {r.reason}" if r.field else r.reason
                fs.reasons[key[:160]] = fs.reasons.get(key[:160], 0) + 1
            if progress:
                progress(len(unit.records) + len(unit.rejections) + unit.skipped)
        status = "partial" if total.rejections else "done"
    finally:
        writer.finish_batch(batch_id, total, status)
    fs.status = status
    fs.inserted, fs.updated, fs.unchanged, fs.rejected = (total.inserted, total.updated, total.unchanged,
                                                           len(total.rejections))
    return fs
