"""Every request measured and logged; `/metrics` for Prometheus.

`init_app` times each request and, once it is answered, counts it by route template, method and status
(the template, never the path: paths hold patient ids) and writes one structured access-log line with the
request id, user id and role, route, status and latency. Health probes are logged at DEBUG so that they do
not drown the log. `/metrics` needs `metrics:read` (a Prometheus scrape token of its own, scoped to it) and
merges the values of every gunicorn worker (see carecast.monitoring.metrics).
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, Response, current_app, g, request

from carecast.monitoring import metrics
from carecast.monitoring.logs import DirectLog
from carecast.security.permissions import Permission
from carecast.serving.auth import requires
from carecast.serving.context import services
from carecast.serving.stream import hub_of

log = logging.getLogger("carecast.access")
access_log = DirectLog(log)  # one line per request, straight to the JSON log when that is where it goes
bp = Blueprint("metrics", __name__)
_QUIET_ROUTES = frozenset({"/livez", "/readyz", "/metrics"})


def _before() -> None:
    g.started = time.perf_counter()


def _after(response: Response) -> Response:
    started = g.get("started")
    if started is None:
        return response
    seconds = time.perf_counter() - started
    rule = request.url_rule
    route = rule.rule if rule is not None else "(no route)"
    metrics.observe_request(route, request.method, response.status_code, seconds)
    level = logging.DEBUG if route in _QUIET_ROUTES else logging.INFO
    if log.isEnabledFor(level):
        who = g.get("principal")
        access_log.log(level, "%s %s %d", request.method, route, response.status_code, extra={
            "request_id": g.get("request_id"), "user_id": getattr(who, "user_id", None),
            "role": getattr(who, "role", None), "route": route, "method": request.method,
            "status": response.status_code, "latency_ms": round(seconds * 1000.0, 2)})
    return response


def _queue_depth() -> float | None:
    queue = services().queue
    return None if queue is None else float(queue.depth())


@bp.get("/metrics")
@requires(Permission.METRICS_READ)
def metrics_view() -> Response:
    hub = hub_of(current_app)
    gauges = [("carecast_scoring_queue_depth", "Scoring jobs waiting or leased (shared by every process)",
               _queue_depth)]
    if hub is not None:
        gauges.append(("carecast_live_streams", "Open Server-Sent Events streams in the process that answered",
                       lambda: float(hub.active)))
    return Response(metrics.exposition(gauges), mimetype=metrics.CONTENT_TYPE.split(";")[0],
                    headers={"Content-Type": metrics.CONTENT_TYPE})


def init_app(app: Flask) -> None:
    app.before_request(_before)
    app.after_request(_after)
    app.register_blueprint(bp)
