"""The monitoring page (`metrics:read`: data scientists and admins): per task, is the model still right?

Input drift of the champion (PSI and missing share per feature, `carecast.monitoring.drift`), realised
performance per model version over rolling windows with its charts (AUROC, observed/expected events, PPV),
the pending-label share and expected events, subgroup AUROC gaps with their alerts
(`carecast.monitoring.performance`), the champion against the challenger scoring in shadow
(`carecast.scoring.shadow`) and the retraining decisions with each gate's reason (the registry). Beside them,
feedback rates of every task: CDS Hooks cards accepted or overridden, UI alerts acknowledged or dismissed, with
the reasons.

Only aggregates are shown (subgroups under the performance threshold's minimum size are "too small"), so the
view reads no patient's record and is not audited. The checks take seconds (a drift check loads a week of data
and builds its features), so their results are kept per app for CACHE_SECONDS; `?refresh=1` recomputes them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from flask import current_app, render_template, request
from markupsafe import Markup

from carecast.errors import CareCastError
from carecast.models.registry import Registry
from carecast.models.tasks import TASKS
from carecast.monitoring.drift import DriftReport, check_drift
from carecast.monitoring.performance import PerformanceReport, check_performance
from carecast.monitoring.performance import default_thresholds as performance_thresholds
from carecast.scoring.shadow import ShadowComparison, compare_shadow
from carecast.security.permissions import Permission
from carecast.serving.context import services
from carecast.serving.errors import NotFound
from carecast.serving.ui.blueprint import bp
from carecast.serving.ui.charts import bar_chart, time_chart
from carecast.serving.ui.session import page
from carecast.store.alert_feedback import DISMISS_REASONS
from carecast.store.feedback_rates import CDS, UI, feedback_counts

CACHE_SECONDS = 300.0
CACHE_EXTENSION = "carecast.monitoring_page"
DEFAULT_TASK = "deterioration_24h"
PSI_BARS = 12  # features in the PSI chart (largest first)
CHART_WIDTH, CHART_HEIGHT = 520, 160  # performance charts, two a row at 1280 px
FLAGGED_SHOWN = 15  # flagged features in the open table; the others behind a disclosure
DECISIONS_SHOWN = 10
SHADOW_BOOTSTRAP = 200
FEEDBACK_DAYS = 7
OUTCOME_WORDS = {CDS: {"accepted": "accepted", "overridden": "overridden"},
                 UI: {"accepted": "acknowledged", "overridden": "dismissed"}}
CHANNEL_NAMES = {CDS: "CDS Hooks cards (EHR)", UI: "Alerts in the CareCast UI"}

T = TypeVar("T")


# -- a small per-app cache ------------------------------------------------------------------------------------

@dataclass
class ResultCache:
    """Results of slow checks kept for `seconds` (a monotonic clock; `clock` is injectable for tests)."""

    seconds: float = CACHE_SECONDS
    clock: Callable[[], float] = time.monotonic
    _items: dict[tuple[Any, ...], tuple[float, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: tuple[Any, ...], compute: Callable[[], T], *, refresh: bool = False) -> tuple[T, float]:
        """The cached value of `key` and its age in seconds, computing it when absent, stale or `refresh`."""
        now = self.clock()
        with self._lock:
            found = self._items.get(key)
        if found is not None and not refresh and now - found[0] < self.seconds:
            value: T = found[1]
            return value, now - found[0]
        value = compute()
        with self._lock:
            self._items[key] = (self.clock(), value)
            for stale in [k for k, (at, _v) in self._items.items() if self.clock() - at >= self.seconds]:
                del self._items[stale]
        return value, 0.0


def cache() -> ResultCache:
    found = current_app.extensions.get(CACHE_EXTENSION)
    if found is None:
        found = current_app.extensions.setdefault(CACHE_EXTENSION, ResultCache())
    cached: ResultCache = found
    return cached


def _cached(key: tuple[Any, ...], compute: Callable[[], T]) -> tuple[T | None, str | None, float]:
    """(value, error message, age): a CareCastError (no champion, no reference) becomes its public message."""
    try:
        value, age = cache().get(key, compute, refresh=request.args.get("refresh") == "1")
    except CareCastError as exc:
        return None, exc.public_message, 0.0
    return value, None, age


# -- drift ----------------------------------------------------------------------------------------------------

def _drift_view(report: DriftReport) -> dict[str, Any]:
    measured = [f for f in report.features if f.psi is not None and math.isfinite(f.psi)]
    top = sorted(measured, key=lambda f: -(f.psi or 0.0))[:PSI_BARS]
    th = report.thresholds
    chart = bar_chart([(f.feature, round(float(f.psi or 0.0), 3)) for f in top],
                      label=f"Population stability index of the {len(top)} most shifted features "
                            f"(warn {th.psi_warn}, alert {th.psi_alert})") if top else None
    counts = {level: sum(1 for f in report.features if f.level == level) for level in ("ok", "warn", "alert")}
    missing = sorted(report.features, key=lambda f: -abs(f.missing_change))[:5]
    return {"report": report, "flagged": report.flagged, "shown": FLAGGED_SHOWN, "counts": counts, "chart": chart,
            "thresholds": th, "missing": [f for f in missing if abs(f.missing_change) > 0]}


# -- performance ----------------------------------------------------------------------------------------------

def _when(text: str) -> datetime:
    found = datetime.fromisoformat(text)
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def _series(windows: list[dict[str, Any]], key: str) -> list[tuple[datetime, float]]:
    return [(_when(w["end"]), float(w[key])) for w in windows
            if isinstance(w.get(key), int | float) and math.isfinite(float(w[key]))]


def _gaps(window: Mapping[str, Any], limit: float) -> list[dict[str, Any]]:
    out = []
    for attribute, gap in (window.get("subgroup_auroc_gaps") or {}).items():
        levels = []
        for level, m in (window.get("subgroups") or {}).get(attribute, {}).items():
            levels.append({"level": level, "n": int(m.get("n", 0)), "too_small": bool(m.get("too_small")),
                           "auroc": m.get("auroc"), "observed_expected": m.get("observed_expected")})
        out.append({"attribute": attribute, "gap": float(gap["gap"]), "highest": gap["highest"],
                    "lowest": gap["lowest"], "alert": float(gap["gap"]) > limit, "levels": levels})
    return out


def _model_view(model: Mapping[str, Any], report: PerformanceReport, start: datetime | None) -> dict[str, Any]:
    windows = list(model.get("windows") or [])
    th = report.thresholds
    end = report.as_of
    name = f"model {model['model_version']}" + (" (shadow)" if model.get("shadow") else "")
    def chart(key: str, label: str, **options: Any) -> Markup | None:
        points = _series(windows, key)  # no chart (a short note instead) until a window has the measure
        return time_chart(points, label=label, start=start, end=end, width=CHART_WIDTH, height=CHART_HEIGHT,
                          **options) if points else None

    charts = {
        "auroc": chart("auroc", f"Realised AUROC of {name} per {th.window_days:g}-day window", y_min=0.4, y_max=1.0),
        "oe": chart("observed_expected", f"Observed / expected events of {name}",
                    normal=(th.observed_expected_low, th.observed_expected_high), y_min=0.0),
        "ppv": chart("ppv", f"PPV at the alert threshold of {name}", percent=True, y_min=0.0, y_max=1.0),
        "pending": chart("pending_share", f"Share of {name}'s predictions with their outcome still pending",
                         percent=True, y_min=0.0, y_max=1.0),
    }
    latest = windows[-1] if windows else None
    return {"version": model["model_version"], "shadow": bool(model.get("shadow")), "threshold": model.get("threshold"),
            "latest": latest, "charts": charts, "n_windows": len(windows),
            "gaps": _gaps(latest, th.subgroup_auroc_gap_alert) if latest else []}


def _performance_view(report: PerformanceReport) -> dict[str, Any]:
    starts = [_when(m["windows"][0]["end"]) for m in report.models if m.get("windows")]
    start = min(starts) if starts else None
    models = [_model_view(m, report, start) for m in report.models]
    models.sort(key=lambda m: (m["shadow"], m["version"]))
    return {"report": report, "models": models, "alerts": report.alerts, "thresholds": report.thresholds}


# -- shadow and decisions -------------------------------------------------------------------------------------

def _registry() -> Registry:
    registry = services().registry
    if registry is None:
        raise NotFound("no model registry is configured")
    found: Registry = registry
    return found


def _decisions(task: str) -> list[dict[str, Any]]:
    registry = _registry()
    out = []
    for line in list(reversed(registry.decisions(task)))[:DECISIONS_SHOWN]:
        try:
            full = registry.decision(task, str(line.get("version"))) or {}
        except CareCastError:
            full = {}  # the version is gone from the registry; its summary line stays
        out.append({"at": line.get("at"), "version": line.get("version"), "champion": line.get("champion"),
                    "promoted": bool(line.get("promoted")), "summary": line.get("summary") or "",
                    "gates": [g for g in full.get("gates") or [] if isinstance(g, Mapping)],
                    "holdout": full.get("holdout") if isinstance(full.get("holdout"), Mapping) else None})
    return out


def _shadow(task: str, aliases: Mapping[str, Any], since: datetime | None, key: tuple[Any, ...]
            ) -> tuple[ShadowComparison | None, str | None]:
    champion, challenger = aliases.get("champion"), aliases.get("challenger")
    if not champion or not challenger:
        return None, None
    store = services().store
    found, error, _age = _cached(("shadow", *key, champion, challenger),
                                 lambda: compare_shadow(store, task, str(champion), str(challenger), since=since,
                                                        n_boot=SHADOW_BOOTSTRAP))
    return found, error


# -- one task, and the feedback of all ------------------------------------------------------------------------

def _task_view(task: str) -> dict[str, Any]:
    svc = services()
    registry = _registry()
    aliases = registry.aliases(task)
    key = (task, str(svc.store.engine.url))
    drift, drift_error, drift_age = _cached(("drift", *key, aliases.get("champion")),
                                            lambda: check_drift(svc.store, registry, task))
    perf, perf_error, perf_age = _cached(("performance", *key),
                                         lambda: check_performance(svc.store, registry, task))
    since = None
    if perf is not None and perf.as_of is not None:
        since = perf.as_of - timedelta(days=perf.thresholds.window_days)
    shadow, shadow_error = _shadow(task, aliases, since, key)
    return {"task": task, "description": TASKS[task].description, "champion": aliases.get("champion"),
            "challenger": aliases.get("challenger"),
            "drift": _drift_view(drift) if drift is not None else None, "drift_error": drift_error,
            "performance": _performance_view(perf) if perf is not None else None, "performance_error": perf_error,
            "shadow": shadow, "shadow_error": shadow_error, "shadow_since": since,
            "decisions": _decisions(task), "age_s": max(drift_age, perf_age)}


def _feedback_view() -> dict[str, Any]:
    engine = services().store.engine
    now = datetime.now(UTC)
    recent = feedback_counts(engine, since=now - timedelta(days=FEEDBACK_DAYS), until=now)
    ever = feedback_counts(engine)
    channels = []
    for channel in (CDS, UI):
        words = OUTCOME_WORDS[channel]
        row: dict[str, Any] = {"channel": channel, "name": CHANNEL_NAMES[channel], "yes_word": words["accepted"],
                               "no_word": words["overridden"]}
        for span, counts in (("recent", recent), ("ever", ever)):
            mine = [c for c in counts if c.channel == channel]
            yes = sum(c.cards for c in mine if c.outcome == "accepted")
            no = sum(c.cards for c in mine if c.outcome == "overridden")
            row[span] = {"yes": yes, "no": no, "share": no / (yes + no) if yes + no else None}
        reasons = [c for c in ever if c.channel == channel and c.outcome == "overridden"]
        row["reasons"] = [{"code": c.reason_code or "none given",
                           "words": DISMISS_REASONS.get(c.reason_code or "", "") if channel == UI else "",
                           "cards": c.cards} for c in reasons]
        channels.append(row)
    ui_reasons = next(c for c in channels if c["channel"] == UI)["reasons"]
    chart = bar_chart([(r["code"], float(r["cards"])) for r in ui_reasons],
                      label="UI alert dismissals by reason (all time)") if ui_reasons else None
    return {"channels": channels, "days": FEEDBACK_DAYS, "reasons_chart": chart}


def monitored_tasks() -> list[str]:
    """The known tasks with a model in the registry (drift and performance need a model card)."""
    registry = services().registry
    if registry is None:
        return []
    return [t for t in registry.tasks() if t in TASKS]


@bp.get("/monitoring")
@page(Permission.METRICS_READ)
def monitoring() -> str:
    tasks = monitored_tasks()
    wanted = request.args.get("task")
    if wanted is not None and wanted not in tasks:
        raise NotFound("no monitored task of that name")
    task = wanted or (DEFAULT_TASK if DEFAULT_TASK in tasks else tasks[0] if tasks else None)
    view = _task_view(task) if task is not None else None
    return render_template("monitoring.html", tasks=tasks, task=task, view=view, feedback=_feedback_view(),
                           cache_minutes=CACHE_SECONDS / 60, perf_thresholds=performance_thresholds())


__all__ = ["CACHE_SECONDS", "ResultCache", "cache", "monitored_tasks"]
