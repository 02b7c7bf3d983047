"""The models page (`model:read`): champion and challenger of each task from their cards and validation
reports (metrics, calibration plot, ROC points, the threshold table with alert burden); promote and roll
back (`model:manage`) after a confirmation page, audited, and the serving models refreshed at once."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any

from flask import redirect, render_template, request, url_for
from markupsafe import Markup

from carecast.errors import CareCastError, NotFoundError
from carecast.models.tasks import TASKS
from carecast.security.permissions import Permission
from carecast.serving.auth import audit
from carecast.serving.context import services
from carecast.serving.errors import FieldError, NotFound, Unprocessable
from carecast.serving.ui.blueprint import bp
from carecast.serving.ui.charts import curve_chart
from carecast.serving.ui.session import UiAction, page

MIN_REASON = 5
MAX_REASON = 200
METRIC_NAMES = {"n": "Test predictions", "prevalence": "Outcome rate (test)", "auroc": "AUROC", "auprc": "AUPRC",
                "brier": "Brier score", "calibration_slope": "Calibration slope",
                "calibration_intercept": "Calibration intercept", "ece": "Expected calibration error"}


def _registry() -> Any:
    registry = services().registry
    if registry is None:
        raise NotFound("no model registry is configured")
    return registry


def _report(task: str, version: str) -> dict[str, Any]:
    """The validation report saved beside the model (empty if it has none)."""
    registry = _registry()
    path = posixpath.join(registry.base, task, version, "report", "report.json")
    try:
        if not registry.fs.exists(path):
            return {}
        with registry.fs.open(path, "r") as fh:
            found = json.load(fh)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, Mapping):
        value = value.get("value")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _metrics(card: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, value in (card.get("metrics") or {}).items():
        number = _number(value)
        if number is None:
            continue
        ci = (value.get("ci_low"), value.get("ci_high")) if isinstance(value, Mapping) else (None, None)
        if key == "n":
            text = f"{number:,.0f}"
        elif key == "prevalence":
            text = f"{number:.1%}"
        else:
            text = f"{number:.3f}"
        out.append({"name": METRIC_NAMES.get(key, key.replace("_", " ")), "value": number, "text": text,
                    "ci": ci if all(isinstance(c, int | float) for c in ci) else None})
    return out


def _calibration_chart(report: Mapping[str, Any]) -> Markup | None:
    bins = [b for b in report.get("reliability") or [] if isinstance(b, Mapping)
            and _number(b.get("mean_predicted")) is not None and _number(b.get("observed")) is not None]
    if not bins:
        return None
    pts = [(float(b["mean_predicted"]), float(b["observed"])) for b in bins]
    tips = [f"predicted {p:.1%}, observed {o:.1%} (n={b.get('n', '?')})" for (p, o), b in zip(pts, bins, strict=True)]
    return curve_chart([("Model", pts)], label="Calibration: observed outcome rate against predicted risk",
                       x_label="Predicted risk", y_label="Observed rate", point_titles=[tips])


def _roc_chart(report: Mapping[str, Any], auroc: float | None) -> Markup | None:
    rows = [r for r in report.get("thresholds") or [] if isinstance(r, Mapping)
            and _number(r.get("sensitivity")) is not None and _number(r.get("specificity")) is not None]
    if not rows:
        return None
    pts = sorted({(1.0 - float(r["specificity"]), float(r["sensitivity"])) for r in rows})
    pts = [(0.0, 0.0), *pts, (1.0, 1.0)]
    label = "ROC: sensitivity against 1 - specificity at each threshold of the table"
    if auroc is not None:
        label += f" (AUROC {auroc:.3f})"
    return curve_chart([("Model", pts)], label=label, x_label="1 - specificity", y_label="Sensitivity")


def _side(task: str, alias: str, version: str | None) -> dict[str, Any] | None:
    if not version:
        return None
    registry = _registry()
    try:
        card = registry.card(task, version)
    except (NotFoundError, OSError, ValueError):
        return None
    report = _report(task, version)
    metrics = _metrics(card)
    auroc = next((m["value"] for m in metrics if m["name"] == "AUROC"), None)
    chosen = card.get("threshold") if isinstance(card.get("threshold"), Mapping) else {}
    return {"alias": alias, "version": version, "card": card, "metrics": metrics,
            "baselines": {k: _number(v) for k, v in (card.get("baselines") or {}).items()},
            "calibration": _calibration_chart(report), "roc": _roc_chart(report, auroc),
            "thresholds": [r for r in report.get("thresholds") or [] if isinstance(r, Mapping)],
            "chosen": chosen, "n": (card.get("training_data") or {}).get("n")}


def _task_view(task: str) -> dict[str, Any]:
    aliases = _registry().aliases(task)
    serving = services().predictor.versions()
    history = list(aliases.get("history") or [])
    return {"task": task, "description": TASKS[task].description if task in TASKS else task,
            "serving": serving.get(task) if isinstance(serving, Mapping) else None,
            "champion": _side(task, "champion", aliases.get("champion")),
            "challenger": _side(task, "challenger", aliases.get("challenger")),
            "history": list(reversed(history))[:10],
            "can_rollback": any(h.get("alias") == "champion" and h.get("version") == aliases.get("champion")
                                and h.get("previous") for h in history)}


def _known_task(task: str) -> str:
    if task not in TASKS and task not in _registry().tasks():
        raise NotFound("no such task")
    return task


@bp.get("/models")
@page(Permission.MODEL_READ)
def models() -> str:
    tasks = sorted(set(TASKS) | set(_registry().tasks()))
    return render_template("models.html", tasks=[_task_view(t) for t in tasks], message=request.args.get("done"))


def _reason() -> str:
    reason = " ".join((request.form.get("reason") or "").split())
    if not MIN_REASON <= len(reason) <= MAX_REASON:
        raise Unprocessable("please give a reason", fields=[FieldError("form", "reason",
                                                                       f"{MIN_REASON} to {MAX_REASON} characters")])
    return reason


@bp.route("/models/<task>/promote", methods=["GET", "POST"])
@page(Permission.MODEL_MANAGE)
def model_promote(task: str) -> Any:
    task = _known_task(task)
    aliases = _registry().aliases(task)
    version = request.values.get("version") or aliases.get("challenger") or ""
    if not version or version not in _registry().versions(task):
        raise NotFound("no such model version")
    if request.method == "GET":
        return render_template("model_confirm.html", action="promote", task=task, version=version,
                               current=aliases.get("champion"), min_reason=MIN_REASON)
    reason = _reason()
    try:
        _registry().promote(task, version, "champion", reason=reason)
    except CareCastError as exc:
        raise Unprocessable(exc.public_message) from None
    services().predictor.maybe_refresh()
    audit(UiAction.MODEL_PROMOTE, detail=f"{task} {version}")
    return redirect(url_for("ui.models", done=f"{version} is now the champion of {task}."))


@bp.route("/models/<task>/rollback", methods=["GET", "POST"])
@page(Permission.MODEL_MANAGE)
def model_rollback(task: str) -> Any:
    task = _known_task(task)
    view = _task_view(task)
    if not view["can_rollback"]:
        raise Unprocessable("there is no previous champion to roll back to")
    if request.method == "GET":
        previous = next(h["previous"] for h in view["history"] if h.get("alias") == "champion"
                        and h.get("version") == (view["champion"] or {}).get("version") and h.get("previous"))
        return render_template("model_confirm.html", action="rollback", task=task, version=previous,
                               current=(view["champion"] or {}).get("version"), min_reason=MIN_REASON)
    reason = _reason()
    try:
        data = _registry().rollback(task, reason=reason)
    except CareCastError as exc:
        raise Unprocessable(exc.public_message) from None
    services().predictor.maybe_refresh()
    audit(UiAction.MODEL_ROLLBACK, detail=f"{task} {data.get('champion')}")
    return redirect(url_for("ui.models", done=f"{task} rolled back to {data.get('champion')}."))
