"""Shadow mode stays out of sight: a challenger's stored scores, newer and higher than the champion's, never
appear in any patient read of the API (list, detail, latest predictions, trajectory, FHIR RiskAssessment)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from flask.testing import FlaskClient
from sqlalchemy import insert

from carecast.scoring.scorer import latest_predictions
from carecast.store import Store
from carecast.store import schema as S

from .conftest import Hospital, bearer

SHADOW_VERSION = "20260102T000000-shadow42"


def _add_shadow_scores(store: Store, hospital: Hospital) -> None:
    now = datetime.now(UTC)
    rows = [{"patient_id": pid, "encounter_id": None, "task": "deterioration_24h", "model_version": SHADOW_VERSION,
             "risk": 0.987, "band": "high", "news2": 9, "factors": json.dumps([]),
             "data_time": now + timedelta(minutes=5), "computed_at": now, "shadow": True}
            for pid in hospital.ids.values()]
    with store.engine.begin() as conn:
        conn.execute(insert(S.Prediction), rows)


def test_shadow_scores_are_stored_but_never_returned(client: FlaskClient, store: Store, hospital: Hospital,
                                                     tokens: dict[str, str]) -> None:
    _add_shadow_scores(store, hospital)
    a1 = hospital.uids["a1"]
    # stored: the shadow row is the newest of the patient's scores
    assert latest_predictions(store.engine, hospital.ids["a1"], include_shadow=True)[
        "deterioration_24h"].model_version == SHADOW_VERSION
    paths = ["/api/v1/patients", f"/api/v1/patients/{a1}", f"/api/v1/patients/{a1}/predictions",
             f"/api/v1/patients/{a1}/predictions/deterioration_24h/trajectory",
             f"/api/v1/patients/{a1}/risk-assessment"]
    for path in paths:
        response = client.get(path, headers=bearer(tokens["clinician"]))
        assert response.status_code == 200, (path, response.get_data(as_text=True))
        body = response.get_data(as_text=True)
        assert SHADOW_VERSION not in body and "0.987" not in body, path
    shown = client.get(f"/api/v1/patients/{a1}/predictions", headers=bearer(tokens["clinician"])).json
    assert shown is not None
    assert [(p["model_version"], p["risk"]) for p in shown["predictions"]] == [("v1", 0.2)]  # the champion's
