"""The HTTP layer: the Flask app factory, API v1 and health probes. See README.md for what it must not do."""

from __future__ import annotations

from carecast.serving.app import create_app

__all__ = ["create_app"]
