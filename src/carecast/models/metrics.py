"""Validation metrics for risk models: discrimination, calibration, alert burden and subgroups, with bootstrap CIs.

Pure functions: arrays in, plain dicts out (floats, NaN where a quantity is undefined), ready for a model
card or a JSON report. Nothing here reads the store or draws a figure.

Confidence intervals are 95% percentile bootstrap. When patient ids are passed as `groups` the bootstrap
resamples whole patients (a cluster bootstrap): the many predictions made for one patient are not
independent, and resampling rows as if they were gives intervals that are too narrow.

Speed: a resample is represented by a vector of per-row weights (how many times each row was drawn; for a
cluster bootstrap, how many times its patient was drawn), and every metric is computed as a weighted
metric for a block of resamples at once. The rows are sorted by score once, so AUROC and AUPRC need no
re-sorting per resample, only cumulative sums over the tie blocks; the calibration fits are Newton steps
vectorised across resamples and started at the full-sample estimate. 500 resamples of 30,000 rows from
3,000 patients take about 2 s on a two-core machine (memory stays near 50 resamples x n x 8 bytes per array).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]

#: Clipping of probabilities before taking logits in the calibration fits.
LOGIT_EPS = 1e-6
#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054
#: Resamples processed together; bounds memory at about CHUNK x n x 8 bytes per working array.
_CHUNK = 50
_NEWTON_MAX_ITER = 50
_NEWTON_TOL = 1e-8
_MAX_STEP = 10.0
#: Alert budgets (share of predictions flagged) that the default threshold grid covers.
DEFAULT_FLAGGED_SHARES = (0.01, 0.02, 0.05, 0.10, 0.20, 0.30)
AGE_BANDS = ("<18", "18-44", "45-64", "65-79", "80+", "unknown")

__all__ = [
    "AGE_BANDS",
    "DEFAULT_FLAGGED_SHARES",
    "age_band",
    "auroc",
    "binary_metrics",
    "compare_auroc",
    "reliability_curve",
    "subgroup_metrics",
    "threshold_table",
]


# --------------------------------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------------------------------


def _labels(y: ArrayLike) -> FloatArray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError("labels must be one-dimensional")
    if arr.size == 0:
        raise ValueError("no predictions to evaluate")
    out = arr.astype(np.float64)
    if not np.isin(out, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return out


def _scores(p: ArrayLike, n: int, *, probability: bool, name: str = "scores") -> FloatArray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 1 or arr.size != n:
        raise ValueError(f"{name} must be one-dimensional and as long as the labels")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (no NaN)")
    if probability and ((arr < 0.0).any() or (arr > 1.0).any()):
        raise ValueError(f"{name} must be probabilities in [0, 1]")
    return arr


def _group_codes(groups: ArrayLike | None, n: int) -> tuple[npt.NDArray[np.intp], int]:
    """Integer code per row for the resampling unit: the patient, or the row itself without groups."""
    if groups is None:
        return np.arange(n, dtype=np.intp), n
    arr = np.asarray(groups)
    if arr.ndim != 1 or arr.size != n:
        raise ValueError("groups must be one-dimensional and as long as the labels")
    codes, uniques = pd.factorize(arr, use_na_sentinel=False)
    return codes.astype(np.intp), len(uniques)


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _logit(p: FloatArray) -> FloatArray:
    q = np.clip(p, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.asarray(np.log(q) - np.log1p(-q), dtype=np.float64)


def _expit(eta: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(eta, -35.0, 35.0))), dtype=np.float64)


# --------------------------------------------------------------------------------------------------------------------
# Weighted metrics over blocks of resamples (rows of a weight matrix)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ranked:
    """Rows sorted by ascending score, with the start of each block of tied scores."""

    order: npt.NDArray[np.intp]
    y: FloatArray  # labels in sorted order
    starts: npt.NDArray[np.intp]

    @classmethod
    def build(cls, y: FloatArray, s: FloatArray) -> _Ranked:
        order = np.argsort(s, kind="mergesort").astype(np.intp)
        s_sorted = s[order]
        starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]]).astype(np.intp)
        return cls(order=order, y=y[order], starts=starts)

    def block_sums(self, w_sorted: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Weighted positives and negatives in each tie block, per resample (rows of w_sorted)."""
        pos = np.add.reduceat(w_sorted * self.y, self.starts, axis=1)
        neg = np.add.reduceat(w_sorted, self.starts, axis=1) - pos
        return pos, neg


def _weighted_auroc(pos: FloatArray, neg: FloatArray) -> FloatArray:
    """Mann-Whitney AUROC from tie-block sums in ascending score order; ties count one half."""
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    den = n_pos * n_neg
    out = np.full(pos.shape[0], np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def _weighted_auprc(pos: FloatArray, neg: FloatArray) -> FloatArray:
    """Average precision (sum of precision x recall increments, as scikit-learn defines it)."""
    pos_d, neg_d = pos[:, ::-1], neg[:, ::-1]
    tp, fp = np.cumsum(pos_d, axis=1), np.cumsum(neg_d, axis=1)
    flagged = tp + fp
    precision = np.divide(tp, flagged, out=np.zeros_like(tp), where=flagged > 0)
    n_pos = pos.sum(axis=1)
    out = np.full(pos.shape[0], np.nan)
    ok = n_pos > 0
    out[ok] = (pos_d[ok] * precision[ok]).sum(axis=1) / n_pos[ok]
    return out


def _calibration_fit(
    w: FloatArray, y: FloatArray, x: FloatArray, start: tuple[float, float] = (0.0, 0.0)
) -> tuple[FloatArray, FloatArray]:
    """Unpenalised logistic regression y ~ a + b x per weight row, by Newton-Raphson (IRLS).

    Rows that do not converge (separation, a single class) get NaN.
    """
    b_rows = w.shape[0]
    a = np.full(b_rows, start[0])
    b = np.full(b_rows, start[1])
    active = np.ones(b_rows, dtype=bool)
    converged = np.zeros(b_rows, dtype=bool)
    for _ in range(_NEWTON_MAX_ITER):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        wa = w[idx]
        mu = _expit(a[idx, None] + b[idx, None] * x)
        r = wa * (y - mu)
        v = wa * mu * (1.0 - mu)
        vx = v * x
        g0, g1 = r.sum(axis=1), r @ x
        h00, h01, h11 = v.sum(axis=1), vx.sum(axis=1), vx @ x
        det = h00 * h11 - h01 * h01
        with np.errstate(divide="ignore", invalid="ignore"):
            da = (h11 * g0 - h01 * g1) / det
            db = (h00 * g1 - h01 * g0) / det
        bad = ~(np.isfinite(da) & np.isfinite(db)) | (det <= 0)
        da, db = np.clip(np.nan_to_num(da), -_MAX_STEP, _MAX_STEP), np.clip(np.nan_to_num(db), -_MAX_STEP, _MAX_STEP)
        a[idx] += da
        b[idx] += db
        done = (np.maximum(np.abs(da), np.abs(db)) < _NEWTON_TOL) & ~bad
        converged[idx[done]] = True
        active[idx[done | bad]] = False
    a[~converged] = np.nan
    b[~converged] = np.nan
    return a, b


def _calibration_offset(w: FloatArray, y: FloatArray, x: FloatArray, start: float = 0.0) -> FloatArray:
    """Calibration-in-the-large: a in logit P(y=1) = a + x (x = logit p as an offset), by Newton's method."""
    b_rows = w.shape[0]
    a = np.full(b_rows, start)
    active = np.ones(b_rows, dtype=bool)
    converged = np.zeros(b_rows, dtype=bool)
    for _ in range(_NEWTON_MAX_ITER):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        wa = w[idx]
        mu = _expit(a[idx, None] + x)
        g = (wa * (y - mu)).sum(axis=1)
        h = (wa * mu * (1.0 - mu)).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = g / h
        bad = ~np.isfinite(step) | (h <= 0)
        step = np.clip(np.nan_to_num(step), -_MAX_STEP, _MAX_STEP)
        a[idx] += step
        done = (np.abs(step) < _NEWTON_TOL) & ~bad
        converged[idx[done]] = True
        active[idx[done | bad]] = False
    a[~converged] = np.nan
    return a


def _single_class(w: FloatArray, y: FloatArray) -> npt.NDArray[np.bool_]:
    n_pos = w @ y
    return np.asarray((n_pos <= 0) | (n_pos >= w.sum(axis=1)))


# --------------------------------------------------------------------------------------------------------------------
# Bootstrap machinery
# --------------------------------------------------------------------------------------------------------------------


def _bootstrap_weights(
    codes: npt.NDArray[np.intp], n_groups: int, n_boot: int, seed: int
) -> Iterator[FloatArray]:
    """Yield blocks of per-row resampling weights, one row per resample.

    Each resample draws `n_groups` units (patients, or rows) with replacement; a row's weight is the number
    of times its unit was drawn, which is the same as stacking the drawn patients' rows.
    """
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(_CHUNK, n_boot - done)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        flat = (draws + (np.arange(b) * n_groups)[:, None]).ravel()
        counts = np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups).astype(np.float64)
        yield counts[:, codes]
        done += b


def _ci(values: FloatArray) -> tuple[float, float]:
    """95% percentile interval of the finite bootstrap values (NaN, NaN when there are none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def _summary(value: float, boot: FloatArray) -> dict[str, float]:
    low, high = _ci(boot)
    return {"value": float(value), "ci_low": low, "ci_high": high}


# --------------------------------------------------------------------------------------------------------------------
# Public metrics
# --------------------------------------------------------------------------------------------------------------------


def auroc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve (the c-statistic) by ranks, ties counted one half; NaN if only one class.

    `p` may be any real-valued score (a probability, a NEWS2 total); higher means more at risk.
    """
    yy = _labels(y)
    ranked = _Ranked.build(yy, _scores(p, yy.size, probability=False))
    pos, neg = ranked.block_sums(np.ones((1, yy.size)))
    return float(_weighted_auroc(pos, neg)[0])


def score_auroc(
    y: ArrayLike, score: ArrayLike, groups: ArrayLike | None = None, *, n_boot: int = 500, seed: int = 0
) -> dict[str, float]:
    """AUROC of any real-valued score (NEWS2, qSOFA, LACE, a published model's estimate) with its
    bootstrap 95% CI, resampling whole groups when given: the baselines' line of a report."""
    yy = _labels(y)
    ranked = _Ranked.build(yy, _scores(score, yy.size, probability=False))
    value = float(_weighted_auroc(*ranked.block_sums(np.ones((1, yy.size))))[0])
    codes, n_groups = _group_codes(groups, yy.size)
    boots = [_weighted_auroc(*ranked.block_sums(w[:, ranked.order]))
             for w in _bootstrap_weights(codes, n_groups, n_boot, seed)] if n_boot > 0 else []
    return _summary(value, np.concatenate(boots) if boots else np.empty(0))


def binary_metrics(
    y: ArrayLike, p: ArrayLike, groups: ArrayLike | None = None, *, n_boot: int = 500, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Discrimination and calibration of predicted probabilities `p` for binary outcomes `y`, with 95% CIs.

    Returns ``{"auroc", "auprc", "brier", "calibration_slope", "calibration_intercept"}`` each as
    ``{"value", "ci_low", "ci_high"}``, plus ``{"n": {"value"}, "prevalence": {"value"}}``.

    - calibration_slope: coefficient of an unpenalised logistic regression of y on logit(p) (1 is ideal;
      below 1 the predictions are too extreme, above 1 too timid).
    - calibration_intercept: calibration-in-the-large, a in logit P(y=1) = a + logit(p) with the slope fixed
      at 1 (0 is ideal; above 0 the model under-predicts risk on average). p is clipped to [1e-6, 1 - 1e-6]
      before the logit.

    CIs are percentile intervals over `n_boot` bootstrap resamples; with `groups` (patient ids) whole
    patients are resampled. A resample that holds a single outcome class has no AUROC, AUPRC or calibration
    fit; such resamples (and any whose fit does not converge) are skipped in the percentile for that
    metric, so a CI rests on the resamples where the metric exists. A point estimate that does not exist
    (one class, or perfect separation for the slope) is NaN.

    Vectorised over resamples (see the module docstring): 500 resamples of 30,000 rows take about 2 s.
    """
    yy = _labels(y)
    pp = _scores(p, yy.size, probability=True, name="probabilities")
    n = yy.size
    codes, n_groups = _group_codes(groups, n)
    ranked = _Ranked.build(yy, pp)
    x = _logit(pp)
    sq_err = (pp - yy) ** 2

    ones = np.ones((1, n))
    pos, neg = ranked.block_sums(ones)
    single = bool(_single_class(ones, yy)[0])
    point = {
        "auroc": float(_weighted_auroc(pos, neg)[0]),
        "auprc": float(_weighted_auprc(pos, neg)[0]),
        "brier": float(sq_err.mean()),
    }
    if single:
        a_hat, b_hat, off_hat = math.nan, math.nan, math.nan
    else:
        a_fit, b_fit = _calibration_fit(ones, yy, x)
        a_hat, b_hat = float(a_fit[0]), float(b_fit[0])
        off_hat = float(_calibration_offset(ones, yy, x, start=float(_logit(np.array([yy.mean()]))[0] - x.mean()))[0])
    point["calibration_slope"] = b_hat
    point["calibration_intercept"] = off_hat
    # Bootstrap fits start from the full-sample estimate: resamples sit close to it, so Newton needs few steps.
    fit_start = (a_hat, b_hat) if math.isfinite(b_hat) else (0.0, 0.0)
    off_start = off_hat if math.isfinite(off_hat) else 0.0

    boot: dict[str, list[FloatArray]] = {k: [] for k in point}
    if n_boot > 0:
        codes_sorted = codes[ranked.order]
        y_s, x_s, sq_s = yy[ranked.order], x[ranked.order], sq_err[ranked.order]
        for w in _bootstrap_weights(codes_sorted, n_groups, n_boot, seed):
            bpos, bneg = ranked.block_sums(w)
            boot["auroc"].append(_weighted_auroc(bpos, bneg))
            boot["auprc"].append(_weighted_auprc(bpos, bneg))
            boot["brier"].append((w @ sq_s) / w.sum(axis=1))
            slope = np.full(w.shape[0], np.nan)
            offset = np.full(w.shape[0], np.nan)
            fit = ~_single_class(w, y_s)
            if fit.any():
                slope[fit] = _calibration_fit(w[fit], y_s, x_s, start=fit_start)[1]
                offset[fit] = _calibration_offset(w[fit], y_s, x_s, start=off_start)
            boot["calibration_slope"].append(slope)
            boot["calibration_intercept"].append(offset)
    out: dict[str, dict[str, float]] = {
        k: _summary(v, np.concatenate(boot[k]) if boot[k] else np.empty(0)) for k, v in point.items()
    }
    out["n"] = {"value": float(n)}
    out["prevalence"] = {"value": float(yy.mean())}
    return out


def compare_auroc(
    y: ArrayLike,
    p_model: ArrayLike,
    p_baseline: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """AUROC of the model minus AUROC of a baseline score on the same rows, with a paired bootstrap 95% CI.

    Both AUROCs are computed on the same resamples (whole patients with `groups`), so the interval reflects
    the correlation between the two scores. Returns ``{"model_auroc", "baseline_auroc", "baseline_ci_low",
    "baseline_ci_high", "difference", "ci_low", "ci_high"}`` (the baseline's own CI from the same resamples).
    The baseline may be any score where higher means more at risk (NEWS2, LACE).
    """
    yy = _labels(y)
    pm = _scores(p_model, yy.size, probability=False, name="model scores")
    pb = _scores(p_baseline, yy.size, probability=False, name="baseline scores")
    codes, n_groups = _group_codes(groups, yy.size)
    rm, rb = _Ranked.build(yy, pm), _Ranked.build(yy, pb)
    ones = np.ones((1, yy.size))
    model_auc = float(_weighted_auroc(*rm.block_sums(ones))[0])
    base_auc = float(_weighted_auroc(*rb.block_sums(ones))[0])
    diffs: list[FloatArray] = []
    base_boot: list[FloatArray] = []
    if n_boot > 0:
        for w in _bootstrap_weights(codes, n_groups, n_boot, seed):
            am = _weighted_auroc(*rm.block_sums(w[:, rm.order]))
            ab = _weighted_auroc(*rb.block_sums(w[:, rb.order]))
            diffs.append(am - ab)
            base_boot.append(ab)
    low, high = _ci(np.concatenate(diffs) if diffs else np.empty(0))
    base_low, base_high = _ci(np.concatenate(base_boot) if base_boot else np.empty(0))
    return {
        "model_auroc": model_auc,
        "baseline_auroc": base_auc,
        "baseline_ci_low": base_low,
        "baseline_ci_high": base_high,
        "difference": model_auc - base_auc,
        "ci_low": low,
        "ci_high": high,
    }


def wilson_interval(successes: float, n: float) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (NaN, NaN for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    phat = successes / n
    z2 = Z95 * Z95
    centre = (phat + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(phat * (1 - phat) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def reliability_curve(y: ArrayLike, p: ArrayLike, bins: int = 10) -> list[dict[str, float]]:
    """Observed outcome rate against mean predicted risk in quantile bins of the predictions.

    Bins have (close to) equal numbers of predictions; tied predictions always share a bin, so with few
    distinct values there are fewer bins. Each bin: mean_predicted, observed, n, and low/high, the Wilson
    95% interval of the observed rate.
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    yy = _labels(y)
    pp = _scores(p, yy.size, probability=True, name="probabilities")
    n = pp.size
    order = np.argsort(pp, kind="mergesort")
    ps = pp[order]
    position = np.arange(n)
    block_start = np.maximum.accumulate(np.where(np.r_[True, ps[1:] != ps[:-1]], position, 0))
    which = np.empty(n, dtype=np.intp)
    which[order] = (block_start * bins) // n  # a tie block goes where its first member would
    rows: list[dict[str, float]] = []
    for b in range(bins):
        mask = which == b
        n_b = int(mask.sum())
        if n_b == 0:
            continue
        events = float(yy[mask].sum())
        low, high = wilson_interval(events, n_b)
        rows.append({
            "mean_predicted": float(pp[mask].mean()),
            "observed": events / n_b,
            "n": float(n_b),
            "low": low,
            "high": high,
        })
    return rows


def _as_utc(values: ArrayLike, n: int, name: str) -> pd.Series:
    series = pd.Series(values) if not isinstance(values, pd.Series) else values.reset_index(drop=True)
    if series.size != n:
        raise ValueError(f"{name} must be as long as the labels")
    return pd.to_datetime(series, utc=True)


def _default_thresholds(p: FloatArray) -> list[float]:
    desc = np.sort(p)[::-1]
    grid = {0.5}
    for share in DEFAULT_FLAGGED_SHARES:
        k = max(1, math.ceil(share * desc.size - 1e-9))
        grid.add(float(desc[min(k, desc.size) - 1]))
    return sorted(grid, reverse=True)


def threshold_table(
    y: ArrayLike,
    p: ArrayLike,
    *,
    times: ArrayLike,
    event_times: ArrayLike,
    encounter_ids: ArrayLike,
    patient_days: float,
    thresholds: Sequence[float] | None = None,
) -> list[dict[str, float]]:
    """What each alert threshold would mean on the ward: accuracy, alert burden and warning time.

    A prediction alerts when p >= threshold. Per threshold: threshold, flagged_share, sensitivity,
    specificity, ppv, npv, alerts (count), alerts_per_100_patient_days (alerts / patient_days x 100),
    encounters_with_event (encounters with an outcome and at least one prediction labelled 1, i.e. made
    within the horizon before it), encounters_with_event_alerted (the share of those with at least one alert
    among those predictions, at or before the event) and median_lead_time_hours (over those alerted
    encounters, event time minus the time of the encounter's first such alert; NaN if none).

    The default grid is the thresholds that flag 1%, 2%, 5%, 10%, 20% and 30% of predictions, plus 0.5,
    highest threshold first; given thresholds are kept in the order given. `times` and `event_times` are
    datetime-likes (UTC); event_times is NaT where no outcome occurred.
    """
    yy = _labels(y)
    n = yy.size
    pp = _scores(p, n, probability=False, name="probabilities")
    if not (patient_days > 0 or math.isnan(patient_days)):
        raise ValueError("patient_days must be positive (or NaN when unknown: alert rates are then NaN)")
    t = _as_utc(times, n, "times")
    ev = _as_utc(event_times, n, "event_times")
    enc = np.asarray(encounter_ids)
    if enc.ndim != 1 or enc.size != n:
        raise ValueError("encounter_ids must be one-dimensional and as long as the labels")
    enc_codes, enc_uniques = pd.factorize(enc, use_na_sentinel=False)
    n_enc = len(enc_uniques)

    has_event = (ev.notna() & (yy == 1)).to_numpy()
    lead_hours = np.full(n, np.nan)
    lead_hours[has_event] = ((ev[has_event] - t[has_event]) / pd.Timedelta(hours=1)).to_numpy(dtype=np.float64)
    eligible = has_event & (lead_hours >= 0)  # an alert after the event gives no warning
    n_event_enc = int(np.unique(enc_codes[has_event]).size)

    grid = _default_thresholds(pp) if thresholds is None else [float(v) for v in thresholds]
    positives, negatives = float(yy.sum()), float(n - yy.sum())
    rows: list[dict[str, float]] = []
    for threshold in grid:
        flagged = pp >= threshold
        tp = float((flagged & (yy == 1)).sum())
        fp = float((flagged & (yy == 0)).sum())
        fn, tn = positives - tp, negatives - fp
        alerts = tp + fp
        first_alert_lead = np.full(n_enc, -np.inf)
        hit = flagged & eligible
        np.maximum.at(first_alert_lead, enc_codes[hit], lead_hours[hit])
        alerted = first_alert_lead[np.isfinite(first_alert_lead)]
        rows.append(
            {
                "threshold": threshold,
                "flagged_share": alerts / n,
                "sensitivity": _safe_div(tp, positives),
                "specificity": _safe_div(tn, negatives),
                "ppv": _safe_div(tp, alerts),
                "npv": _safe_div(tn, tn + fn),
                "alerts": alerts,
                "alerts_per_100_patient_days": alerts / patient_days * 100.0,
                "encounters_with_event": float(n_event_enc),
                "encounters_with_event_alerted": _safe_div(alerted.size, n_event_enc),
                "median_lead_time_hours": float(np.median(alerted)) if alerted.size else math.nan,
            }
        )
    return rows


def age_band(age_years: ArrayLike) -> npt.NDArray[np.str_]:
    """Age bands used for subgroup reporting: "<18", "18-44", "45-64", "65-79", "80+"; "unknown" if missing.

    Bands are by completed years (44.9 is "18-44"). Negative or non-numeric ages are "unknown".
    """
    ages = pd.to_numeric(pd.Series(np.asarray(age_years, dtype=object).ravel()), errors="coerce").to_numpy(np.float64)
    out = np.full(ages.shape, "unknown", dtype="<U7")
    valid = np.isfinite(ages) & (ages >= 0)
    cuts = np.array([18.0, 45.0, 65.0, 80.0])
    labels = np.array(AGE_BANDS[:5])
    out[valid] = labels[np.searchsorted(cuts, ages[valid], side="right")]
    return out


def _level_order(level: str) -> tuple[bool, int, str]:
    """Age bands in age order, other levels alphabetically, "unknown" last."""
    rank = AGE_BANDS.index(level) if level in AGE_BANDS else -1
    return (level == "unknown", rank, level)


def _level_labels(column: pd.Series) -> npt.NDArray[np.str_]:
    return np.asarray(column.astype(object).where(column.notna(), "unknown").astype(str).to_numpy(), dtype=str)


def subgroup_metrics(
    y: ArrayLike,
    p: ArrayLike,
    attributes: pd.DataFrame,
    *,
    min_n: int = 30,
    groups: ArrayLike | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """Discrimination and calibration within each level of each attribute (sex, age band, race, ethnicity...).

    Returns ``{attribute: {level: {"n", "prevalence", "auroc", "auroc_ci_low", "auroc_ci_high",
    "observed_expected", "mean_predicted", "too_small": 0}}}``; observed_expected is sum(y) / sum(p)
    (above 1: the model under-predicts risk in that group). Levels with fewer than `min_n` predictions are
    reported as ``{"n", "too_small": 1}`` only: their estimates would be noise, and small cells can
    identify people. Missing values form the level "unknown". Rows of `attributes` are matched by position.
    """
    yy = _labels(y)
    pp = _scores(p, yy.size, probability=True, name="probabilities")
    if len(attributes) != yy.size:
        raise ValueError("attributes must have one row per prediction")
    grp = None if groups is None else np.asarray(groups)
    if grp is not None and (grp.ndim != 1 or grp.size != yy.size):
        raise ValueError("groups must be one-dimensional and as long as the labels")
    result: dict[str, dict[str, dict[str, float]]] = {}
    for column in attributes.columns:
        levels = _level_labels(attributes[column].reset_index(drop=True))
        per_level: dict[str, dict[str, float]] = {}
        for level in sorted(set(levels.tolist()), key=_level_order):
            mask = levels == level
            n_level = int(mask.sum())
            if n_level < min_n:
                per_level[level] = {"n": float(n_level), "too_small": 1.0}
                continue
            ys, ps = yy[mask], pp[mask]
            codes, n_groups = _group_codes(None if grp is None else grp[mask], n_level)
            ranked = _Ranked.build(ys, ps)
            auc = float(_weighted_auroc(*ranked.block_sums(np.ones((1, n_level))))[0])
            boot = [
                _weighted_auroc(*ranked.block_sums(w))
                for w in _bootstrap_weights(codes[ranked.order], n_groups, n_boot, seed)
            ]
            low, high = _ci(np.concatenate(boot) if boot else np.empty(0))
            per_level[level] = {
                "n": float(n_level),
                "prevalence": float(ys.mean()),
                "auroc": auc,
                "auroc_ci_low": low,
                "auroc_ci_high": high,
                "observed_expected": _safe_div(ys.sum(), ps.sum()),
                "mean_predicted": float(ps.mean()),
                "too_small": 0.0,
            }
        result[str(column)] = per_level
    return result
