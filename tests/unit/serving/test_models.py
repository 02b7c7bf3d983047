"""Model information: champion and challenger with card summaries, never the reference distributions."""

from __future__ import annotations

from flask.testing import FlaskClient

from carecast.models.registry import Registry

from .conftest import bearer

TASK = "deterioration_24h"
CARD = {"description": "test model", "estimator": "logistic", "metrics": {"auroc": 0.8},
        "feature_schema": {"columns": ["a", "b"], "hash": "abc"}, "threshold": {"threshold": 0.3},
        "reference": {"a": {"kind": "numeric", "edges": [1, 2], "shares": [0.5, 0.5]}}}


def test_models_show_champion_and_challenger_without_reference(client: FlaskClient, registry: Registry,
                                                               tokens: dict[str, str]) -> None:
    first = registry.save(TASK, {"weights": [1, 2]}, CARD)
    registry.promote(TASK, first, "champion", reason="first")
    second = registry.save(TASK, {"weights": [2, 3]}, {**CARD, "description": "newer"})
    registry.promote(TASK, second, "challenger", reason="shadow")
    listed = client.get("/api/v1/models", headers=bearer(tokens["data_scientist"]))
    assert listed.status_code == 200 and listed.json is not None
    model = next(m for m in listed.json["models"] if m["task"] == TASK)
    assert model["champion"]["version"] == first and model["challenger"]["version"] == second
    assert model["serving_version"] == "20260101T000000-fake0001"
    card = model["champion"]["card"]
    assert "reference" not in card and card["metrics"] == {"auroc": 0.8}
    assert card["feature_schema"] == {"hash": "abc", "spec_version": None, "n_columns": 2}
    other = next(m for m in listed.json["models"] if m["task"] == "readmission_30d")
    assert other["champion"] is None and other["serving_version"] is None

    detail = client.get(f"/api/v1/models/{TASK}", headers=bearer(tokens["admin"]))
    assert detail.status_code == 200 and detail.json is not None
    assert [h["alias"] for h in detail.json["history"]] == ["champion", "challenger"]
    assert "reference" not in detail.get_data(as_text=True)
    assert client.get("/api/v1/models/nope", headers=bearer(tokens["admin"])).status_code == 404
