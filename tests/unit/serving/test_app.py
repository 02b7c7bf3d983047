"""The app factory: builds its own services from the settings, and refuses production without a data key."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

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


def test_json_answers_iso_times_in_view_order_and_never_invalid_json(app: Flask) -> None:
    import decimal
    import math
    import uuid
    from datetime import UTC, date, datetime

    import numpy as np
    import orjson
    from flask import jsonify

    when = datetime(2026, 11, 29, 21, 5, 7, 123456, tzinfo=UTC)
    value = {"z": 1, "a": [when, date(2026, 1, 2)], "nan": math.nan, "np": np.float64(0.25), "n": np.int64(3),
             3: "int key", "d": decimal.Decimal("1.5"), "u": uuid.UUID(int=1)}
    with app.test_request_context():
        answer = jsonify(value)
    body = answer.get_data()
    assert answer.mimetype == "application/json" and body.endswith(b"\n")
    assert list(orjson.loads(body)) == ["z", "a", "nan", "np", "n", "3", "d", "u"]  # the view's order
    assert orjson.loads(body) == {"z": 1, "a": ["2026-11-29T21:05:07.123456+00:00", "2026-01-02"], "nan": None,
                                  "np": 0.25, "n": 3, "3": "int key", "d": "1.5",
                                  "u": "00000000-0000-0000-0000-000000000001"}
    assert app.json.loads(app.json.dumps({"é": when})) == {"é": when.isoformat()}
    with pytest.raises(TypeError):
        app.json.dumps({"x": object()})
