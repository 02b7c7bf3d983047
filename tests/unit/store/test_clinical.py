"""The clinical read repository: stays, record reads and identifiers that stay encrypted until asked for."""

from __future__ import annotations

from datetime import UTC, datetime

import tests.factories as F
from sqlalchemy import select

from carecast.ingest.fhir import decode_bundle
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.batches import ingest_units
from carecast.store.clinical import ClinicalReader


def _seed(store: Store) -> dict[str, int]:
    resources = [
        F.patient("a1"),
        F.encounter("old", "a1", start="2025-06-01T08:00:00Z", end="2025-06-03T08:00:00Z",
                    units=(("Ward Z", "2025-06-01T08:00:00Z"),)),
        F.encounter("ea1", "a1", units=(("Ward A", "2026-01-05T08:00:00Z"),)),
        F.vital("o1", "8867-4", 120, "/min", pid="a1", eid="ea1", when="2026-01-05T09:00:00Z"),
        F.vital("o2", "8867-4", 110, "/min", pid="a1", eid="ea1", when="2026-01-05T10:00:00Z"),
        F.vital("o3", "9279-1", 24, "/min", pid="a1", eid="ea1", when="2026-01-05T11:00:00Z"),
        F.condition("c1", pid="a1"),
        F.patient("b1"), F.encounter("eb1", "b1", units=(("Ward B", "2026-01-05T10:00:00Z"),)),
    ]
    summary = ingest_units([decode_bundle(F.bundle(resources), "seed")], store.writer(), source="fhir", label="seed")
    assert summary.rejected == 0
    with store.engine.connect() as conn:
        rows = conn.execute(select(S.Patient.id, S.Patient.uid).order_by(S.Patient.id)).all()
    return {"a1": int(rows[0].id), "b1": int(rows[1].id)}


def test_current_stays_one_per_in_house_patient_and_restricted_by_unit(store: Store) -> None:
    ids = _seed(store)
    reader = ClinicalReader(store.engine, store.keyring)
    stays = {s.patient.id: s for s in reader.current_stays()}
    assert set(stays) == {ids["a1"], ids["b1"]}
    assert stays[ids["a1"]].unit == "Ward A"  # the open stay, not the discharged one on Ward Z
    assert [s.patient.id for s in reader.current_stays(units={"Ward B"})] == [ids["b1"]]
    assert [s.patient.id for s in reader.current_stays(unit="Ward A")] == [ids["a1"]]
    assert reader.current_stays(units=set()) == []
    assert reader.units() == ["Ward A", "Ward B"]


def test_identifiers_stay_encrypted_until_asked(store: Store) -> None:
    _seed(store)
    reader = ClinicalReader(store.engine, store.keyring)
    stay = reader.current_stays(unit="Ward A")[0]
    assert F.SECRET_IDENTIFIERS["family"] not in repr(stay)
    assert stay.patient.family_name_enc is not None
    assert F.SECRET_IDENTIFIERS["family"].encode() not in stay.patient.family_name_enc
    shown = reader.demographics(stay.patient)
    assert shown["family_name"] == F.SECRET_IDENTIFIERS["family"]
    assert shown["birth_date"] == F.SECRET_IDENTIFIERS["birth"]
    assert reader.age(stay.patient, at=datetime(2026, 2, 28, tzinfo=UTC)) == 77  # born 1948-02-29
    assert reader.age(stay.patient, at=datetime(2026, 3, 1, tzinfo=UTC)) == 78


def test_patient_lookup_refuses_impossible_uids(store: Store) -> None:
    _seed(store)
    reader = ClinicalReader(store.engine, store.keyring)
    assert reader.patient("no such; drop table") is None
    assert reader.patient("0" * 65) is None
    uid = reader.current_stays(unit="Ward B")[0].patient.uid
    found = reader.patient(uid)
    assert found is not None and found.uid == uid


def test_record_reads(store: Store) -> None:
    ids = _seed(store)
    reader = ClinicalReader(store.engine, store.keyring)
    pid = ids["a1"]
    assert [e.unit for e in reader.encounters(pid)] == ["Ward A", "Ward Z"]  # newest first
    assert [c.code for c in reader.conditions(pid)] == ["E11.9"]
    newest = reader.observations(pid)
    assert [o.value for o in newest] == [24, 110, 120]
    hr = reader.observations(pid, variables=["heart_rate"], newest_first=False)
    assert [o.value for o in hr] == [120, 110]
    since = reader.observations(pid, since=datetime(2026, 1, 5, 9, 30, tzinfo=UTC), limit=1)
    assert [o.value for o in since] == [24]
    last = reader.last_observation_times([pid, ids["b1"]])
    assert set(last) == {pid}
    assert last[pid].replace(tzinfo=None) == datetime(2026, 1, 5, 11, 0)
    assert reader.imaging(pid) == []
