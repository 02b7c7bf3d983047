"""The HTTP layer: the Flask app factory, API v1 and health probes. See README.md for what it must not do."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: `carecast serve` imports carecast.serving.wsgi and must
    # set up the metrics directory before the app (and with it prometheus_client's metrics) is imported.
    if name == "create_app":
        from carecast.serving.app import create_app

        return create_app
    raise AttributeError(name)
