"""Prometheus metrics of the service: requests, predictions, ingestion, scoring lag, alerts and feedback.

Metric objects are module-level (prometheus_client's way); the serving and jobs layers record into them
through the small functions below, which never take patient data: labels are routes, tasks, model versions,
sources and outcomes only.

Several gunicorn workers: `carecast serve` sets `PROMETHEUS_MULTIPROC_DIR` (a fresh directory, see
`carecast.serving.wsgi.prepare_metrics_dir`) before anything imports this module; each worker then writes
its values to files there and `exposition()` merges them, so `/metrics` answers the same totals whichever
worker serves it. A worker that exits is marked dead (`mark_process_dead`). Without the variable (tests,
one process), the default in-process registry is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_RISK_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)

HTTP_REQUESTS = Counter("carecast_http_requests", "HTTP requests answered, by route template, method and status",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("carecast_http_request_duration_seconds", "Time to answer an HTTP request, by route",
                         ["route", "method"], buckets=_LATENCY_BUCKETS)
PREDICTIONS = Counter("carecast_predictions", "Risk scores computed, by task, model version and source "
                      "(api: POST /predict; live: stored by the scoring worker; cds: CDS Hooks)",
                      ["task", "model_version", "source"])
RISK = Histogram("carecast_prediction_risk", "Distribution of predicted risks, by task and model version",
                 ["task", "model_version"], buckets=_RISK_BUCKETS)
ALERTS = Counter("carecast_alerts", "Stored predictions at or above the model's alert threshold (band high)",
                 ["task", "model_version"])
RECORDS = Counter("carecast_ingested_records", "Records ingested, by source and outcome (accepted, rejected)",
                  ["source", "outcome"])
SCORE_LAG = Histogram("carecast_ingest_to_score_seconds", "From a scoring job being queued (new data stored) to "
                      "its prediction being stored", buckets=_LAG_BUCKETS)
SCORING_FAILURES = Counter("carecast_scoring_failures", "Scoring jobs that failed (they are retried)")
FEEDBACK = Counter("carecast_feedback", "Clinician feedback on alerts and cards, by channel (cds, ui) and outcome "
                   "(accepted, overridden, acknowledged, dismissed)", ["channel", "outcome"])
DRIFT_ALERTS = Counter("carecast_drift_alerts", "Scheduled drift checks whose verdict was alert (a feature's PSI or "
                       "missing share over its alert threshold), by task and model version", ["task", "model_version"])


# -- recording -------------------------------------------------------------------------------------------------

# The labelled children each request records into, by its label values: `labels()` looks a child up under
# a lock and checks its values on every call, which each request paid twice per metric it records (the
# children are prometheus_client's own, the ones labels() returns). Label values are route templates,
# methods, statuses, tasks, model versions and sources: a bounded set, and cleared if ever it is not.
_request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
_prediction_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
_MAX_CHILDREN = 10_000


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    children = _request_children.get((route, method, status))
    if children is None:
        if len(_request_children) >= _MAX_CHILDREN:
            _request_children.clear()
        children = (HTTP_REQUESTS.labels(route, method, str(status)), HTTP_LATENCY.labels(route, method))
        _request_children[(route, method, status)] = children
    children[0].inc()
    children[1].observe(seconds)


def observe_prediction(task: str, model_version: str, risk: float, *, source: str, alert: bool = False) -> None:
    children = _prediction_children.get((task, model_version, source))
    if children is None:
        if len(_prediction_children) >= _MAX_CHILDREN:
            _prediction_children.clear()
        children = (PREDICTIONS.labels(task, model_version, source), RISK.labels(task, model_version))
        _prediction_children[(task, model_version, source)] = children
    children[0].inc()
    children[1].observe(risk)
    if alert:
        ALERTS.labels(task, model_version).inc()


def observe_ingest(source: str, accepted: int, rejected: int) -> None:
    if accepted:
        RECORDS.labels(source, "accepted").inc(accepted)
    if rejected:
        RECORDS.labels(source, "rejected").inc(rejected)


def observe_score_lag(seconds: float) -> None:
    SCORE_LAG.observe(max(seconds, 0.0))


def observe_scoring_failure(n: int = 1) -> None:
    SCORING_FAILURES.inc(n)


def observe_feedback(channel: str, outcome: str) -> None:
    FEEDBACK.labels(channel, outcome).inc()


def observe_drift_alert(task: str, model_version: str | None) -> None:
    DRIFT_ALERTS.labels(task, model_version or "unknown").inc()


# -- exposition --------------------------------------------------------------------------------------------------

class _Gauges(Collector):
    """Values read when scraped (e.g. the scoring queue's depth), so every worker answers the same."""

    def __init__(self, gauges: Iterable[tuple[str, str, Callable[[], float | None]]]) -> None:
        self.gauges = list(gauges)

    def collect(self) -> Iterator[Metric]:
        for name, doc, read in self.gauges:
            try:
                value = read()
            except Exception:  # a database that is down: leave the gauge out rather than fail the scrape
                value = None
            if value is not None:
                family = GaugeMetricFamily(name, doc)
                family.add_metric([], float(value))
                yield family


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition(gauges: Iterable[tuple[str, str, Callable[[], float | None]]] = ()) -> bytes:
    """The text format of every metric (merged across worker processes when running under gunicorn), plus
    `gauges` read now: (name, help, read) triples."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    extra = CollectorRegistry()
    extra.register(_Gauges(gauges))
    return body + generate_latest(extra)


def mark_process_dead(pid: int) -> None:
    """A gunicorn worker exited: drop its live gauges (its counters stay counted)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)
