"""Run the API under gunicorn from Python: one worker per core, OMP threads 1, graceful shutdown in 10 s."""

from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication

GRACEFUL_TIMEOUT_S = 10


class CareCastServer(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from carecast.serving.app import app_from_env

        return app_from_env()


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int | None = None) -> None:
    # Model inference and numpy must not oversubscribe the cores the workers already share.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    CareCastServer({
        "bind": f"{host}:{port}", "workers": workers or os.cpu_count() or 1, "worker_class": "gthread",
        "threads": 4, "graceful_timeout": GRACEFUL_TIMEOUT_S, "timeout": 30, "accesslog": None,
        "preload_app": False,
    }).run()
