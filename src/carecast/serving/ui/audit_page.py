"""The audit-log viewer for auditors (`audit:read`): filters by action, user, patient, outcome and time, and
the same selection as CSV. Viewing and exporting are themselves audited (one row each)."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from typing import Any

from flask import Response, render_template, request

from carecast.security.audit import OUTCOMES
from carecast.security.permissions import Permission
from carecast.serving.auth import audit as audit_event
from carecast.serving.context import services
from carecast.serving.errors import BadRequest, FieldError
from carecast.serving.ui.blueprint import bp
from carecast.serving.ui.session import UiAction, page

PAGE_ROWS = 200
MAX_EXPORT_ROWS = 100_000
CSV_COLUMNS = ("id", "at", "username", "role", "action", "outcome", "patient_uid", "source_ip", "request_id",
               "detail")
_TOKEN = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


def _filters() -> dict[str, Any]:
    """The query's filters, each checked (a bad one is named; its value is not echoed)."""
    args = request.args
    out: dict[str, Any] = {"action": None, "username": None, "patient_uid": None, "outcome": None, "since": None,
                           "until": None}
    problems = []
    for name in ("action", "username", "patient_uid"):
        value = (args.get(name) or "").strip()
        if value:
            if _TOKEN.fullmatch(value):
                out[name] = value
            else:
                problems.append(FieldError("query", name, "letters, digits and . _ : - only"))
    outcome = args.get("outcome") or ""
    if outcome:
        if outcome in OUTCOMES:
            out["outcome"] = outcome
        else:
            problems.append(FieldError("query", "outcome", "one of " + ", ".join(OUTCOMES)))
    for name in ("since", "until"):
        raw = (args.get(name) or "").strip()
        if raw:
            try:
                when = datetime.fromisoformat(raw)
            except ValueError:
                problems.append(FieldError("query", name, "a date and time, e.g. 2026-01-05T08:00"))
                continue
            out[name] = when if when.tzinfo else when.replace(tzinfo=UTC)
    if problems:
        raise BadRequest("some filters could not be read", fields=problems)
    return out


def _select(filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Rows matching the filters, newest first (filtered by the database)."""
    return services().audit.rows(limit=limit, **filters)


def _describe(filters: dict[str, Any]) -> str:
    shown = [f"{k}={v.isoformat() if isinstance(v, datetime) else v}" for k, v in filters.items() if v is not None]
    return ("filters " + " ".join(shown))[:200] if shown else "no filters"


@bp.get("/audit")
@page(Permission.AUDIT_READ)
def audit() -> str:
    filters = _filters()
    rows = _select(filters, PAGE_ROWS)
    audit_row(UiAction.AUDIT_READ, f"{len(rows)} rows, {_describe(filters)}")
    return render_template("audit.html", rows=rows, filters=filters, outcomes=OUTCOMES, page_rows=PAGE_ROWS,
                           query=request.query_string.decode("ascii", "replace"))


@bp.get("/audit.csv")
@page(Permission.AUDIT_READ)
def audit_csv() -> Response:
    filters = _filters()
    rows = _select(filters, MAX_EXPORT_ROWS)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row[c].isoformat() if isinstance(row[c], datetime) else row[c])
                         for c in CSV_COLUMNS])
    audit_row(UiAction.AUDIT_EXPORT, f"{len(rows)} rows, {_describe(filters)}")
    response = Response(buffer.getvalue(), mimetype="text/csv")
    name = f"carecast-audit-{datetime.now(UTC):%Y%m%dT%H%M%S}.csv"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def _csv_cell(value: Any) -> str:
    """A cell that a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def audit_row(action: str, detail: str) -> None:
    audit_event(action, detail=detail)
