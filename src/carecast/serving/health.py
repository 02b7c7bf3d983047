"""Liveness and readiness probes: public, cheap and not audited (they touch no patient data)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from carecast.serving.auth import public
from carecast.serving.context import services
from carecast.serving.errors import RETRY_AFTER_SECONDS

bp = Blueprint("health", __name__)


@bp.get("/livez")
@public
def livez() -> Response:
    """The process is up and answering."""
    return jsonify({"status": "ok"})


def _database_answers() -> bool:
    try:
        with services().store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


def _model_loaded() -> bool:
    predictor = services().predictor
    try:
        predictor.maybe_refresh()  # a champion promoted since start-up makes this worker ready
        return bool(predictor.ready)
    except Exception:  # a predictor that cannot even say is not ready
        return False


@bp.get("/readyz")
@public
def readyz() -> Response:
    """Ready to serve: the database answers `SELECT 1` and the predictor holds a model."""
    checks = {"database": _database_answers(), "model": _model_loaded()}
    ready = all(checks.values())
    response = jsonify({"status": "ready" if ready else "not ready",
                        "checks": {k: "ok" if v else "unavailable" for k, v in checks.items()}})
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
