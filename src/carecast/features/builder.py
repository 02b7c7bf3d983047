"""Point-in-time features: for each (patient, encounter, time t), only data effective at or before t.

One function, `build_features`, serves training (many query times at once) and serving (one), so
the two can never disagree. Everything is vectorised over queries: a variable's readings are sorted
by (patient, time) once, each query's window is found by binary search, and window statistics are
computed over the flattened (query, reading) pairs. Windows are half-open: (t - w, t].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from carecast.domain.frames import ClinicalFrames
from carecast.features.scores import (
    charlson_categories,
    charlson_categories_of,
    charlson_from_categories,
    news2_frame,
    qsofa_frame,
)
from carecast.features.spec import FeatureSpec, default_spec

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_KEY_SPAN = np.int64(1) << 35  # seconds per patient slot in the composite sort key (~1,000 years)
_EPOCH = pd.Timestamp("1800-01-01", tz="UTC")
BEDSIDE_SOURCES = ("fhir", "csv")


def _seconds(times: pd.Series | pd.DatetimeIndex) -> IntArray:
    """Whole seconds since 1800; NaT -> -1 (timelines drop such readings: no time, no place in a window)."""
    values = (pd.DatetimeIndex(times) - _EPOCH).total_seconds().to_numpy()
    return np.where(np.isnan(values), -1, np.floor(values)).astype(np.int64)


@dataclass
class _Queries:
    n: int
    rank_of: dict[int, int]
    pid: IntArray
    sec: IntArray

    def keys(self) -> IntArray:
        ranks = np.array([self.rank_of[p] for p in self.pid], dtype=np.int64)
        return ranks * _KEY_SPAN + self.sec


class _Timeline:
    """Readings of one kind, sorted by (patient, time), searchable by query."""

    def __init__(self, q: _Queries, pid: IntArray, sec: IntArray, value: FloatArray) -> None:
        ranks = np.array([q.rank_of.get(int(p), -1) for p in pid], dtype=np.int64)
        keep = (ranks >= 0) & (sec >= 0)  # readings of patients no query asks about, or without a time
        key = ranks[keep] * _KEY_SPAN + sec[keep]
        order = np.argsort(key, kind="stable")
        self.key = key[order]
        self.sec = sec[keep][order]
        self.value = value[keep][order]
        self.q = q
        self._qkey = q.keys()

    def window(self, hours: float | None) -> tuple[IntArray, IntArray]:
        """Index ranges of each query's readings in (t - hours, t]; all history up to t when None."""
        hi = np.searchsorted(self.key, self._qkey, side="right")
        if hours is None:
            lo = np.searchsorted(self.key, self._qkey - self.q.sec, side="left")
        else:
            lo = np.searchsorted(self.key, self._qkey - min(int(hours * 3600), 1 << 34), side="right")
            lo = np.maximum(lo, np.searchsorted(self.key, self._qkey - self.q.sec, side="left"))
        return lo.astype(np.int64), hi.astype(np.int64)

    def stats(self, hours: float | None, wanted: list[str]) -> dict[str, FloatArray]:
        lo, hi = self.window(hours)
        n = hi - lo
        nq = self.q.n
        out: dict[str, FloatArray] = {}
        has = n > 0
        if "count" in wanted:
            out["count"] = n.astype(np.float64)
        if "last" in wanted:
            out["last"] = np.where(has, self.value[np.maximum(hi - 1, 0)] if len(self.value) else np.nan, np.nan)
        rest = [s for s in wanted if s not in ("count", "last")]
        if not rest:
            return out
        total = int(n.sum())
        starts = np.cumsum(n) - n
        qi = np.repeat(np.arange(nq), n)
        idx = lo[qi] + (np.arange(total) - starts[qi])
        v = self.value[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(qi, weights=v, minlength=nq) / n
            if "mean" in rest:
                out["mean"] = np.where(has, mean, np.nan)
            if "min" in rest or "max" in rest:
                nz = np.flatnonzero(has)
                for stat, ufunc in (("min", np.minimum), ("max", np.maximum)):
                    if stat in rest:
                        col = np.full(nq, np.nan)
                        if total:
                            col[nz] = ufunc.reduceat(v, starts[nz])
                        out[stat] = col
            if "std" in rest:
                dev = v - mean[qi]
                var = np.bincount(qi, weights=dev * dev, minlength=nq) / n
                out["std"] = np.where(n >= 2, np.sqrt(var), np.nan)
            if "slope" in rest:
                # least-squares slope per hour over the window, times relative to the query time
                dt = (self.sec[idx] - self.q.sec[qi]) / 3600.0
                dt_mean = np.bincount(qi, weights=dt, minlength=nq) / n
                ddt = dt - dt_mean[qi]
                sxx = np.bincount(qi, weights=ddt * ddt, minlength=nq)
                sxy = np.bincount(qi, weights=ddt * (v - mean[qi]), minlength=nq)
                out["slope"] = np.where((n >= 2) & (sxx > 0), sxy / sxx, np.nan)
        return out

    def last_two(self, hours: float) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Last value, the change from the one before, and hours since the last, within the lookback."""
        lo, hi = self.window(hours)
        n = hi - lo
        if not len(self.value):
            nan = np.full(self.q.n, np.nan)
            return nan, nan.copy(), nan.copy()
        last_i = np.maximum(hi - 1, 0)
        prev_i = np.maximum(hi - 2, 0)
        last = np.where(n >= 1, self.value[last_i], np.nan)
        delta = np.where(n >= 2, self.value[last_i] - self.value[prev_i], np.nan)
        since = np.where(n >= 1, (self.q.sec - self.sec[last_i]) / 3600.0, np.nan)
        return last, delta, since


def _timeline(q: _Queries, df: pd.DataFrame, time_col: str, value: FloatArray | None = None) -> _Timeline:
    vals = np.ones(len(df)) if value is None else value
    return _Timeline(q, df["patient_id"].to_numpy(np.int64), _seconds(df[time_col]), np.asarray(vals, np.float64))


def _timelines(q: _Queries, obs: pd.DataFrame, variables: list[str]) -> dict[str, _Timeline]:
    """One sorted timeline per variable (built once, then read for every window)."""
    by_var = dict(tuple(obs.groupby("variable", sort=False)))
    empty = obs.iloc[0:0]
    return {var: _timeline(q, part, "effective_at", part["value"].to_numpy())
            for var in variables for part in [by_var.get(var, empty)]}


def _windowed(cols: dict[str, FloatArray | list[object]], lines: dict[str, _Timeline], windows: list[int],
              stats: list[str], prefix: str) -> None:
    for w in windows:
        for var, line in lines.items():
            got = line.stats(w, stats)
            for s in stats:
                cols[f"{prefix}{var}_{s}_{w}h"] = got[s]


def build_features(frames: ClinicalFrames, queries: pd.DataFrame, spec: FeatureSpec | None = None) -> pd.DataFrame:
    """The feature matrix: one row per query (columns patient_id, encounter_id, t), in `spec` order.

    Only data effective at or before each query's t is used. Missing values are NaN; categorical
    columns hold strings or None.
    """
    spec = spec or default_spec()
    queries = queries.reset_index(drop=True)
    t = pd.to_datetime(queries["t"], utc=True)
    if t.isna().any():
        raise ValueError("build_features: every query needs a time t")
    pids = queries["patient_id"].to_numpy(np.int64)
    all_pids = np.unique(np.concatenate([pids, frames.observations["patient_id"].to_numpy(np.int64)]))
    q = _Queries(n=len(queries), rank_of={int(p): i for i, p in enumerate(all_pids)}, pid=pids, sec=_seconds(t))
    cols: dict[str, FloatArray | list[object]] = {}

    # static: demographics and the encounter, as known at admission
    pat = frames.patients.set_index("patient_id")
    enc = frames.encounters.set_index("encounter_id")
    q_enc = queries["encounter_id"]
    birth = pd.to_datetime(pat["birth_date"].reindex(pids).to_numpy(), utc=True)
    admitted = pd.to_datetime(enc["admitted_at"].reindex(q_enc).to_numpy(), utc=True)
    numeric_static = {
        "age": (pd.DatetimeIndex(t) - birth).total_seconds().to_numpy() / (365.25 * 86400),
        "hours_since_admission": (pd.DatetimeIndex(t) - admitted).total_seconds().to_numpy() / 3600,
    }
    for name in spec.static_numeric:
        cols[name] = numeric_static[name]

    obs = frames.observations
    bedside = obs[obs["source"].isin(BEDSIDE_SOURCES)]
    wear = obs[obs["source"] == "wearable"]

    variables, windows, stats = spec.vitals()
    bedside_lines = _timelines(q, bedside, variables)
    _windowed(cols, bedside_lines, windows, stats, prefix="")

    labs, lookback, lab_stats = spec.labs()
    for var, line in _timelines(q, bedside, labs).items():
        last_v, delta, since = line.last_two(lookback)
        lab_values = {"last": last_v, "delta": delta, "hours_since": since}
        for s in lab_stats:
            cols[f"{var}_{s}"] = lab_values[s]

    wvars, wwins, wstats = spec.wearables()
    _windowed(cols, _timelines(q, wear, wvars), wwins, wstats, prefix="wearable_")

    # imaging: radiology reports issued in the lookback, and their coded findings
    img_lookback, findings = spec.imaging()
    reports = frames.reports
    cols["imaging_reports"] = _timeline(q, reports, "issued_at").stats(img_lookback, ["count"])["count"]
    codes = reports["conclusion_codes"].fillna("").astype(str).str.split(",")
    for finding, wanted_codes in findings.items():
        hit = reports[np.array([bool(set(c) & set(wanted_codes)) for c in codes], dtype=bool)]
        n = _timeline(q, hit, "issued_at").stats(img_lookback, ["count"])["count"]
        cols[f"imaging_{finding}"] = (n > 0).astype(np.float64)

    # comorbidities known at t (a diagnosis without a date counts as known history)
    if "charlson_index" in spec.numeric_columns():
        cond = frames.conditions[frames.conditions["code_system"] == "icd10"]
        cats = [charlson_categories_of(c) for c in cond["code"].astype(str)]
        present = {}
        for category in charlson_categories():
            rows = cond[np.array([category in c for c in cats], dtype=bool)]
            noted = rows["noted_at"].fillna(_EPOCH)
            n = _timeline(q, rows.assign(noted_at=noted), "noted_at").stats(None, ["count"])["count"]
            present[category] = n > 0
            cols[f"comorbidity_{category}"] = present[category].astype(np.float64)
        cols["charlson_index"] = np.array(
            [charlson_from_categories(c for c, flags in present.items() if flags[i]) for i in range(q.n)],
            dtype=np.float64) if q.n else np.zeros(0)

    # emergency visits before this admission (within the lookback)
    encs = frames.encounters
    ed = encs[encs["encounter_class"] == "EMER"]
    ed_tl = _timeline(q, ed, "admitted_at")
    admitted_sec = _seconds(admitted)
    admitted_sec = np.where(admitted_sec < 0, q.sec, admitted_sec)  # encounter unknown: count up to t
    before = _Queries(q.n, q.rank_of, pids, admitted_sec - 1)
    ed_tl.q, ed_tl._qkey = before, before.keys()
    cols["ed_visits_prior"] = ed_tl.stats(spec.ed_lookback_days * 24, ["count"])["count"]

    # bedside scores from the last values of the last 24 h (GCS < 15 stands in for a missing ACVPU)
    frame = pd.DataFrame({k: v for k, v in cols.items()})
    if set(spec.numeric_columns()) & {"news2_total", "qsofa_total"}:
        w = 24 if 24 in windows else max(windows)

        def last_of(var: str) -> FloatArray:
            name = f"{var}_last_{w}h"
            return np.asarray(frame[name], np.float64) if name in frame else np.full(q.n, np.nan)

        gcs = last_of("gcs_total")
        acvpu = last_of("acvpu")
        acvpu = np.where(np.isnan(acvpu) & ~np.isnan(gcs), np.where(gcs >= 15, 0.0, 1.0), acvpu)
        vitals_now = pd.DataFrame({
            "respiratory_rate": last_of("respiratory_rate"), "spo2": last_of("spo2"),
            "oxygen_flow": last_of("oxygen_flow"),
            "systolic_bp": last_of("systolic_bp"), "heart_rate": last_of("heart_rate"), "acvpu": acvpu,
            "temperature": last_of("temperature"), "gcs_total": gcs,
        })
        if "news2_total" in spec.numeric_columns():
            n2 = news2_frame(vitals_now)
            frame["news2_total"] = n2["news2_total"].to_numpy(np.float64)
            frame["news2_any3"] = n2["news2_any3"].to_numpy(np.float64)
            frame["news2_missing"] = n2["news2_missing"].to_numpy(np.float64)
        if "qsofa_total" in spec.numeric_columns():
            qs = qsofa_frame(vitals_now)
            frame["qsofa_total"] = qs["qsofa_total"].to_numpy(np.float64)
            frame["qsofa_missing"] = qs["qsofa_missing"].to_numpy(np.float64)

    # categorical
    cat_values = {
        "sex": pat["sex"].reindex(pids).to_numpy(object),
        "race": pat["race"].reindex(pids).to_numpy(object),
        "ethnicity": pat["ethnicity"].reindex(pids).to_numpy(object),
        "admission_type": enc["admission_type"].reindex(q_enc).to_numpy(object),
        "encounter_class": enc["encounter_class"].reindex(q_enc).to_numpy(object),
    }
    for name in spec.categorical:
        frame[name] = [None if (v is None or v is np.nan or (isinstance(v, float) and np.isnan(v))) else str(v)
                       for v in cat_values[name]]
    return frame[spec.columns()]
