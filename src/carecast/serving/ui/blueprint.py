"""The UI blueprint object, apart from the views so that every view module can import it."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")
