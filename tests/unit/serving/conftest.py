"""Fixtures of the serving tests: an app over the test store (SQLite and PostgreSQL), a seeded hospital of
three patients on "Ward A" and "Ward B", users of every role with API tokens, and fakes for the predictor,
the scoring queue and the event bus (so no test here depends on training a model)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, insert, select

from carecast.config import Settings
from carecast.ingest.fhir import decode_bundle
from carecast.jobs.ingest import ingest_units
from carecast.models.registry import Registry
from carecast.scoring.predictor import FeatureError
from carecast.security import passwords
from carecast.security.audit import flush_spools
from carecast.security.permissions import ROLES
from carecast.security.tokens import issue_token
from carecast.security.users import create_user
from carecast.serving import create_app
from carecast.store import Store
from carecast.store import schema as S
from tests import factories as F

PASSWORD = "correct horse battery staple"
UNITS = {"clinician": ("Ward A",), "nurse": ("Ward A",)}
# Every value a seeded patient carries that must never appear in an error body or a log line.
SECRETS = [v for k, v in F.SECRET_IDENTIFIERS.items() if k != "device"] + ["MRN-7731-QX-p1", "MRN-7731-QX-p2"]


@dataclass(frozen=True)
class FakeScored:
    task: str
    model_version: str
    risk: float
    band: str
    factors: list[dict[str, Any]]
    threshold: float


@dataclass
class FakePredictor:
    """The Predictor interface, scoring with a fixed rule: risk grows with heart_rate_last_4h."""

    tasks: tuple[str, ...] = ("deterioration_24h",)
    version: str = "20260101T000000-fake0001"
    loaded: bool = True
    features: tuple[str, ...] = ("heart_rate_last_4h", "respiratory_rate_last_4h", "age", "sex")
    refreshes: int = 0

    @property
    def ready(self) -> bool:
        return self.loaded

    def versions(self) -> dict[str, str]:
        return {t: self.version for t in self.tasks} if self.loaded else {}

    def maybe_refresh(self) -> bool:
        self.refreshes += 1
        return False

    def feature_set(self, task: str) -> frozenset[str]:
        return frozenset(self.features)

    def predict(self, task: str, features_row: Mapping[str, Any], *, fill_missing: bool = False) -> FakeScored:
        hr = features_row.get("heart_rate_last_4h")
        if isinstance(hr, str):
            raise FeatureError("feature heart_rate_last_4h must be a number or null")
        risk = 0.05 if hr is None else min(0.95, max(0.01, (float(hr) - 60) / 100))
        band = "high" if risk >= 0.3 else "medium" if risk >= 0.15 else "low"
        factors = [{"feature": "heart_rate_last_4h", "contribution": 0.8, "value": hr, "text": "heart rate"}]
        return FakeScored(task=task, model_version=self.version, risk=risk, band=band, factors=factors,
                          threshold=0.3)


@dataclass
class FakeQueue:
    calls: list[tuple[list[int], datetime | None]] = field(default_factory=list)

    def enqueue(self, patient_ids: Any, data_time: datetime | None) -> None:
        self.calls.append((sorted(patient_ids), data_time))

    def depth(self) -> int:
        return len(self.calls)


@dataclass
class FakeBus:
    events: list[dict[str, Any]] = field(default_factory=list)

    def publish(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@dataclass
class Hospital:
    """Public uids of the seeded patients: a1, a2 on Ward A, b1 on Ward B."""

    uids: dict[str, str]
    ids: dict[str, int]


@pytest.fixture(autouse=True)
def _fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2 parameters: these tests exercise the API, not the password hash (tested in security)."""
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def predictor() -> FakePredictor:
    return FakePredictor()


@pytest.fixture
def queue() -> FakeQueue:
    return FakeQueue()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "models")


@pytest.fixture
def app(settings: Settings, store: Store, registry: Registry, predictor: FakePredictor, queue: FakeQueue) -> Flask:
    return create_app(settings, store=store, registry=registry, predictor=predictor, queue=queue, bus=FakeBus())


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as c:
        yield c


def seed_hospital(store: Store) -> Hospital:
    resources = [
        F.patient("a1"), F.encounter("ea1", "a1", units=(("Ward A", "2026-01-05T08:00:00Z"),)),
        F.vital("oa1", "8867-4", 120, "/min", pid="a1", eid="ea1"),
        F.vital("oa2", "9279-1", 24, "/min", pid="a1", eid="ea1"),
        F.patient("a2"), F.encounter("ea2", "a2", units=(("Ward A", "2026-01-05T09:00:00Z"),)),
        F.vital("oa3", "8867-4", 80, "/min", pid="a2", eid="ea2"),
        F.patient("b1"), F.encounter("eb1", "b1", units=(("Ward B", "2026-01-05T10:00:00Z"),)),
        F.vital("ob1", "8867-4", 95, "/min", pid="b1", eid="eb1"),
        F.condition("cb1", pid="b1"),
    ]
    summary = ingest_units([decode_bundle(F.bundle(resources), "seed")], store.writer(), source="fhir", label="seed")
    assert summary.rejected == 0, summary.reasons
    uids: dict[str, str] = {}
    ids: dict[str, int] = {}
    with store.engine.connect() as conn:
        rows = conn.execute(select(S.Patient.id, S.Patient.uid).order_by(S.Patient.id)).all()
    for name, row in zip(("a1", "a2", "b1"), rows, strict=True):
        uids[name], ids[name] = row.uid, int(row.id)
    return Hospital(uids=uids, ids=ids)


def seed_predictions(store: Store, hospital: Hospital) -> None:
    """Stored risks: a2 above a1 for deterioration, and an older a1 point for the trajectory."""
    now = datetime.now(UTC)
    rows = []
    for name, risk, band, news2 in (("a1", 0.2, "medium", 5), ("a2", 0.6, "high", 7), ("b1", 0.1, "low", 2)):
        for hours, scale in ((2, 0.5), (0, 1.0)):
            rows.append({"patient_id": hospital.ids[name], "encounter_id": None, "task": "deterioration_24h",
                         "model_version": "v1", "risk": risk * scale, "band": band, "news2": news2,
                         "factors": json.dumps([{"feature": "heart_rate_last_4h", "contribution": 0.5, "value": 120,
                                                 "text": "heart rate 120/min"}]),
                         "data_time": now - timedelta(hours=hours), "computed_at": now, "shadow": False})
    with store.engine.begin() as conn:
        conn.execute(insert(S.Prediction), rows)


@pytest.fixture
def hospital(store: Store) -> Hospital:
    found = seed_hospital(store)
    seed_predictions(store, found)
    return found


@pytest.fixture
def tokens(store: Store) -> dict[str, str]:
    """A bearer token per role; clinician and nurse belong to Ward A."""
    out = {}
    for role in ROLES:
        uid = create_user(store.engine, f"test-{role}", PASSWORD, role, UNITS.get(role, ()))
        out[role] = issue_token(store.engine, uid, f"{role} token", [], ttl_hours=1)
    return out


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit_rows(store: Store) -> list[Any]:
    """Every audit row, oldest first, once this process's spooled rows are shipped."""
    flush_spools(store.engine)
    with store.engine.connect() as conn:
        return list(conn.execute(select(S.AuditEvent).order_by(S.AuditEvent.id)).all())


def audit_count(store: Store) -> int:
    flush_spools(store.engine)
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(S.AuditEvent)).scalar_one())


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, "a seeded identifier appeared in a response"
