"""Bulk NDJSON ingestion speed, SQLite and PostgreSQL, against the raw executemany limit.

For each backend: a fresh, migrated database; N Observation resources (bulk FHIR NDJSON) are
ingested through the real path (decode, validate, normalise units, keyed hashes, idempotent
upsert); then the same rows, already built, are inserted by the DBAPI's executemany into a fresh
observations table: the ceiling for that backend on this machine, measured in the same run.

    python benchmarks/ingest.py [--observations 50000] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from sqlalchemy import select, text

from carecast.crypto import Keyring
from carecast.jobs.ingest import ingest_paths
from carecast.store import schema as S
from carecast.store.db import make_engine
from carecast.store.migrate import upgrade

PG_URL = os.environ.get("CARECAST_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
VITALS = [("8867-4", "/min", 60, 110), ("9279-1", "/min", 12, 26), ("59408-5", "%", 88, 100),
          ("8310-5", "Cel", 36.0, 39.0)]


def write_inputs(d: Path, n_obs: int, n_patients: int = 200) -> None:
    rng = random.Random(1)
    with (d / "Patient.ndjson").open("wb") as fh:
        for p in range(n_patients):
            fh.write(orjson.dumps({"resourceType": "Patient", "id": f"p{p}", "gender": "female",
                                   "identifier": [{"system": "urn:mrn", "value": f"M{p}"}]}) + b"\n")
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    with (d / "Observation.ndjson").open("wb") as fh:
        for i in range(n_obs):
            code, unit, lo, hi = VITALS[i % len(VITALS)]
            fh.write(orjson.dumps({
                "resourceType": "Observation", "id": f"o{i}", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": f"Patient/p{i % n_patients}"},
                "effectiveDateTime": (t0 + timedelta(minutes=i)).isoformat(),
                "valueQuantity": {"value": round(rng.uniform(lo, hi), 1), "unit": unit,
                                  "system": "http://unitsofmeasure.org", "code": unit}}) + b"\n")


def fresh_engine(backend: str, workdir: Path):  # type: ignore[no-untyped-def]
    if backend == "sqlite":
        engine = make_engine(f"sqlite:///{workdir / f'{uuid.uuid4().hex}.db'}")
        upgrade(engine)
        return engine, None
    schema = f"cc_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    engine = make_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
    upgrade(engine)
    return engine, schema


def drop(schema: str | None) -> None:
    if schema:
        admin = make_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def measure(backend: str, inputs: Path, workdir: Path, n_obs: int) -> tuple[float, float]:
    keyring = Keyring.generate()
    engine, schema = fresh_engine(backend, workdir)
    try:
        from carecast.store.writer import ClinicalWriter

        writer = ClinicalWriter(engine, keyring)
        ingest_paths([inputs / "Patient.ndjson"], writer)
        start = time.perf_counter()
        summary = ingest_paths([inputs / "Observation.ndjson"], writer)
        elapsed = time.perf_counter() - start
        assert summary.total("inserted") == n_obs, summary.to_dict()
        # The limit: the very rows the writer stored, re-inserted by executemany into a fresh table.
        obs = S.table(S.Observation)
        with engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(select(*[c for c in obs.c if c.name != "id"]))]
    finally:
        engine.dispose()
        drop(schema)
    engine, schema = fresh_engine(backend, workdir)
    try:
        cols = [c.name for c in obs.c if c.name != "id"]
        with engine.begin() as conn:
            conn.execute(S.table(S.Patient).insert(), [
                {"uid": str(i), "source_key": f"k{i}", "content_hash": "h", "sex": "f",
                 "created_at": datetime.now(UTC), "updated_at": datetime.now(UTC)} for i in range(1, 201)])
            conn.execute(S.table(S.IngestBatch).insert(), [
                {"source": "fhir", "label": "bench", "started_at": datetime.now(UTC)} for _ in range(3)])
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            ph = "?" if backend == "sqlite" else "%s"
            sql = f"INSERT INTO observations ({', '.join(cols)}) VALUES ({', '.join([ph] * len(cols))})"
            if backend == "sqlite":
                rows = [tuple(v.replace(tzinfo=None).isoformat(" ") if isinstance(v, datetime) else v for v in r)
                        for r in rows]
            start = time.perf_counter()
            for i in range(0, len(rows), 5000):
                cur.executemany(sql, rows[i : i + 5000])
                raw.commit()
            limit_elapsed = time.perf_counter() - start
        finally:
            raw.close()
    finally:
        engine.dispose()
        drop(schema)
    return n_obs / elapsed, n_obs / limit_elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=50_000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = work / "in"
        inputs.mkdir()
        write_inputs(inputs, args.observations)
        backends = ["sqlite"] + ([] if args.skip_postgres else ["postgres"])
        targets = {"sqlite": 20_000, "postgres": 10_000}
        print(f"bulk FHIR NDJSON ingestion, {args.observations:,} observations")
        print(f"{'backend':<10} {'carecast obs/s':>15} {'executemany obs/s':>18} {'ratio':>7}  target")
        ok = True
        for backend in backends:
            rate, limit = measure(backend, inputs, work, args.observations)
            ratio = rate / limit
            meets = rate >= targets[backend] and ratio >= 0.25
            ok &= meets
            print(f"{backend:<10} {rate:>15,.0f} {limit:>18,.0f} {ratio:>7.2f}  "
                  f">= {targets[backend]:,}/s and >= 0.25: {'met' if meets else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
