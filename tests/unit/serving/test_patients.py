"""Patient reads: the list sorted by risk, detail, observations, imaging, predictions, trajectory and FHIR
RiskAssessment; every read audited exactly once with the patient's uid."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from carecast.models.metrics import age_band
from carecast.store import Store
from tests import factories as F
from tests.unit.ingest.test_dicom import write_dicom

from .conftest import Hospital, audit_rows, bearer


def _band_of_seeded_birth() -> str:
    born, today = date.fromisoformat(F.SECRET_IDENTIFIERS["birth"]), datetime.now(UTC).date()
    return str(age_band([today.year - born.year - ((today.month, today.day) < (born.month, born.day))])[0])


def _get(client: FlaskClient, path: str, token: str, status: int = 200) -> Any:
    response = client.get(path, headers=bearer(token))
    assert response.status_code == status, response.get_data(as_text=True)
    return response.json


def test_list_is_sorted_by_deterioration_risk_with_demographics(client: FlaskClient, store: Store,
                                                                hospital: Hospital, tokens: dict[str, str]) -> None:
    body = _get(client, "/api/v1/patients", tokens["clinician"])
    patients = body["patients"]
    assert [p["uid"] for p in patients] == [hospital.uids["a2"], hospital.uids["a1"]]
    assert body["total"] == 2 and body["limit"] == 50 and body["offset"] == 0
    first = patients[0]
    assert first["unit"] == "Ward A" and first["sex"] == "female" and first["age_band"] == _band_of_seeded_birth()
    assert first["news2"] == 7
    assert first["risks"]["deterioration_24h"]["risk"] == 0.6
    assert first["risks"]["deterioration_24h"]["band"] == "high"
    assert first["demographics"]["family_name"] == F.SECRET_IDENTIFIERS["family"]
    assert first["demographics"]["mrn"] == "MRN-7731-QX-a2"
    page = _get(client, "/api/v1/patients?limit=1&offset=1", tokens["clinician"])
    assert [p["uid"] for p in page["patients"]] == [hospital.uids["a1"]]
    rows = audit_rows(store)
    assert [(r.action, r.patient_uid) for r in rows] == [("patient:list", None), ("patient:list", None)]


def test_detail_observations_and_predictions(client: FlaskClient, store: Store, hospital: Hospital,
                                             tokens: dict[str, str]) -> None:
    a1 = hospital.uids["a1"]
    nurse = tokens["nurse"]
    detail = _get(client, f"/api/v1/patients/{a1}", nurse)
    assert detail["uid"] == a1 and detail["encounters"][0]["unit"] == "Ward A"
    assert detail["predictions"][0]["task"] == "deterioration_24h" and detail["news2"] == 5

    obs = _get(client, f"/api/v1/patients/{a1}/observations", nurse)["observations"]
    assert {(o["variable"], o["value"]) for o in obs} == {("heart_rate", 120.0), ("respiratory_rate", 24.0)}
    only_hr = _get(client, f"/api/v1/patients/{a1}/observations?variable=heart_rate", nurse)["observations"]
    assert [o["variable"] for o in only_hr] == ["heart_rate"]
    later = _get(client, f"/api/v1/patients/{a1}/observations?since=2026-01-06T00:00:00Z", nurse)
    assert later["observations"] == []
    _get(client, f"/api/v1/patients/{a1}/observations?since=yesterday", nurse, 400)

    predictions = _get(client, f"/api/v1/patients/{a1}/predictions", nurse)
    latest = predictions["predictions"][0]
    assert latest["risk"] == 0.2 and latest["band"] == "medium" and latest["model_version"] == "v1"
    assert latest["factors"][0]["feature"] == "heart_rate_last_4h" and predictions["news2"] == 5

    trajectory = _get(client, f"/api/v1/patients/{a1}/predictions/deterioration_24h/trajectory", nurse)
    assert [p["risk"] for p in trajectory["points"]] == [0.1, 0.2]
    _get(client, f"/api/v1/patients/{a1}/predictions/no_such_task/trajectory", nurse, 404)

    rows = audit_rows(store)
    assert [(r.action, r.patient_uid) for r in rows] == [
        ("patient:read", a1), ("patient:observations:read", a1), ("patient:observations:read", a1),
        ("patient:observations:read", a1), ("prediction:read", a1), ("prediction:trajectory:read", a1)]


def test_risk_assessment_is_fhir_r4(client: FlaskClient, hospital: Hospital, tokens: dict[str, str]) -> None:
    a2 = hospital.uids["a2"]
    response = client.get(f"/api/v1/patients/{a2}/risk-assessment", headers=bearer(tokens["clinician"]))
    assert response.status_code == 200 and response.mimetype == "application/fhir+json"
    bundle = response.json
    assert bundle is not None and bundle["resourceType"] == "Bundle" and bundle["total"] == 1
    ra = bundle["entry"][0]["resource"]
    assert ra["resourceType"] == "RiskAssessment" and ra["status"] == "final"
    assert ra["subject"] == {"reference": f"Patient/{a2}"}
    assert ra["occurrenceDateTime"].endswith("+00:00")
    prediction = ra["prediction"][0]
    assert prediction["probabilityDecimal"] == 0.6
    assert prediction["qualitativeRisk"]["coding"][0]["code"] == "high"
    assert "ICU transfer or death" in prediction["outcome"]["text"]
    assert "v1" in ra["method"]["text"]
    assert "heart_rate_last_4h" in ra["note"][0]["text"]


def test_risk_assessment_validates_against_fhir_r4b_model(client: FlaskClient, hospital: Hospital,
                                                          tokens: dict[str, str]) -> None:
    from fhir.resources.R4B.bundle import Bundle

    response = client.get(f"/api/v1/patients/{hospital.uids['a1']}/risk-assessment",
                          headers=bearer(tokens["clinician"]))
    assert response.status_code == 200 and response.mimetype == "application/fhir+json"
    bundle = Bundle.model_validate(response.json)
    assert bundle.entry and bundle.entry[0].resource.__resource_type__ == "RiskAssessment"


def test_imaging_lists_studies_and_hides_free_text_without_demographics(
        client: FlaskClient, hospital: Hospital, tokens: dict[str, str], tmp_path: Path, store: Store) -> None:
    path = write_dicom(tmp_path / "ct.dcm", patient_id="MRN-7731-QX-a1")
    stored = client.post("/api/v1/ingest/dicom", data=path.read_bytes(), content_type="application/dicom",
                         headers=bearer(tokens["admin"]))
    assert stored.status_code == 200 and stored.json is not None and stored.json["inserted"] == 1
    studies = _get(client, f"/api/v1/patients/{hospital.uids['a1']}/imaging", tokens["nurse"])["studies"]
    assert len(studies) == 1
    study = studies[0]
    assert study["modality"] == "CT" and study["series"][0]["modality"] == "CT"
    assert "ACC-SYN-1" not in str(study)  # the accession number stays encrypted
