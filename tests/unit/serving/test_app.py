"""The app factory: builds its own services from the settings, and refuses production without a data key."""

from __future__ import annotations

from pathlib import Path

import pytest

from carecast.config import Settings
from carecast.errors import KeyMissingError
from carecast.scoring.events import DatabaseBus
from carecast.scoring.predictor import Predictor
from carecast.serving import create_app
from carecast.serving.context import EXTENSION, Services


def test_factory_builds_services_from_settings(settings: Settings) -> None:
    app = create_app(settings)
    services: Services = app.extensions[EXTENSION]
    try:
        assert isinstance(services.predictor, Predictor) and isinstance(services.bus, DatabaseBus)
        assert services.queue is not None and services.queue.depth() == 0
        with app.test_client() as client:
            assert client.get("/livez").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503  # an empty registry: no model yet
            assert ready.json is not None and ready.json["checks"] == {"database": "ok", "model": "unavailable"}
    finally:
        services.store.close()


def test_production_refuses_to_start_without_a_data_key(tmp_path: Path) -> None:
    settings = Settings.from_env({"CARECAST_ENV": "production", "CARECAST_DATA_DIR": str(tmp_path / "var")})
    with pytest.raises(KeyMissingError):
        create_app(settings)
