"""The validation report of a trained model: JSON for machines, Markdown and PNG figures for people.

`render_markdown` is pure. `write_report` writes report.json, report.md and four figures into the directory
it is given. Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, no global
backend switch), so this is safe in a worker or a web process.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from carecast.models.metrics import auroc, reliability_curve

__all__ = ["FIGURES", "render_markdown", "to_jsonable", "write_report"]

#: Figure name -> file name, in the order the report shows them.
FIGURES = {
    "reliability": "reliability.png",
    "roc": "roc.png",
    "pr": "pr.png",
    "threshold": "threshold.png",
}

_METRIC_ROWS = (
    ("auroc", "AUROC (discrimination; 0.5 = chance, 1 = perfect)"),
    ("auprc", "AUPRC (average precision; compare with the prevalence)"),
    ("brier", "Brier score (lower is better)"),
    ("calibration_slope", "Calibration slope (1 is ideal; < 1 predictions too extreme)"),
    ("calibration_intercept", "Calibration-in-the-large (0 is ideal; > 0 risk under-predicted)"),
)
_BASELINE_NAMES = {"news2": "NEWS2", "qsofa": "qSOFA", "lace": "LACE index"}
_SUBGROUP_NAMES = {"sex": "Sex", "age_band": "Age band", "race": "Race", "ethnicity": "Ethnicity"}


# --------------------------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: NaN and infinities become None, numpy scalars and arrays Python numbers and lists."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, list | tuple | set):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if value is None or isinstance(value, str):
        return value
    return str(value)


# --------------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    """A number with `digits` decimals; "n/a" for missing or non-finite values."""
    if value is None or isinstance(value, bool):
        return "n/a"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{f:.{digits}f}" if math.isfinite(f) else "n/a"


def _float(value: Any) -> float:
    """A float, NaN for None or anything not numeric (reports read back from JSON carry null)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _count(value: Any) -> str:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{round(f):,}" if math.isfinite(f) else "n/a"


def _signed(value: Any) -> str:
    text = _num(value)
    return text if text == "n/a" or text.startswith("-") else f"+{text}"


def _ci(entry: Mapping[str, Any], low: str = "ci_low", high: str = "ci_high") -> str:
    lo, hi = _num(entry.get(low)), _num(entry.get(high))
    return "n/a" if lo == "n/a" and hi == "n/a" else f"{lo} to {hi}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _baseline_name(key: str) -> str:
    return _BASELINE_NAMES.get(key.lower(), key)


def _as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _summary_sentence(report: Mapping[str, Any]) -> str | None:
    metric = _as_mapping(_as_mapping(report.get("metrics")).get("auroc"))
    if not metric:
        return None
    metrics = _as_mapping(report.get("metrics"))
    n_test = report.get("n_test", _as_mapping(metrics.get("n")).get("value"))
    prevalence = report.get("prevalence_test", _as_mapping(metrics.get("prevalence")).get("value"))
    where = "On the held-out test set"
    if n_test is not None:
        where += f" ({_count(n_test)} predictions"
        where += f", outcome rate {_num(prevalence)})" if prevalence is not None else ")"
    sentence = f"{where}, the model's AUROC was {_num(metric.get('value'))} (95% CI {_ci(metric)})"
    baselines = _as_mapping(report.get("baselines"))
    key = next((k for k in baselines if k.lower() == "news2"), next(iter(baselines), None))
    if key is not None:
        base = _as_mapping(baselines[key])
        base_auc = _as_mapping(base.get("auroc"))
        diff = _as_mapping(base.get("difference"))
        sentence += f", against {_num(base_auc.get('value'))} (95% CI {_ci(base_auc)}) for {_baseline_name(key)}"
        if diff:
            sentence += f"; a difference of {_signed(diff.get('difference'))} (95% CI {_ci(diff)})"
    slope = _as_mapping(metrics.get("calibration_slope"))
    if slope:
        sentence += f". Calibration slope {_num(slope.get('value'))} (95% CI {_ci(slope)}; 1 is ideal)"
    return sentence + "."


def _threshold_rows(rows: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any]) -> list[list[str]]:
    chosen_t = chosen.get("threshold") if chosen else None
    out = []
    for row in rows:
        mark = " (chosen)" if chosen_t is not None and _num(row.get("threshold"), 6) == _num(chosen_t, 6) else ""
        out.append([
            _num(row.get("threshold")) + mark,
            _num(row.get("flagged_share")),
            _num(row.get("alerts_per_100_patient_days")),
            _num(row.get("sensitivity")),
            _num(row.get("ppv")),
            _num(row.get("specificity")),
            _num(row.get("npv")),
            _num(row.get("encounters_with_event_alerted")),
            _num(row.get("median_lead_time_hours")),
        ])
    return out


_THRESHOLD_HEADER = (
    "Threshold",
    "Share flagged",
    "Alerts per 100 patient-days",
    "Sensitivity",
    "PPV",
    "Specificity",
    "NPV",
    "Encounters with event alerted",
    "Median lead time (h)",
)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: summary, metrics, baselines, alert thresholds, subgroups, candidates, figures.

    Renders whichever known keys are present (see `write_report`); unknown keys are ignored, missing or
    non-finite numbers show as "n/a". Numbers have three decimals.
    """
    task = report.get("task")
    lines = [f"# Model validation report: {task}" if task else "# Model validation report", ""]
    if report.get("description"):
        lines += [str(report["description"]), ""]
    facts = [
        ("Model version", report.get("model_version")),
        ("Created", report.get("created_at")),
        ("Chosen model", report.get("chosen")),
        ("Calibration", report.get("calibration_method")),
    ]
    lines += [f"- {name}: {_cell(value)}" for name, value in facts if value is not None]
    if report.get("n_train") is not None or report.get("n_test") is not None:
        train = f"{_count(report.get('n_train'))} (outcome rate {_num(report.get('prevalence_train'))})"
        test = f"{_count(report.get('n_test'))} (outcome rate {_num(report.get('prevalence_test'))})"
        lines.append(f"- Training predictions: {train}; test predictions: {test}")
    if report.get("training_seconds") is not None:
        lines.append(f"- Training time: {_num(report.get('training_seconds'))} s")
    if lines[-1] != "":
        lines.append("")

    summary = _summary_sentence(report)
    if summary:
        lines += ["## Summary", "", summary, ""]

    metrics = _as_mapping(report.get("metrics"))
    if metrics:
        lines += ["## Performance on the test set", ""]
        rows = [
            [label, _num(_as_mapping(metrics[key]).get("value")), _ci(_as_mapping(metrics[key]))]
            for key, label in _METRIC_ROWS
            if key in metrics
        ]
        if "n" in metrics:
            rows.append(["Predictions (n)", _count(_as_mapping(metrics["n"]).get("value")), ""])
        if "prevalence" in metrics:
            rows.append(["Outcome rate (prevalence)", _num(_as_mapping(metrics["prevalence"]).get("value")), ""])
        lines += [*_table(("Metric", "Value", "95% CI"), rows), ""]
        lines.append(
            "95% CIs are percentile bootstrap intervals; where patients contribute several predictions, whole "
            "patients are resampled."
        )
        lines.append("")

    baselines = _as_mapping(report.get("baselines"))
    if baselines:
        lines += ["## Compared with simple bedside scores", ""]
        rows = []
        for key, entry in baselines.items():
            e = _as_mapping(entry)
            auc, diff = _as_mapping(e.get("auroc")), _as_mapping(e.get("difference"))
            rows.append([
                _baseline_name(key),
                _num(auc.get("value")),
                _ci(auc),
                _signed(diff.get("difference")) if diff else "n/a",
                _ci(diff) if diff else "n/a",
            ])
        header = ("Score", "AUROC", "95% CI", "Model minus score", "95% CI of difference")
        lines += [*_table(header, rows), ""]
        lines += [
            "Show the simple score beside the model: deployed deterioration models have lost discrimination at "
            "external sites (the Epic Deterioration Index fell to 0.67 against NEWS 0.63 at one academic centre), "
            "so the model should earn its place against the score the ward already uses.",
            "",
        ]

    oracle = _as_mapping(report.get("oracle"))
    if oracle:
        line = f"Best achievable AUROC on these data (oracle): {_num(oracle.get('auroc'))}."
        if oracle.get("note"):
            line += f" {oracle['note']}"
        lines += [line, ""]

    thresholds = report.get("thresholds")
    chosen = _as_mapping(report.get("chosen_threshold"))
    if isinstance(thresholds, Sequence) and thresholds:
        lines += ["## Choosing an alert threshold", ""]
        lines += [
            "Each row is one possible alert threshold (an alert fires when predicted risk is at or above it). "
            "Pick the row whose alerts per 100 patient-days the ward can act on; PPV is the share of alerts "
            "followed by the outcome, and lead time is how long before the event the first alert came.",
            "",
        ]
        lines += [*_table(_THRESHOLD_HEADER, _threshold_rows([_as_mapping(r) for r in thresholds], chosen)), ""]
    if chosen:
        lines += [
            f"Chosen threshold {_num(chosen.get('threshold'))}: {_num(chosen.get('alerts_per_100_patient_days'))} "
            f"alerts per 100 patient-days, sensitivity {_num(chosen.get('sensitivity'))}, "
            f"PPV {_num(chosen.get('ppv'))}, median lead time {_num(chosen.get('median_lead_time_hours'))} h.",
            "",
        ]

    reliability = report.get("reliability")
    if isinstance(reliability, Sequence) and reliability:
        lines += ["## Calibration by risk group", ""]
        rows = [
            [_num(b.get("mean_predicted")), _num(b.get("observed")), f"{_num(b.get('low'))} to {_num(b.get('high'))}",
             _count(b.get("n"))]
            for b in (_as_mapping(r) for r in reliability)
        ]
        lines += [*_table(("Mean predicted risk", "Observed rate", "95% CI (Wilson)", "n"), rows), ""]

    subgroups = _as_mapping(report.get("subgroups"))
    if subgroups:
        lines += ["## Subgroups", ""]
        lines += [
            "Discrimination and calibration within groups of patients. Observed/expected above 1 means the model "
            "under-predicts risk in that group. Groups too small to estimate are shown with their size only.",
            "",
        ]
        for attribute, levels in subgroups.items():
            lines += [f"### {_SUBGROUP_NAMES.get(attribute, attribute)}", ""]
            rows = []
            for level, entry in _as_mapping(levels).items():
                e = _as_mapping(entry)
                if e.get("too_small"):
                    rows.append([level, _count(e.get("n")), "too few to estimate", "", "", "", ""])
                    continue
                rows.append([
                    level,
                    _count(e.get("n")),
                    _num(e.get("prevalence")),
                    _num(e.get("auroc")),
                    _ci(e, "auroc_ci_low", "auroc_ci_high"),
                    _num(e.get("observed_expected")),
                    _num(e.get("mean_predicted")),
                ])
            sub_header = ("Group", "n", "Outcome rate", "AUROC", "95% CI", "Observed/expected", "Mean predicted")
            lines += [*_table(sub_header, rows), ""]

    candidates = _as_mapping(report.get("candidate_cv"))
    if candidates:
        lines += ["## Candidate models (cross-validation on the training set)", ""]
        chosen_name = report.get("chosen")
        rows = [
            [name + (" (chosen)" if name == chosen_name else ""), _num(_as_mapping(r).get("auroc_mean")),
             _num(_as_mapping(r).get("auroc_std"))]
            for name, r in candidates.items()
        ]
        lines += [*_table(("Model", "Mean AUROC", "SD"), rows), ""]

    lines += ["## Figures", ""]
    titles = {"reliability": "Reliability", "roc": "ROC curve", "pr": "Precision-recall curve",
              "threshold": "Sensitivity and PPV against alert burden"}
    for name, file in FIGURES.items():
        lines += [f"![{titles[name]}]({file})", ""]
    lines += [
        "Performance measured here may not carry over to another hospital or a later period: recalibrate on local "
        "data and monitor alert rates and PPV after deployment.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------------


def _figure() -> Figure:
    fig = Figure(figsize=(5.5, 5.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(ax: Any, loc: str) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend warns
        ax.legend(loc=loc)


def _plot_reliability(path: Path, bins: Sequence[Mapping[str, Any]]) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="Perfect calibration")
    xs = np.array([_float(b.get("mean_predicted")) for b in bins], dtype=float)
    obs = np.array([_float(b.get("observed")) for b in bins], dtype=float)
    low = np.array([_float(b.get("low")) for b in bins], dtype=float)
    high = np.array([_float(b.get("high")) for b in bins], dtype=float)
    if xs.size:
        err = np.vstack([np.clip(obs - low, 0, None), np.clip(high - obs, 0, None)])
        ax.errorbar(xs, obs, yerr=err, fmt="o-", capsize=3, label="Model (95% CI)")
        top = float(np.nanmax(np.r_[xs, high, 0.05]))
        lim = min(1.0, top * 1.1)
        ax.set_xlim(0, lim)
        ax.set_ylim(0, lim)
    ax.set_xlabel("Mean predicted risk")
    ax.set_ylabel("Observed outcome rate")
    ax.set_title("Reliability")
    _legend(ax, "upper left")
    fig.savefig(path)


def _plot_thresholds(path: Path, rows: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any]) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    pts = sorted(
        (_float(r.get("alerts_per_100_patient_days")), _float(r.get("sensitivity")), _float(r.get("ppv")))
        for r in rows
    )
    if pts:
        arr = np.array(pts, dtype=float)
        ax.plot(arr[:, 0], arr[:, 1], "o-", label="Sensitivity")
        ax.plot(arr[:, 0], arr[:, 2], "s-", label="PPV")
        rate = _float(chosen.get("alerts_per_100_patient_days"))
        if math.isfinite(rate):
            ax.axvline(rate, linestyle=":", color="grey", label=f"Chosen threshold {_num(chosen.get('threshold'))}")
        _legend(ax, "best")
    else:
        ax.text(0.5, 0.5, "No thresholds evaluated", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Alerts per 100 patient-days")
    ax.set_ylabel("Proportion")
    ax.set_title("Alert burden")
    fig.savefig(path)


def write_report(
    report: dict[str, Any],
    out_dir: Path,
    *,
    y: npt.ArrayLike,
    p: npt.ArrayLike,
    baselines: Mapping[str, npt.ArrayLike] | None = None,
) -> dict[str, Path]:
    """Write report.json, report.md, reliability.png, roc.png, pr.png and threshold.png into `out_dir`.

    `y` and `p` are the test labels and predicted risks the report describes; `baselines` maps a score's
    name (e.g. "news2") to its values on the same rows, for the ROC and PR figures. The reliability figure
    uses report["reliability"] when present, else computes it from y and p; the threshold figure uses
    report["thresholds"]. In report.json NaN and infinities are written as null. Returns name -> path for
    "json", "markdown" and each figure.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    yy = np.asarray(y).astype(np.int64)
    pp = np.asarray(p, dtype=np.float64)
    if yy.ndim != 1 or pp.shape != yy.shape:
        raise ValueError("y and p must be one-dimensional and of equal length")
    scores: dict[str, npt.NDArray[np.float64]] = {"Model": pp}
    for name, values in (baselines or {}).items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != yy.shape:
            raise ValueError(f"baseline {name!r} must have one value per prediction")
        keep = np.isfinite(arr)
        # A baseline with missing values is drawn on the rows where it exists; say so in the legend.
        label = _baseline_name(name) if keep.all() else f"{_baseline_name(name)}, {_count(keep.sum())} rows"
        scores[label] = arr

    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(to_jsonable(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")

    figure_paths = {name: out_dir / file for name, file in FIGURES.items()}
    bins = report.get("reliability")
    if not (isinstance(bins, Sequence) and bins) and yy.size:
        bins = reliability_curve(yy, pp)
    _plot_reliability(figure_paths["reliability"], [_as_mapping(b) for b in bins] if isinstance(bins, Sequence) else [])
    _plot_roc_pr(figure_paths, yy, scores)
    rows = report.get("thresholds")
    _plot_thresholds(
        figure_paths["threshold"],
        [_as_mapping(r) for r in rows] if isinstance(rows, Sequence) else [],
        _as_mapping(report.get("chosen_threshold")),
    )
    return {**paths, **figure_paths}


def _plot_roc_pr(
    paths: Mapping[str, Path], y: npt.NDArray[np.int64], scores: Mapping[str, npt.NDArray[np.float64]]
) -> None:
    """ROC and PR figures; each score is drawn on the rows where it is finite."""
    finite: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = {}
    for name, s in scores.items():
        keep = np.isfinite(s)
        finite[name] = (y[keep], s[keep])
    _plot_curves(paths["roc"], finite, kind="roc")
    _plot_curves(paths["pr"], finite, kind="pr")


def _plot_curves(
    path: Path, data: Mapping[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]], *, kind: str
) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    model_y = next(iter(data.values()))[0] if data else np.empty(0, dtype=np.int64)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="Chance")
    elif model_y.size:
        ax.axhline(float(model_y.mean()), linestyle="--", color="grey", label=f"Prevalence {_num(model_y.mean())}")
    for name, (yy, s) in data.items():
        if not 0 < yy.sum() < yy.size:
            continue
        if kind == "roc":
            fpr, tpr, _ = roc_curve(yy, s)
            ax.plot(fpr, tpr, label=f"{name} (AUROC {_num(auroc(yy, s))})")
        else:
            precision, recall, _ = precision_recall_curve(yy, s)
            ax.plot(recall, precision, label=name, drawstyle="steps-post")
    if kind == "roc":
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("Sensitivity")
        ax.set_title("ROC curve")
        _legend(ax, "lower right")
    else:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("Sensitivity (recall)")
        ax.set_ylabel("PPV (precision)")
        ax.set_title("Precision-recall curve")
        _legend(ax, "upper right")
    fig.savefig(path)
