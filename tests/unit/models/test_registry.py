"""The registry keeps each model with its card, checks the file before loading, and moves aliases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sklearn.dummy import DummyClassifier

from carecast.errors import NotFoundError
from carecast.models.registry import Registry, RegistryError


def _model() -> DummyClassifier:
    return DummyClassifier(strategy="prior").fit([[0], [1], [2]], [0, 1, 1])


@pytest.fixture(params=["local", "memory"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    if request.param == "local":
        return Registry(tmp_path / "models")
    # Any fsspec URL works the same way (gs:// in the cloud); memory:// stands in for it offline.
    return Registry(f"memory://carecast-test-{tmp_path.name}")


def test_save_and_load_round_trip(registry: Registry) -> None:
    version = registry.save("demo", _model(), {"metrics": {"auroc": {"value": 0.5}}})
    loaded = registry.load("demo", version)
    assert loaded.version == version
    assert loaded.card["task"] == "demo" and len(loaded.card["model_sha256"]) == 64
    assert loaded.estimator.predict_proba([[0]])[0, 1] == pytest.approx(2 / 3)
    assert registry.versions("demo") == [version]


def test_tampered_model_file_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    version = registry.save("demo", _model(), {})
    path = tmp_path / "models" / "demo" / version / "model.joblib"
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(RegistryError, match="does not match"):
        registry.load("demo", version)


def test_aliases_promote_and_rollback(registry: Registry) -> None:
    v1 = registry.save("demo", _model(), {})
    v2 = registry.save("demo", DummyClassifier(strategy="most_frequent").fit([[0], [1]], [0, 0]), {})
    with pytest.raises(NotFoundError):
        registry.load("demo", "champion")
    registry.promote("demo", v1)
    registry.promote("demo", v2, "challenger")
    assert registry.resolve("demo", "champion") == v1 and registry.resolve("demo", "challenger") == v2
    registry.promote("demo", v2, reason="better")
    assert registry.resolve("demo", "champion") == v2
    assert "challenger" not in registry.aliases("demo")
    registry.rollback("demo")
    assert registry.resolve("demo", "champion") == v1
    history = registry.aliases("demo")["history"]
    assert [h["version"] for h in history] == [v1, v2, v2, v1]
    with pytest.raises(RegistryError):
        Registry("memory://empty-registry").rollback("demo")


def test_unknown_version_and_alias(registry: Registry) -> None:
    registry.save("demo", _model(), {})
    with pytest.raises(NotFoundError):
        registry.load("demo", "20990101T000000-deadbeef")
    with pytest.raises(RegistryError):
        registry.promote("demo", registry.versions("demo")[0], alias="king")


def test_card_is_json_with_report(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# report")
    version = registry.save("demo", _model(), {"threshold": {"threshold": 0.2}}, report_dir=report)
    card = json.loads((tmp_path / "models" / "demo" / version / "card.json").read_text())
    assert card["threshold"]["threshold"] == 0.2
    assert (tmp_path / "models" / "demo" / version / "report" / "report.md").read_text() == "# report"
