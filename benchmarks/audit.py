"""The audit trail's cost on SQLite, each against a reference measured in the same run.

1. Recording, as a request thread pays it: `--threads` threads each record `--records` rows, through the
   spool a server process uses on SQLite (`AuditLog.for_store`) and, as the reference, through the
   committed group-commit path (`AuditLog(engine, group_commit=True)`, what PostgreSQL uses and what SQLite
   used before the spool). Prints wall and CPU time per row; the spooled rows' shipment is included (the
   run ends with a flush).
2. Shipping, as the background thread pays it: 150-row batches appended onto a table that already holds
   `--rows` rows, with the table as migrated (its chain kept linear by UNIQUE seq) and, as the reference,
   with UNIQUE indexes on prev_hash and hash added back (the layout before revision 0005).

    .venv/bin/python benchmarks/audit.py [--threads 4] [--records 2000] [--rows 200000]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from carecast.security.audit import AuditLog, flush_spools
from carecast.store.db import make_engine
from carecast.store.migrate import upgrade

BATCH = 150


def _engine(path: Path) -> Any:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    return engine


def record_cost(log: AuditLog, threads: int, records: int) -> tuple[float, float]:
    """(wall, CPU) µs per recorded row, with every spooled row shipped by the end."""

    def work(n: int) -> None:
        for i in range(records):
            log.record(action="prediction:create", outcome="success", username=f"user{n}", source_ip="127.0.0.1",
                       request_id=f"{n:04d}{i:028d}", detail="deterioration_24h")

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    wall, cpu = time.perf_counter(), time.process_time()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    flush_spools(log.engine)
    total = threads * records
    return (time.perf_counter() - wall) / total * 1e6, (time.process_time() - cpu) / total * 1e6


def _row(i: int) -> dict[str, Any]:
    return {"at": datetime.now(UTC), "action": ("prediction:create", "patient:read", "prediction:read")[i % 3],
            "outcome": "success", "user_id": i % 40, "username": f"user{i % 40}", "role": "nurse",
            "patient_uid": None if i % 3 == 0 else f"00000000-0000-4000-8000-{i % 500:012d}",
            "source_ip": "10.0.0.1", "request_id": f"{i:032d}", "detail": None}


def ship_cost(engine: Any, rows: int, batches: int) -> tuple[float, float]:
    """(wall, CPU) µs per row of `batches` 150-row appends onto a table filled with `rows` rows first."""
    log = AuditLog(engine)
    for start in range(0, rows, 2000):
        log._append([_row(i) for i in range(start, min(rows, start + 2000))])
    wall, cpu = time.perf_counter(), time.process_time()
    for b in range(batches):
        log._append([_row(rows + b * BATCH + i) for i in range(BATCH)])
    n = batches * BATCH
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--records", type=int, default=2000, help="rows recorded per thread")
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the table before the shipping run")
    parser.add_argument("--batches", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="carecast-bench-audit-"))

    spooled = record_cost(AuditLog.for_store(_engine(work / "spooled.db")), args.threads, args.records)
    committed = record_cost(AuditLog(_engine(work / "committed.db"), group_commit=True), args.threads, args.records)
    print(f"recording, {args.threads} threads x {args.records:,} rows (µs per row, wall / CPU):")
    print(f"  spooled (a server process on SQLite)         {spooled[0]:8.1f} / {spooled[1]:6.1f}")
    print(f"  committed group commit (reference)           {committed[0]:8.1f} / {committed[1]:6.1f}")
    print(f"  spooled is {committed[0] / spooled[0]:.1f}x faster in wall time, "
          f"{committed[1] / spooled[1]:.1f}x in CPU")

    current = ship_cost(_engine(work / "current.db"), args.rows, args.batches)
    before = _engine(work / "before.db")
    with before.begin() as conn:  # the layout before revision 0005: the chain guarded by UNIQUE hashes
        conn.exec_driver_sql("CREATE UNIQUE INDEX uq_before_prev_hash ON audit_events (prev_hash)")
        conn.exec_driver_sql("CREATE UNIQUE INDEX uq_before_hash ON audit_events (hash)")
    reference = ship_cost(before, args.rows, args.batches)
    print(f"shipping {BATCH}-row batches onto {args.rows:,} rows (µs per row, wall / CPU):")
    print(f"  UNIQUE seq (as migrated)                     {current[0]:8.1f} / {current[1]:6.1f}")
    print(f"  UNIQUE prev_hash and hash too (reference)    {reference[0]:8.1f} / {reference[1]:6.1f}")
    print(f"  UNIQUE seq is {reference[0] / current[0]:.1f}x faster in wall time, "
          f"{reference[1] / current[1]:.1f}x in CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
