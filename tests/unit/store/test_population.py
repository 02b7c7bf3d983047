"""Per-state counts of diagnosed, hospitalised and deceased patients, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from tests import factories as F

from carecast.errors import InputError
from carecast.jobs.ingest import ingest_paths
from carecast.store import Store
from carecast.store.population import normalise_codes, state_counts


def _patient(pid: str, state: str | None, **extra: Any) -> dict[str, Any]:
    address = [{"line": ["1 Test Road"], "city": "Testville", **({"state": state} if state else {})}]
    return F.patient(pid, address=address, **extra)


def _seed(store: Store, tmp_path: Path) -> None:
    patients = [
        _patient("p1", "TX"),  # COVID-19, inpatient, alive
        _patient("p2", "Texas", deceasedDateTime="2026-01-20T10:00:00Z"),  # COVID-19 undotted, ambulatory, died
        _patient("p3", "TX"),  # two COVID-19 diagnoses, inpatient stay ending in death (disposition expired)
        _patient("p4", "OH"),  # diabetes only, inpatient: not a case
        _patient("p5", "OH"),  # COVID-19, emergency visit only: not hospitalised
        _patient("p6", None),  # COVID-19, no state
        _patient("p7", "CA", deceasedDateTime="2026-02-01T10:00:00Z"),  # viral pneumonia J12.82, inpatient, died
    ]
    encounters = [
        F.encounter("e1", "p1"), F.encounter("e2", "p2", klass="AMB"),
        F.encounter("e3", "p3", end="2026-01-09T08:00:00Z", disposition="exp"),
        F.encounter("e4", "p4"), F.encounter("e5", "p5", klass="EMER"), F.encounter("e7", "p7", klass="ACUTE"),
    ]
    conditions = [
        F.condition("c1", "U07.1", pid="p1"), F.condition("c2", "U071", pid="p2"),
        F.condition("c3a", "U07.1", pid="p3"), F.condition("c3b", "U07.1", pid="p3"),
        F.condition("c4", "E11.9", pid="p4"), F.condition("c5", "U07.1", pid="p5"),
        F.condition("c6", "U07.1", pid="p6"), F.condition("c7", "J12.82", pid="p7"),
    ]
    d = tmp_path / "in"
    d.mkdir()
    for name, resources in (("Patient", patients), ("Encounter", encounters), ("Condition", conditions)):
        (d / f"{name}.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    summary = ingest_paths([d], store.writer())
    assert summary.total("rejected") == 0


def _rows(frame: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in frame[["state", "cases", "hospitalizations", "deaths"]].itertuples(index=False)]


def test_counts_by_state_default_covid(store: Store, tmp_path: Path) -> None:
    _seed(store, tmp_path)
    assert _rows(state_counts(store.engine)) == [("OH", 1, 0, 0), ("TX", 3, 2, 2), (None, 1, 0, 0)]


def test_configurable_code_set(store: Store, tmp_path: Path) -> None:
    _seed(store, tmp_path)
    assert _rows(state_counts(store.engine, ["j1282"])) == [("CA", 1, 1, 1)]  # ACUTE is inpatient
    assert _rows(state_counts(store.engine, ["J12.82", "U07.1", "E11.9"])) == [
        ("CA", 1, 1, 1), ("OH", 2, 1, 0), ("TX", 3, 2, 2), (None, 1, 0, 0)]
    assert _rows(state_counts(store.engine, ["A00.0"])) == []


def test_inpatient_classes_are_configurable(store: Store, tmp_path: Path) -> None:
    _seed(store, tmp_path)
    rows = _rows(state_counts(store.engine, inpatient_classes=("IMP", "EMER")))
    assert rows[0] == ("OH", 1, 1, 0)


def test_codes_are_validated() -> None:
    assert normalise_codes([" u07.1", "U071", "J12.82"]) == ("U071", "J1282")
    with pytest.raises(InputError, match="code 2 is not an ICD-10 code"):
        normalise_codes(["U07.1", "DROP TABLE"])
    with pytest.raises(InputError, match="at least one"):
        normalise_codes([])
