"""FHIR R4 decoding: mapping, unit normalisation, rejections that name record and field but no value."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from tests import factories as F

from carecast.domain.records import EncounterRecord, ObservationRecord, OutcomeRecord, PatientRecord
from carecast.ingest.common import FieldProblem
from carecast.ingest.fhir import Refs, decode_bundle, decode_ndjson, decode_resource


def test_patient_identifiers_and_demographics() -> None:
    records = decode_resource(F.patient("p1", mrn="M-1"))
    assert records is not None
    (p,) = records
    assert isinstance(p, PatientRecord)
    assert p.natural_key == "Patient/p1"
    assert p.mrn == "M-1"
    assert p.ssn == F.SECRET_IDENTIFIERS["ssn"]
    assert p.family_name == F.SECRET_IDENTIFIERS["family"]
    assert p.state == "OH"
    assert p.sex == "female"
    assert str(p.birth_date) == F.SECRET_IDENTIFIERS["birth"]


def test_deceased_patient_yields_death_outcome() -> None:
    records = decode_resource(F.patient("p1", deceasedDateTime="2026-01-07T10:00:00+02:00"))
    assert records is not None
    death = [r for r in records if isinstance(r, OutcomeRecord)]
    assert death and death[0].kind == "death"
    assert death[0].occurred_at.isoformat() == "2026-01-07T08:00:00+00:00"


@pytest.mark.parametrize(("loinc", "value", "unit", "variable", "expected"), [
    ("8310-5", 98.6, "[degF]", "temperature", 37.0),
    ("8310-5", 37.2, "Cel", "temperature", 37.2),
    ("29463-7", 154.0, "[lb_av]", "body_weight", 69.853225),
    ("2160-0", 88.4, "umol/L", "creatinine", 1.0),
    ("8867-4", 72, "/min", "heart_rate", 72.0),
    ("2708-6", 95, "%", "spo2", 95.0),
])
def test_units_are_normalised(loinc: str, value: float, unit: str, variable: str, expected: float) -> None:
    records = decode_resource(F.vital("o1", loinc, value, unit))
    assert records is not None
    (obs,) = records
    assert isinstance(obs, ObservationRecord)
    assert obs.variable == variable
    assert obs.value == pytest.approx(expected, rel=1e-6)


def test_blood_pressure_panel_components() -> None:
    records = decode_resource(F.blood_pressure("bp1", 128, 76))
    assert records is not None
    got = {r.variable: r.value for r in records if isinstance(r, ObservationRecord)}
    assert got == {"systolic_bp": 128, "diastolic_bp": 76}
    assert {r.natural_key for r in records} == {"Observation/bp1#8480-6", "Observation/bp1#8462-4"}


@pytest.mark.parametrize(("resource", "field", "reason_part"), [
    (F.vital("o1", "8867-4", 900, "/min"), "valueQuantity.value", "plausible range"),
    (F.vital("o1", "8867-4", 80, "kg"), "valueQuantity.code", "cannot be converted"),
    (F.vital("o1", "99999-9", 80, "/min"), "code.coding", "no LOINC code"),
    ({**F.vital("o1", "8867-4", 80, "/min"), "effectiveDateTime": "2026-01-05T09:00:00"},
     "effectiveDateTime", "time-zone"),
    ({k: v for k, v in F.vital("o1", "8867-4", 80, "/min").items() if k != "subject"}, "subject", "missing"),
    ({**F.vital("o1", "8867-4", 80, "/min"), "valueQuantity": {"unit": "/min"}}, "valueQuantity.value",
     "missing"),
    ({**F.encounter(), "class": [{"code": "IMP"}]}, "class", "R5"),
    ({**F.patient(), "gender": "robot"}, "gender", "male, female"),
    ({"resourceType": "Observation"}, "id", "FHIR id"),
])
def test_bad_fields_are_named_without_values(resource: dict, field: str, reason_part: str) -> None:
    with pytest.raises(FieldProblem) as info:
        decode_resource(resource, Refs())
    assert info.value.field == field
    assert reason_part in info.value.reason
    for secret in F.SECRET_IDENTIFIERS.values():
        assert secret not in str(info.value)
    assert "900" not in info.value.reason


def test_icu_transfer_and_expired_disposition() -> None:
    enc = F.encounter(units=(("Medical Ward 4W", "2026-01-05T08:00:00Z"), ("ICU", "2026-01-06T03:00:00Z")),
                      end="2026-01-07T00:00:00Z", disposition="exp")
    records = decode_resource(enc)
    assert records is not None
    e = next(r for r in records if isinstance(r, EncounterRecord))
    assert e.unit == "ICU" and len(e.locations) == 2 and e.admission_type == "emergency"
    kinds = {r.kind: r for r in records if isinstance(r, OutcomeRecord)}
    assert kinds["icu_transfer"].occurred_at.isoformat() == "2026-01-06T03:00:00+00:00"
    assert kinds["death"].natural_key == "death/Patient/p1"


def test_transaction_bundle_is_atomic_unit_with_urn_references() -> None:
    pat = F.patient("a")
    pat.pop("id")
    obs = F.vital("o1", "8867-4", 80, "/min", pid="x", eid=None)
    obs["subject"] = {"reference": "urn:uuid:a"}
    doc = F.bundle([{**pat, "id": "a"}, obs], urn=True)
    del doc["entry"][0]["resource"]["id"]
    unit = decode_bundle(doc, "b.json")
    assert unit.atomic
    assert not unit.rejections
    assert {type(r).__name__ for r in unit.records} == {"PatientRecord", "ObservationRecord"}
    obs_rec = next(r for r in unit.records if isinstance(r, ObservationRecord))
    assert obs_rec.patient_ref == "Patient/a"


def test_batch_bundle_keeps_good_entries() -> None:
    doc = F.bundle([F.patient("p1"), F.vital("o1", "8867-4", 999, "/min"), F.vital("o2", "8867-4", 70, "/min")],
                   btype="batch")
    unit = decode_bundle(doc, "b.json")
    assert not unit.atomic
    assert len(unit.rejections) == 1
    assert unit.rejections[0].where == "b.json entry[1]"
    assert len(unit.records) == 2


def test_unsupported_bundle_type_and_ignored_resources() -> None:
    unit = decode_bundle({"resourceType": "Bundle", "type": "history", "entry": []}, "h.json")
    assert unit.rejections and unit.rejections[0].field == "type"
    unit = decode_bundle(F.bundle([{"resourceType": "Practitioner", "id": "dr"}], btype="collection"), "c.json")
    assert unit.skipped == 1 and not unit.rejections


def test_ndjson_chunks_and_line_locations(tmp_path: Path) -> None:
    path = tmp_path / "Observation.ndjson"
    lines = [orjson.dumps(F.vital(f"o{i}", "8867-4", 60 + i, "/min")) for i in range(7)]
    lines.insert(3, b"{not json")
    path.write_bytes(b"\n".join(lines) + b"\n")
    units = list(decode_ndjson(path, chunk_size=3))
    assert sum(len(u.records) for u in units) == 7
    rejections = [r for u in units for r in u.rejections]
    assert [r.where for r in rejections] == ["Observation.ndjson:line 4"]
    assert units[0].locations[0] == "Observation.ndjson:line 1"


@pytest.mark.parametrize(("concept", "expected"), [
    ({"coding": [{"system": "http://snomed.info/sct", "code": "248234008", "display": "Alert"}]}, 0.0),
    ({"coding": [{"system": "http://snomed.info/sct", "code": "450847001"}]}, 2.0),
    ({"text": "Responds to pain"}, 3.0),
    ({"text": "New confusion"}, 1.0),
])
def test_acvpu_coded_answers(concept: dict, expected: float) -> None:
    res = F.vital("c1", "80288-4", 0, "{score}")
    del res["valueQuantity"]
    res["valueCodeableConcept"] = concept
    records = decode_resource(res)
    assert records is not None
    (obs,) = records
    assert isinstance(obs, ObservationRecord)
    assert obs.variable == "acvpu" and obs.value == expected


def test_unknown_coded_answer_is_rejected() -> None:
    res = F.vital("c1", "80288-4", 0, "{score}")
    del res["valueQuantity"]
    res["valueCodeableConcept"] = {"text": "sleepy"}
    with pytest.raises(FieldProblem) as info:
        decode_resource(res)
    assert info.value.field == "valueCodeableConcept"


def test_value_integer_for_scores_only() -> None:
    res = F.vital("g1", "9269-2", 0, "{score}")
    del res["valueQuantity"]
    res["valueInteger"] = 14
    records = decode_resource(res)
    assert records is not None and isinstance(records[0], ObservationRecord) and records[0].value == 14
    hr = F.vital("h1", "8867-4", 0, "/min")
    del hr["valueQuantity"]
    hr["valueInteger"] = 80
    with pytest.raises(FieldProblem):
        decode_resource(hr)


def test_other_r4_types_are_skipped_but_non_types_rejected() -> None:
    assert decode_resource({"resourceType": "Endpoint", "id": "x"}) is None
    with pytest.raises(FieldProblem) as info:
        decode_resource({"resourceType": "Spaceship", "id": "x"})
    assert info.value.field == "resourceType"
