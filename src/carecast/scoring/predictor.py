"""The champion model of each task, compiled for single-row scoring and swapped atomically when promoted.

`Predictor` holds an immutable snapshot {(task, alias): model}; `refresh` builds a new snapshot beside it and
replaces it with one attribute assignment, so a request that already took the old snapshot finishes with
the old model and no request ever sees half a swap. Factors are put into clinical words by a small table
of feature-name patterns (`describe_factor`), from feature values only: never an identifier.

Risk bands come from the threshold chosen in the model card (the alert budget of training):

    high    risk >= threshold
    medium  threshold / 2 <= risk < threshold
    low     risk < threshold / 2

A card without a chosen threshold falls back to DEFAULT_THRESHOLD.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pandas as pd

from carecast.domain.variables import catalogue
from carecast.errors import CareCastError, NotFoundError
from carecast.models.fastpath import FastModel, RowError, compile_model
from carecast.models.registry import Registry, card_threshold

log = logging.getLogger(__name__)

DEFAULT_TASKS = ("deterioration_24h",)
DEFAULT_THRESHOLD = 0.5
TOP_FACTORS = 5
ALIASES = ("champion", "challenger")


class FeatureError(CareCastError):
    """A feature row the model cannot score (a column missing, a value that is not a number).
    The message names the feature, never its value."""

    http_status = 422


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One compiled model version of a task, with what its card says about alerting."""

    task: str
    alias: str
    version: str
    fast: FastModel
    estimator: Any
    threshold: float
    card: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ScoredRisk:
    """A calibrated risk, its band and the factors that moved it most, largest first. Each factor is
    {feature, contribution, value, text}: `contribution` is the feature's part of the calibrated log-odds
    (positive raises the risk), `value` the model's input (None when missing), `text` clinical words."""

    task: str
    model_version: str
    risk: float
    band: str
    factors: list[dict[str, Any]]
    threshold: float
    shadow: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "model_version": self.model_version, "risk": self.risk, "band": self.band,
                "factors": self.factors, "threshold": self.threshold, "shadow": self.shadow}


def band_of(risk: float, threshold: float) -> str:
    """The band of a risk: "high" at or above the alert threshold, "medium" from half of it, "low" below."""
    if risk >= threshold:
        return "high"
    if risk >= threshold / 2:
        return "medium"
    return "low"


Snapshot = Mapping[tuple[str, str], LoadedModel]


class Predictor:
    """Champion (and optionally challenger) models of each task, loaded from a Registry.

    Thread-safe: `predict` reads one snapshot and never takes a lock; `refresh` is serialised."""

    def __init__(self, registry: Registry, tasks: Iterable[str] = DEFAULT_TASKS, *, challengers: bool = False,
                 load: bool = True) -> None:
        self.registry = registry
        self.tasks: tuple[str, ...] = tuple(tasks)
        self.aliases: tuple[str, ...] = ALIASES if challengers else ("champion",)
        self._snapshot: Snapshot = MappingProxyType({})
        self._lock = threading.Lock()
        self._checked_at = -math.inf
        self._unloadable: set[tuple[str, str, str]] = set()
        if load:
            self.refresh()

    # -- loading ------------------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Re-read each task's aliases; load and compile any version that changed, then swap the snapshot
        in one assignment. Returns True if anything changed. A model that fails to load or compile is
        logged and the one serving now is kept."""
        with self._lock:
            self._checked_at = time.monotonic()
            old = self._snapshot
            new: dict[tuple[str, str], LoadedModel] = dict(old)
            changed = False
            for task in self.tasks:
                try:
                    names = self.registry.aliases(task)
                except Exception as exc:  # registry unreachable: keep serving what we have
                    log.warning("model registry unreadable for %s (%s); keeping the loaded models", task,
                                type(exc).__name__)
                    continue
                for alias in self.aliases:
                    wanted = names.get(alias)
                    current = old.get((task, alias))
                    if not wanted:
                        changed |= new.pop((task, alias), None) is not None
                        continue
                    if current is not None and current.version == wanted:
                        continue
                    if (task, alias, str(wanted)) in self._unloadable:
                        continue  # tried and refused once; not re-read every few seconds
                    loaded = self._load(task, alias, str(wanted))
                    if loaded is not None:
                        new[(task, alias)] = loaded
                        changed = True
            if changed:
                self._snapshot = MappingProxyType(new)  # the swap: one assignment
                log.info("models now serving: %s", {f"{t}/{a}": m.version for (t, a), m in new.items()})
            return changed

    def _load(self, task: str, alias: str, version: str) -> LoadedModel | None:
        try:
            model = self.registry.load(task, version)
            fast = compile_model(model.estimator)
        except Exception as exc:
            log.error("could not load %s %s %s (%s: %s); keeping the current one", task, alias, version,
                      type(exc).__name__, exc)  # model files hold no patient data
            self._unloadable.add((task, alias, version))
            return None
        return LoadedModel(task=task, alias=alias, version=model.version, fast=fast, estimator=model.estimator,
                           threshold=card_threshold(model.card) or DEFAULT_THRESHOLD,
                           card=MappingProxyType(dict(model.card)))

    def maybe_refresh(self, min_interval_s: float = 2.0) -> bool:
        """`refresh` at most once per `min_interval_s`, and never waiting for another thread's refresh:
        cheap enough to call on every request or worker loop."""
        if time.monotonic() - self._checked_at < min_interval_s:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if time.monotonic() - self._checked_at < min_interval_s:
                return False
            self._checked_at = time.monotonic()
        finally:
            self._lock.release()
        return self.refresh()

    # -- what is loaded -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """At least one champion model is loaded."""
        return any(alias == "champion" for _, alias in self._snapshot)

    def versions(self, alias: str = "champion") -> dict[str, str]:
        """{task: version} of the loaded models under `alias`."""
        return {task: m.version for (task, a), m in self._snapshot.items() if a == alias}

    def model(self, task: str, alias: str = "champion") -> LoadedModel:
        found = self._snapshot.get((task, alias))
        if found is None:
            raise NotFoundError(f"no {alias} model for {task}")
        return found

    def has(self, task: str, alias: str = "champion") -> bool:
        return (task, alias) in self._snapshot

    def feature_names(self, task: str) -> tuple[str, ...]:
        """The columns the champion of `task` reads (numeric first, then categorical)."""
        return self.model(task).fast.feature_names

    def feature_set(self, task: str) -> frozenset[str]:
        """The same columns as a set, made once per loaded model."""
        return self.model(task).fast.feature_set

    # -- scoring ------------------------------------------------------------------------------------------
    def predict(self, task: str, features_row: Mapping[str, object] | pd.Series | pd.DataFrame, *,
                alias: str = "champion", fill_missing: bool = False, top_k: int = TOP_FACTORS) -> ScoredRisk:
        """Score one feature row (a mapping, a Series or a one-row DataFrame) with the model under `alias`.

        Every feature the model reads must be present (None or NaN = missing) unless `fill_missing`.
        Raises NotFoundError when the task has no such model, FeatureError for an unusable row."""
        model = self._snapshot.get((task, alias))  # the one read of the snapshot for this request
        if model is None:
            raise NotFoundError(f"no {alias} model for {task}")
        try:
            result = model.fast.predict_features(_as_mapping(features_row), top_k=top_k, fill_missing=fill_missing)
        except RowError as exc:
            raise FeatureError(str(exc)) from None
        risk = float(result.probability)
        factors = [{"feature": c.feature, "contribution": float(c.contribution), "value": c.value,
                    "text": describe_factor(c.feature, c.value)} for c in result.contributions]
        return ScoredRisk(task=task, model_version=model.version, risk=risk, band=band_of(risk, model.threshold),
                          factors=factors, threshold=model.threshold, shadow=alias != "champion")


def _as_mapping(row: Mapping[str, object] | pd.Series | pd.DataFrame) -> Mapping[str, object]:
    if isinstance(row, pd.DataFrame):
        if len(row) != 1:
            raise FeatureError(f"expected one feature row, got {len(row)}")
        return {str(k): v for k, v in row.iloc[0].items()}
    if isinstance(row, pd.Series):
        return {str(k): v for k, v in row.items()}
    return row


# -- factors in clinical words ------------------------------------------------------------------------------

_SHORT_NAMES = {
    "heart_rate": "heart rate", "respiratory_rate": "respiratory rate", "spo2": "SpO2",
    "systolic_bp": "systolic BP", "diastolic_bp": "diastolic BP", "gcs_total": "GCS", "acvpu": "ACVPU",
    "oxygen_flow": "oxygen flow", "wbc": "white cell count", "crp": "CRP", "urea_nitrogen": "urea nitrogen",
}
_UNIT_TEXT = {"Cel": "°C", "mm[Hg]": "mmHg", "10*3/uL": "×10³/µL", "10*6/uL": "×10⁶/µL", "{score}": "",
              "{steps}": "", "{INR}": ""}
_CATEGORICAL = {"sex": "sex", "race": "race", "ethnicity": "ethnicity", "admission_type": "admission",
                "encounter_class": "encounter class"}
_WINDOW_WORDS = {"min": "lowest", "max": "highest", "mean": "mean"}
_TERMS = {"aids_hiv": "AIDS/HIV", "ards": "ARDS"}  # feature-name parts that are not plain words


def _name(variable: str) -> str:
    return _SHORT_NAMES.get(variable, variable.replace("_", " "))


def _fmt(value: float) -> str:
    """A reading as a clinician writes it: 112, 37.9, 2.35, 0.5."""
    if float(value).is_integer():
        return str(int(value))
    size = abs(value)
    text = f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _with_unit(variable: str, value: float) -> str:
    """The value with the catalogue's unit: "112/min", "94%", "37.9 °C", "2.3 mmol/L"."""
    return _fmt(value) + _unit_suffix(variable)


@functools.lru_cache(maxsize=1024)
def _unit_suffix(variable: str) -> str:
    var = catalogue().get(variable)
    unit = "" if var is None else _UNIT_TEXT.get(var.unit, var.unit)
    glue = "" if not unit or unit.startswith(("/", "%")) else " "
    return glue + unit


def _trend(value: float, up: str = "rising", down: str = "falling", flat: str = "steady") -> str:
    return up if value > 0 else down if value < 0 else flat


def _windowed(m: re.Match[str], v: float) -> str:
    """Bedside and wearable window statistics: <var>_<stat>_<w>h and wearable_<var>_<stat>_<w>h."""
    what, var, stat, hours = _what(m), m["var"], m["stat"], m["w"]
    if stat == "slope":
        return f"{what} {_trend(v)}"
    if stat == "count":
        return f"no {what} readings in {hours} h" if v == 0 else f"{_fmt(v)} {what} readings in {hours} h"
    if stat == "last":
        return f"{what} {_with_unit(var, v)}"
    if stat == "std":
        return f"{what} varying by {_with_unit(var, v)} over {hours} h"
    return f"{_WINDOW_WORDS[stat]} {what} {_with_unit(var, v)} in {hours} h"


def _lab(m: re.Match[str], v: float) -> str:
    """Laboratory results: <var>_last, <var>_delta, <var>_hours_since."""
    what, var, stat = _what(m), m["var"], m["stat"]
    if stat == "delta":
        return f"{what} {_trend(v, f'up {_with_unit(var, abs(v))}', f'down {_with_unit(var, abs(v))}', 'unchanged')}"
    if stat == "hours_since":
        return f"{what} measured {_fmt(round(v))} h ago"
    return f"{what} {_with_unit(var, v)}"


@functools.lru_cache(maxsize=4096)  # the matches are _rule_of's, one per feature name: the same objects each time
def _what(m: re.Match[str]) -> str:
    groups = m.groupdict()
    if "var" in groups:
        return ("wearable " if groups.get("src") else "") + _name(m["var"])
    what = groups.get("what") or ""
    return _TERMS.get(what, what.replace("_", " "))


def _since_admission(_m: re.Match[str], v: float) -> str:
    return f"{_fmt(round(v / 24, 1))} days since admission" if v >= 48 else f"{_fmt(round(v))} h since admission"


def _fixed(template: str) -> Callable[[re.Match[str], float], str]:
    return lambda m, v: template.format(v=_fmt(v), what=_what(m))


def _yes_no(yes: str, no: str) -> Callable[[re.Match[str], float], str]:
    return lambda m, v: (yes if v else no).format(what=_what(m))


Rule = tuple[re.Pattern[str], Callable[[re.Match[str], float], str], str]

# The table: a pattern over the feature name, the words for a present value, and the words for a missing
# one ("{what}" is the clinical name). The first full match wins.
_RULES: list[Rule] = [(re.compile(p), present, absent) for p, present, absent in [
    (r"news2_total", _fixed("NEWS2 {v}"), "NEWS2 not available"),
    (r"news2_any3", _yes_no("a NEWS2 parameter scoring 3", "no NEWS2 parameter scoring 3"), "NEWS2 not available"),
    (r"news2_missing", _fixed("{v} NEWS2 parameters not recorded"), "NEWS2 not available"),
    (r"qsofa_total", _fixed("qSOFA {v}"), "qSOFA not available"),
    (r"qsofa_missing", _fixed("{v} qSOFA criteria not recorded"), "qSOFA not available"),
    (r"age", lambda m, v: f"age {int(v)}", "age not recorded"),
    (r"hours_since_admission", _since_admission, "admission time not recorded"),
    (r"charlson_index", _fixed("Charlson comorbidity index {v}"), "no comorbidity history recorded"),
    (r"comorbidity_(?P<what>.+)", _yes_no("history of {what}", "no history of {what}"), "no history of {what}"),
    (r"ed_visits_prior", _fixed("{v} emergency visits in the previous 180 days"), "no previous emergency visits"),
    (r"imaging_reports", _fixed("{v} imaging reports in 72 h"), "no recent imaging"),
    (r"imaging_no_abnormality", _yes_no("imaging without abnormality", "no normal imaging report"),
     "no recent imaging"),
    (r"imaging_(?P<what>.+)", _yes_no("imaging shows {what}", "imaging without {what}"), "no recent imaging"),
    (r"(?P<src>wearable_)?(?P<var>[a-z0-9_]+?)_(?P<stat>last|min|max|mean|slope|count|std)_(?P<w>\d+)h", _windowed,
     "no recent {what}"),
    (r"(?P<var>[a-z0-9_]+?)_(?P<stat>last|delta|hours_since)", _lab, "no recent {what}"),
]]


def describe_factor(feature: str, value: float | str | None) -> str:
    """A factor in clinical words, from the feature's name and value only (never an identifier):

    >>> describe_factor("heart_rate_last_4h", 112.0)
    'heart rate 112/min'
    >>> describe_factor("respiratory_rate_slope_4h", 1.5)
    'respiratory rate rising'
    >>> describe_factor("lactate_last", None)
    'no recent lactate'
    """
    if feature in _CATEGORICAL:
        label = _CATEGORICAL[feature]
        if value is None:
            return f"{label} not recorded"
        level = str(value).replace("_", " ")
        return f"{level} {label}" if feature == "admission_type" else f"{label} {level}"
    words = feature.replace("_", " ")
    if isinstance(value, str):
        return f"{words} {value}"
    rule = _rule_of(feature)
    if rule is not None:
        m, present, absent = rule
        return absent.format(what=_what(m)) if value is None else present(m, float(value))
    return f"no recent {words}" if value is None else f"{words} {_fmt(float(value))}"


@functools.lru_cache(maxsize=4096)
def _rule_of(feature: str) -> tuple[re.Match[str], Any, str] | None:
    """The first rule whose pattern matches the feature's name, with its match (a model reads a fixed set of
    names, so each is matched once per process rather than once per factor of every answer)."""
    for pattern, present, absent in _RULES:
        m = pattern.fullmatch(feature)
        if m is not None:
            return m, present, absent
    return None


__all__ = ["DEFAULT_THRESHOLD", "FeatureError", "LoadedModel", "Predictor", "ScoredRisk", "band_of",
           "describe_factor"]
