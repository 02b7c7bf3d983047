"""The model registry: each model file travels with its card, and is checked before it is loaded.

Layout under the root (a local directory or any fsspec URL such as gs://bucket/models):

    <task>/<version>/model.joblib    the fitted estimator (joblib)
    <task>/<version>/card.json       the model card, including the sha256 of model.joblib
    <task>/<version>/report/         the validation report (JSON, Markdown, plots)
    <task>/<version>/decision.json   the promotion decision of a retraining run, gate by gate
    <task>/aliases.json              {"champion": v, "challenger": v, "history": [...], "decisions": [...]}

Unpickling runs code, so `load` refuses a file whose sha256 differs from its card's.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import joblib

from carecast.errors import CareCastError, NotFoundError
from carecast.models.report import to_jsonable

ALIASES = ("champion", "challenger")


class RegistryError(CareCastError):
    """A model file does not match its card, or an alias or version does not exist."""


@dataclass(frozen=True)
class LoadedModel:
    version: str
    estimator: Any
    card: dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = str(root).rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.root)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def _read_json(self, path: str) -> Any:
        with self.fs.open(path, "r") as fh:
            return json.load(fh)

    def _write_bytes(self, path: str, data: bytes) -> None:
        parent = posixpath.dirname(path)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = path + ".tmp"
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
        self.fs.mv(tmp, path)  # atomic on a local file system; a single object write on GCS

    # -- versions --------------------------------------------------------------------------------------
    def save(self, task: str, estimator: Any, card: dict[str, Any], report_dir: Path | None = None) -> str:
        """Store a model and its card; returns the new version id."""
        buf = io.BytesIO()
        joblib.dump(estimator, buf, compress=3)
        blob = buf.getvalue()
        digest = hashlib.sha256(blob).hexdigest()
        version = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{digest[:8]}"
        card = {**card, "task": task, "version": version, "model_sha256": digest, "saved_at": _now()}
        self._write_bytes(self._path(task, version, "model.joblib"), blob)
        self._write_bytes(self._path(task, version, "card.json"),
                          json.dumps(to_jsonable(card), indent=2, allow_nan=False).encode())
        if report_dir is not None:
            for item in sorted(Path(report_dir).iterdir()):
                if item.is_file():
                    self._write_bytes(self._path(task, version, "report", item.name), item.read_bytes())
        return version

    def versions(self, task: str) -> list[str]:
        path = self._path(task)
        if not self.fs.exists(path):
            return []
        out = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False)]
        return sorted(v for v in out if self.fs.exists(self._path(task, v, "card.json")))

    def tasks(self) -> list[str]:
        if not self.fs.exists(self.base):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.base, detail=False)
                      if self.fs.isdir(p))

    def card(self, task: str, version_or_alias: str) -> dict[str, Any]:
        version = self.resolve(task, version_or_alias)
        card: dict[str, Any] = self._read_json(self._path(task, version, "card.json"))
        return card

    def load(self, task: str, version_or_alias: str = "champion") -> LoadedModel:
        version = self.resolve(task, version_or_alias)
        card = self.card(task, version)
        with self.fs.open(self._path(task, version, "model.joblib"), "rb") as fh:
            blob = fh.read()
        if hashlib.sha256(blob).hexdigest() != card.get("model_sha256"):
            raise RegistryError(f"model file of {task} {version} does not match its card's sha256; refusing to load")
        return LoadedModel(version=version, estimator=joblib.load(io.BytesIO(blob)), card=card)

    # -- aliases ---------------------------------------------------------------------------------------
    def aliases(self, task: str) -> dict[str, Any]:
        path = self._path(task, "aliases.json")
        if not self.fs.exists(path):
            return {"history": []}
        data: dict[str, Any] = self._read_json(path)
        return data

    def resolve(self, task: str, version_or_alias: str) -> str:
        if version_or_alias in ALIASES:
            version = self.aliases(task).get(version_or_alias)
            if not version:
                raise NotFoundError(f"{task} has no {version_or_alias} model")
            return str(version)
        if version_or_alias not in self.versions(task):
            raise NotFoundError(f"{task} has no model version {version_or_alias}")
        return version_or_alias

    def _set_aliases(self, task: str, data: dict[str, Any]) -> None:
        self._write_bytes(self._path(task, "aliases.json"), json.dumps(data, indent=2).encode())

    def promote(self, task: str, version: str, alias: str = "champion", reason: str = "") -> dict[str, Any]:
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias}; use one of {', '.join(ALIASES)}")
        version = self.resolve(task, version)
        data = self.aliases(task)
        previous = data.get(alias)
        data[alias] = version
        if alias == "champion" and data.get("challenger") == version:
            data.pop("challenger")
        data.setdefault("history", []).append(
            {"at": _now(), "alias": alias, "version": version, "previous": previous, "reason": reason})
        self._set_aliases(task, data)
        return data

    # -- promotion decisions ---------------------------------------------------------------------------
    def record_decision(self, task: str, version: str, decision: dict[str, Any]) -> dict[str, Any]:
        """Keep a promotion decision: in full beside the model (decision.json), and a summary line
        {at, version, champion, promoted, summary} in aliases.json next to the alias history."""
        version = self.resolve(task, version)
        at = _now()
        full = {"at": at, "task": task, "version": version, **decision}
        self._write_bytes(self._path(task, version, "decision.json"),
                          json.dumps(to_jsonable(full), indent=2, allow_nan=False).encode())
        data = self.aliases(task)
        line = {"at": at, "version": version, "champion": decision.get("champion"),
                "promoted": bool(decision.get("promoted")), "summary": decision.get("summary", "")}
        data.setdefault("decisions", []).append(line)
        self._set_aliases(task, data)
        return full

    def decision(self, task: str, version_or_alias: str) -> dict[str, Any] | None:
        """The recorded promotion decision of a version, or None when it never went through the gates."""
        path = self._path(task, self.resolve(task, version_or_alias), "decision.json")
        if not self.fs.exists(path):
            return None
        found: dict[str, Any] = self._read_json(path)
        return found

    def decisions(self, task: str) -> list[dict[str, Any]]:
        """Every recorded decision of a task, oldest first."""
        found: list[dict[str, Any]] = self.aliases(task).get("decisions", [])
        return found

    def rollback(self, task: str, reason: str = "rollback") -> dict[str, Any]:
        """Make the champion before the current one champion again."""
        data = self.aliases(task)
        current = data.get("champion")
        earlier = [h for h in data.get("history", []) if h["alias"] == "champion" and h["version"] == current]
        previous = earlier[-1]["previous"] if earlier else None
        if not previous:
            raise RegistryError(f"{task} has no previous champion to roll back to")
        data["champion"] = previous
        data["history"].append({"at": _now(), "alias": "champion", "version": previous, "previous": current,
                                "reason": reason})
        self._set_aliases(task, data)
        return data


def card_threshold(card: Mapping[str, Any] | None) -> float | None:
    """The alert threshold chosen in a model card (None when the card has none, or none in (0, 1))."""
    chosen = (card or {}).get("threshold") or {}
    value = chosen.get("threshold") if isinstance(chosen, Mapping) else chosen
    try:
        t = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return t if 0.0 < t < 1.0 else None
