"""The declared feature list (data/feature_spec.toml) and the names of the columns it produces."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from carecast.features.scores import charlson_categories

NEWS2_COLUMNS = ("news2_total", "news2_any3", "news2_missing")
QSOFA_COLUMNS = ("qsofa_total", "qsofa_missing")


@dataclass(frozen=True)
class FeatureSpec:
    raw: dict[str, Any]

    @property
    def static_numeric(self) -> list[str]:
        return list(self.raw["static"]["numeric"])

    @property
    def categorical(self) -> list[str]:
        return list(self.raw["static"]["categorical"])

    def vitals(self) -> tuple[list[str], list[int], list[str]]:
        v = self.raw["vitals"]
        return list(v["variables"]), [int(w) for w in v["windows_hours"]], list(v["stats"])

    def labs(self) -> tuple[list[str], int, list[str]]:
        v = self.raw["labs"]
        return list(v["variables"]), int(v["lookback_hours"]), list(v["stats"])

    def wearables(self) -> tuple[list[str], list[int], list[str]]:
        v = self.raw["wearables"]
        return list(v["variables"]), [int(w) for w in v["windows_hours"]], list(v["stats"])

    def imaging(self) -> tuple[int, dict[str, list[str]]]:
        v = self.raw["imaging"]
        return int(v["lookback_hours"]), {k: list(codes) for k, codes in v["findings"].items()}

    @property
    def ed_lookback_days(self) -> int:
        return int(self.raw["utilisation"]["ed_visits_lookback_days"])

    def numeric_columns(self) -> list[str]:
        cols = list(self.static_numeric)
        variables, windows, stats = self.vitals()
        cols += [f"{v}_{s}_{w}h" for w in windows for v in variables for s in stats]
        labs, _, lab_stats = self.labs()
        cols += [f"{v}_{s}" for v in labs for s in lab_stats]
        wvars, wwins, wstats = self.wearables()
        cols += [f"wearable_{v}_{s}_{w}h" for w in wwins for v in wvars for s in wstats]
        _, findings = self.imaging()
        cols += ["imaging_reports"] + [f"imaging_{f}" for f in findings]
        if self.raw["comorbidities"].get("charlson"):
            cols += ["charlson_index"] + [f"comorbidity_{c}" for c in charlson_categories()]
        cols += ["ed_visits_prior"]
        if self.raw["scores"].get("news2"):
            cols += list(NEWS2_COLUMNS)
        if self.raw["scores"].get("qsofa"):
            cols += list(QSOFA_COLUMNS)
        return cols

    def columns(self) -> list[str]:
        """Every feature column, numeric first, then categorical: the model's input schema."""
        return self.numeric_columns() + self.categorical

    def schema_hash(self) -> str:
        return hashlib.sha256("\n".join(self.columns()).encode()).hexdigest()[:16]


@cache
def default_spec() -> FeatureSpec:
    text = resources.files("carecast.features").joinpath("data", "feature_spec.toml").read_text(encoding="utf-8")
    return FeatureSpec(tomllib.loads(text))
