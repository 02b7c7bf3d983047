"""FHIR from independent generators (carebundle, clinosim) ingests with zero crashes; whatever is
refused is quarantined with a reason and a field."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from carecast.jobs.ingest import IngestSummary, ingest_paths
from carecast.store import Store, queries
from tests.compat.generators import generate_carebundle, generate_clinosim


@pytest.fixture(scope="module")
def carebundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("carebundle")
    generate_carebundle(out / "bundles", n_patients=15, seed=7)
    generate_carebundle(out / "ndjson", n_patients=15, seed=8, fmt="ndjson")
    return out


@pytest.fixture(scope="module")
def clinosim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clinosim")
    generate_clinosim(out, n_patients=20, seed=7)
    return out / "fhir_r4"


def _check(summary: IngestSummary, store: Store) -> Counter[str]:
    rows = queries.quarantine(store.engine, limit=100_000)
    assert len(rows) == summary.total("rejected")
    for r in rows:
        assert r["reason"], r
        assert r["location"], r
    return Counter(f"{r['resource_type']} {r['field']}: {r['reason']}" for r in rows)


def test_carebundle_ingests(store: Store, carebundle_dir: Path) -> None:
    summary = ingest_paths([carebundle_dir], store.writer())
    reasons = _check(summary, store)
    counts = queries.counts(store.engine)
    assert counts["patients"] == 30
    assert counts["encounters"] == 30
    assert counts["observations"] > 300, reasons.most_common(10)
    assert counts["conditions"] > 0
    # Bundles are transactions: a bad entry would roll back a whole patient. None may fail here.
    tx_failures = [r for r in reasons if "rolled back" in r]
    assert not tx_failures, reasons.most_common(10)


def test_clinosim_ingests(store: Store, clinosim_dir: Path) -> None:
    summary = ingest_paths([clinosim_dir], store.writer())
    reasons = _check(summary, store)
    counts = queries.counts(store.engine)
    assert counts["patients"] >= 10
    assert counts["encounters"] >= 10
    assert counts["observations"] > 200, reasons.most_common(10)
    assert counts["imaging_studies"] >= 1
    assert summary.total("skipped") > 0  # Practitioner, Location, Coverage... acknowledged, not stored
