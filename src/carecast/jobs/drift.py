"""Drift on a schedule: `check_drift` of each task's champion every N hours, beside the retraining schedule.

An alert (a feature's PSI or missing share over its alert threshold, see monitoring/data/thresholds.toml) is
logged as a structured warning (task, model version, event "drift:alert", the flagged feature names: never
values) and counted in the Prometheus counter carecast_drift_alerts, which the alert rule CareCastDriftAlert
(deploy/prometheus/alerts.yml) turns into a notification. The loop is `RetrainScheduler`'s; the interval is
CARECAST_DRIFT_INTERVAL_HOURS (0: off, the default under CARECAST_ENV=test).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from carecast.config import Settings
from carecast.errors import NotFoundError
from carecast.jobs.retrain import RetrainScheduler
from carecast.models.registry import Registry
from carecast.monitoring.drift import DriftReport, MonitoringError, check_drift
from carecast.monitoring.metrics import observe_drift_alert
from carecast.store import Store

log = logging.getLogger(__name__)

ALERT_EVENT = "drift:alert"
MAX_NAMED_FEATURES = 5  # how many flagged feature names an alert's log line carries


def report_drift(report: DriftReport) -> bool:
    """Log and count one check's verdict: a warning line and carecast_drift_alerts on alert, an info line
    otherwise. Returns whether it alerted."""
    if report.alerted:
        names = [f.feature for f in report.flagged if f.level == "alert"]
        shown = ", ".join(names[:MAX_NAMED_FEATURES]) + (f" and {len(names) - MAX_NAMED_FEATURES} more"
                                                         if len(names) > MAX_NAMED_FEATURES else "")
        log.warning("drift alert for %s: %d features over the alert threshold (%s)", report.task, len(names), shown,
                    extra={"task": report.task, "model_version": report.model_version, "event": ALERT_EVENT})
        observe_drift_alert(report.task, report.model_version)
        return True
    log.info("drift check %s: %s", report.task, report.status,
             extra={"task": report.task, "model_version": report.model_version, "event": "drift:checked"})
    return False


def check_tasks(store: Store, registry: Registry, tasks: Iterable[str], *, since_hours: float = 168.0
                ) -> dict[str, dict[str, Any]]:
    """One scheduled run: the drift of each task's champion over the last `since_hours` of stored data.
    A task without a champion (or without reference distributions in its card) is skipped and reported."""
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        try:
            report = check_drift(store, registry, task, since_hours=since_hours)
        except (MonitoringError, NotFoundError) as exc:
            out[task] = {"task": task, "skipped": exc.public_message}
            log.info("drift check %s skipped: %s", task, exc.public_message, extra={"task": task})
            continue
        report_drift(report)
        out[task] = {"task": task, "status": report.status, "model_version": report.model_version,
                     "alerted": [f.feature for f in report.flagged if f.level == "alert"]}
    return out


def check_tasks_from_settings(settings: Settings, tasks: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`check_tasks` on a store and registry opened from `settings` (and closed again)."""
    store = Store.open(settings)
    try:
        return check_tasks(store, Registry(settings.model_registry), tasks)
    finally:
        store.close()


def drift_scheduler_from_settings(settings: Settings, tasks: Iterable[str] = ("deterioration_24h",)
                                  ) -> RetrainScheduler | None:
    """The in-process drift schedule: `check_tasks` every `settings.drift_interval_hours` hours (the first
    run after one interval), or None when that is 0."""
    hours = settings.drift_interval_hours
    if not hours or hours <= 0:
        return None
    wanted = tuple(tasks)
    return RetrainScheduler(lambda: check_tasks_from_settings(settings, wanted), interval_s=hours * 3600.0,
                            name="carecast-drift", what="drift check")


__all__ = ["ALERT_EVENT", "check_tasks", "check_tasks_from_settings", "drift_scheduler_from_settings",
           "report_drift"]
