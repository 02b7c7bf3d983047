"""The clinician web UI (`/ui`): sign-in, ward and patient views with live risk, models, admin, audit and
population pages, rendered on the server from the same services as the API.

`init_app(app, services)` sets the session key (refusing production without CARECAST_SECRET_KEY), the
cookie flags, CSRF checking and HTML error pages for UI views. The security headers (CSP, framing, caching)
of UI responses, as of every response, come from `carecast.serving.headers`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, redirect, render_template, request, url_for

from carecast.serving import errors
from carecast.serving.auth import public
from carecast.serving.context import Services
from carecast.serving.ui import (  # noqa: F401 (importing registers the views)
    admin,
    audit_page,
    auth_pages,
    clinical,
    models_page,
    monitoring_page,
    population_page,
)
from carecast.serving.ui.blueprint import bp
from carecast.serving.ui.session import (
    CSRF_FIELD,
    can,
    check_csrf,
    configure,
    csrf_token,
    idle_seconds,
    warn_seconds,
)


def _error_page(exc: Exception) -> Response | tuple[str, int]:
    """UI views answer errors as an HTML page; the API's handler decides the status, code, message and
    error id (and logs unexpected errors without their messages)."""
    answer = errors.handle_error(exc)
    body = (answer.get_json(silent=True) or {}).get("error") or {}
    status = answer.status_code
    titles = {400: "The request could not be read", 403: "Not allowed", 404: "Not found",
              405: "Not allowed here", 422: "Please check the form", 429: "Too many attempts",
              503: "Temporarily unavailable"}
    html = render_template("error.html", status=status, title=titles.get(status, "Something went wrong"),
                           message=body.get("message") or "", error_id=body.get("error_id"),
                           request_id=body.get("request_id"))
    response = Response(html, status=status, mimetype="text/html")
    for name in ("Retry-After", "Allow"):
        if name in answer.headers:
            response.headers[name] = answer.headers[name]
    return response


def _fmt_time(value: datetime | None, pattern: str = "%d %b %H:%M") -> str:
    return "" if value is None else value.astimezone(UTC).strftime(pattern)


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = (datetime.now(UTC) - value).total_seconds()
    if seconds < 90:
        return "just now"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _template_globals() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "csrf_field": CSRF_FIELD, "can": can, "principal": getattr(g, "principal", None),
            "idle_seconds": int(idle_seconds()), "warn_seconds": int(warn_seconds())}


# Forms and the population page's CSV are small: a larger body is refused (413) before it is parsed.
MAX_FORM_BYTES = 1024 * 1024


def _limit_body() -> None:
    request.max_content_length = MAX_FORM_BYTES


bp.before_request(_limit_body)
bp.before_request(check_csrf)
bp.register_error_handler(Exception, _error_page)
bp.context_processor(_template_globals)


@public
def _root() -> Any:
    return redirect(url_for("ui.home"))


def init_app(app: Flask, svc: Services) -> None:
    configure(app, svc.settings)
    app.register_blueprint(bp)
    app.add_url_rule("/", "root", _root)
    # The stylesheet and script are public (deny by default asks every endpoint to say so).
    send_static = app.view_functions["ui.static"]

    @public
    def static_file(filename: str) -> Any:
        return send_static(filename=filename)

    app.view_functions["ui.static"] = static_file
    app.jinja_env.filters["time"] = _fmt_time
    app.jinja_env.filters["ago"] = _ago
    app.jinja_env.filters["pct"] = lambda v: "–" if v is None else f"{float(v):.0%}"


__all__ = ["bp", "init_app"]
