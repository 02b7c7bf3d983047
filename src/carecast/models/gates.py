"""Promotion gates: may a challenger replace the champion? Declared thresholds and one pure function.

Both models are scored on the SAME recent holdout (the latest admissions, never seen by the challenger's
training). Four gates, each answered with pass/fail and its figures:

    discrimination  AUROC(challenger) - AUROC(champion), paired patient-cluster bootstrap 95% CI: refused when
                    the whole interval lies below -auroc_margin (worse beyond its CI), or the point estimate
                    falls more than auroc_max_drop below the champion
    calibration     the challenger's calibration slope and intercept on the holdout within declared bounds
    subgroups       per attribute (sex, age band, race, ethnicity), the gap between the best and worst level's
                    AUROC may not widen by more than subgroup_max_widening over the champion's gap
    schema          every column the challenger reads is produced by the serving feature builder, and none
                    changed kind (numeric / categorical) from the champion's

With no champion, the challenger must clear absolute floors instead: AUROC and the lower end of its CI,
calibration within bounds, subgroup gaps at most subgroup_max_gap, schema served.

>>> g = PromotionGates()
>>> (g.auroc_margin, g.calibration_slope_bounds, g.subgroup_max_widening)
(0.0, (0.7, 1.3), 0.05)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from carecast.models import metrics as M
from carecast.models.report import to_jsonable

SUBGROUP_ATTRIBUTES = ("sex", "age_band", "race", "ethnicity")


@dataclass(frozen=True)
class PromotionGates:
    """The thresholds every promotion is checked against (declared data; the docs list them)."""

    # discrimination against the champion
    auroc_margin: float = 0.0  # refused when the CI's upper end of (challenger - champion) is below -margin
    auroc_max_drop: float = 0.02  # ... or when the point difference is below -max_drop
    # calibration of the challenger on the holdout
    calibration_slope_bounds: tuple[float, float] = (0.7, 1.3)
    calibration_intercept_bounds: tuple[float, float] = (-0.3, 0.3)
    calibration_by_ci: bool = True  # fail only when the whole 95% CI lies outside the bounds (small holdouts)
    # fairness: AUROC gap between the best and worst level of an attribute
    subgroup_max_widening: float = 0.05
    subgroup_by_ci: bool = True  # refuse only when the widening's 95% CI (patient bootstrap) lies above 0
    subgroup_n_boot: int = 200
    subgroup_min_n: int = 100  # levels with fewer predictions ...
    subgroup_min_patients_with_outcome: int = 5  # ... or fewer patients with (and without) the outcome are
    # too noisy to compare, and are left out
    # absolute floors when there is no champion
    min_auroc: float = 0.65
    min_auroc_ci_low: float = 0.5  # better than chance with 95% confidence
    subgroup_max_gap: float = 0.15
    # bootstrap
    n_boot: int = 500
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_GATES = PromotionGates()


@dataclass(frozen=True)
class Holdout:
    """The recent holdout both models are scored on: outcomes, patient ids (the bootstrap clusters) and the
    attributes of each row (columns of SUBGROUP_ATTRIBUTES; missing values are the level "unknown")."""

    y: npt.NDArray[np.int64]
    groups: npt.NDArray[Any]
    attributes: pd.DataFrame

    def __post_init__(self) -> None:
        n = len(self.y)
        if len(self.groups) != n or len(self.attributes) != n:
            raise ValueError("holdout outcomes, patient ids and attributes must have one row per prediction")


@dataclass(frozen=True)
class Candidate:
    """A model's scores on the holdout, with the feature schema of its card
    ({"columns", "numeric", "categorical", "hash"})."""

    version: str
    p: npt.NDArray[np.float64]
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "reason": self.reason, "figures": to_jsonable(self.figures)}


@dataclass(frozen=True)
class GateDecision:
    """Promote or not, and one reason per gate. `against` is the champion's version (None: absolute floors)."""

    challenger: str
    against: str | None
    results: tuple[GateResult, ...]
    gates: PromotionGates

    @property
    def promote(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.gate for r in self.results if not r.passed]

    def summary(self) -> str:
        """One line for the alias history: the decision and the failing gates."""
        if self.promote:
            return "all gates passed: " + ", ".join(r.gate for r in self.results)
        return "refused by " + "; ".join(f"{r.gate} ({r.reason})" for r in self.results if not r.passed)

    def to_dict(self) -> dict[str, Any]:
        return {"challenger": self.challenger, "champion": self.against, "promote": self.promote,
                "failed": self.failed, "summary": self.summary(), "gates": [r.to_dict() for r in self.results],
                "thresholds": self.gates.to_dict()}


def _fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.3f}" if x < 0 else f"{x:.3f}"


def holdout_attributes(X: pd.DataFrame) -> pd.DataFrame:
    """The subgroup attributes of feature rows: sex, age band (from `age`), race, ethnicity."""
    def column(name: str) -> npt.NDArray[Any]:
        return X[name].fillna("unknown").to_numpy() if name in X else np.full(len(X), "unknown", dtype=object)

    age = X["age"].to_numpy() if "age" in X else np.full(len(X), np.nan)
    return pd.DataFrame({"sex": column("sex"), "age_band": M.age_band(age), "race": column("race"),
                         "ethnicity": column("ethnicity")})


# -- the gates --------------------------------------------------------------------------------------------------

def discrimination_gate(holdout: Holdout, challenger: Candidate, champion: Candidate | None,
                        gates: PromotionGates) -> GateResult:
    if champion is None:
        m = M.score_auroc(holdout.y, challenger.p, holdout.groups, n_boot=gates.n_boot, seed=gates.seed)
        ok = (math.isfinite(m["value"]) and m["value"] >= gates.min_auroc
              and math.isfinite(m["ci_low"]) and m["ci_low"] >= gates.min_auroc_ci_low)
        reason = (f"AUROC {_fmt(m['value'])} (95% CI {_fmt(m['ci_low'])}-{_fmt(m['ci_high'])}); floors: "
                  f"{gates.min_auroc:.2f}, CI low {gates.min_auroc_ci_low:.2f}")
        return GateResult("discrimination", ok, reason,
                          {"auroc": m["value"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                           "min_auroc": gates.min_auroc, "min_auroc_ci_low": gates.min_auroc_ci_low})
    d = M.compare_auroc(holdout.y, challenger.p, champion.p, holdout.groups, n_boot=gates.n_boot, seed=gates.seed)
    worse_beyond_ci = not math.isfinite(d["ci_high"]) or d["ci_high"] < -gates.auroc_margin
    dropped = not math.isfinite(d["difference"]) or d["difference"] < -gates.auroc_max_drop
    ok = not (worse_beyond_ci or dropped)
    reason = (f"AUROC {_fmt(d['model_auroc'])} vs champion {_fmt(d['baseline_auroc'])}: difference "
              f"{_fmt(d['difference'])} (95% CI {_fmt(d['ci_low'])} to {_fmt(d['ci_high'])})")
    if worse_beyond_ci:
        reason += f"; worse beyond the CI (upper end below {0.0 - gates.auroc_margin:.3f})"
    elif dropped:
        reason += f"; drop beyond {gates.auroc_max_drop:.3f}"
    return GateResult("discrimination", ok, reason,
                      {"challenger_auroc": d["model_auroc"], "champion_auroc": d["baseline_auroc"],
                       "difference": d["difference"], "ci_low": d["ci_low"], "ci_high": d["ci_high"],
                       "margin": gates.auroc_margin, "max_drop": gates.auroc_max_drop})


def _within(value: float, low: float, high: float, bounds: tuple[float, float], by_ci: bool) -> bool:
    """The point estimate within the bounds, or (by_ci) at least part of its 95% CI."""
    lo, hi = bounds
    if math.isfinite(value) and lo <= value <= hi:
        return True
    return by_ci and math.isfinite(low) and math.isfinite(high) and low <= hi and high >= lo


def calibration_gate(holdout: Holdout, challenger: Candidate, champion: Candidate | None,
                     gates: PromotionGates) -> GateResult:
    m = M.binary_metrics(holdout.y, challenger.p, holdout.groups, n_boot=gates.n_boot if gates.calibration_by_ci
                         else 0, seed=gates.seed)
    slope, intercept = m["calibration_slope"], m["calibration_intercept"]
    sb, ib = gates.calibration_slope_bounds, gates.calibration_intercept_bounds
    slope_ok = _within(slope["value"], slope["ci_low"], slope["ci_high"], sb, gates.calibration_by_ci)
    intercept_ok = _within(intercept["value"], intercept["ci_low"], intercept["ci_high"], ib, gates.calibration_by_ci)
    figures: dict[str, Any] = {"slope": slope, "intercept": intercept, "slope_bounds": list(sb),
                               "intercept_bounds": list(ib), "by_ci": gates.calibration_by_ci,
                               "brier": m["brier"]["value"]}
    if champion is not None:
        c = M.binary_metrics(holdout.y, champion.p, n_boot=0)
        figures.update(champion_slope=c["calibration_slope"]["value"],
                       champion_intercept=c["calibration_intercept"]["value"], champion_brier=c["brier"]["value"])

    def said(name: str, entry: dict[str, float], ok: bool, bounds: tuple[float, float]) -> str:
        ci = f" (95% CI {_fmt(entry['ci_low'])} to {_fmt(entry['ci_high'])})" if gates.calibration_by_ci else ""
        point_in = math.isfinite(entry["value"]) and bounds[0] <= entry["value"] <= bounds[1]
        verdict = "within" if point_in else "CI reaches into" if ok else "outside"
        return f"{name} {_fmt(entry['value'])}{ci} {verdict} {bounds[0]} to {bounds[1]}"

    reason = f"{said('slope', slope, slope_ok, sb)}; {said('intercept', intercept, intercept_ok, ib)}"
    return GateResult("calibration", slope_ok and intercept_ok, reason, figures)


def _level_values(holdout: Holdout, attribute: str) -> npt.NDArray[Any]:
    return M._level_labels(holdout.attributes[attribute])


def _gap(y: npt.NDArray[np.int64], p: npt.NDArray[np.float64], values: npt.NDArray[Any],
         levels: Sequence[str]) -> tuple[dict[str, float], float]:
    """AUROC of each level (levels with one outcome class left out) and the best minus the worst."""
    aurocs: dict[str, float] = {}
    for level in levels:
        mask = values == level
        auc = M.auroc(y[mask], p[mask]) if mask.any() else math.nan
        if math.isfinite(auc):
            aurocs[str(level)] = auc
    return aurocs, (max(aurocs.values()) - min(aurocs.values()) if len(aurocs) >= 2 else math.nan)


def comparable_levels(holdout: Holdout, attribute: str, gates: PromotionGates) -> list[str]:
    """Levels of an attribute with enough predictions, and enough patients with and without the outcome,
    for their AUROC to mean something ("unknown" is never one)."""
    values = _level_values(holdout, attribute)
    found = []
    for level in sorted(set(values.tolist())):
        if level == "unknown":
            continue
        mask = values == level
        with_outcome = set(holdout.groups[mask & (holdout.y == 1)].tolist())
        without = set(holdout.groups[mask & (holdout.y == 0)].tolist()) - with_outcome
        if (mask.sum() >= gates.subgroup_min_n and len(with_outcome) >= gates.subgroup_min_patients_with_outcome
                and len(without) >= gates.subgroup_min_patients_with_outcome):
            found.append(level)
    return found


def _bootstrap_gaps(holdout: Holdout, values: npt.NDArray[Any], levels: Sequence[str],
                    scores: Sequence[npt.NDArray[np.float64]], n_boot: int, seed: int) -> npt.NDArray[np.float64]:
    """Gaps of each score on `n_boot` resamples of whole patients: shape (n_boot, len(scores))."""
    codes, _ = pd.factorize(pd.Series(holdout.groups))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(codes.max() + 2))
    rows_of = [order[bounds[g]:bounds[g + 1]] for g in range(len(bounds) - 1)]
    rng = np.random.default_rng(seed)
    out = np.full((n_boot, len(scores)), np.nan)
    for b in range(n_boot):
        idx = np.concatenate([rows_of[g] for g in rng.integers(0, len(rows_of), len(rows_of))])
        for k, p in enumerate(scores):
            out[b, k] = _gap(holdout.y[idx], p[idx], values[idx], levels)[1]
    return out


def subgroup_gate(holdout: Holdout, challenger: Candidate, champion: Candidate | None,
                  gates: PromotionGates) -> GateResult:
    """Refused when, for an attribute, the challenger's gap widened over the champion's by more than the
    threshold (no champion: the gap itself exceeds subgroup_max_gap) and, with subgroup_by_ci, the patient
    bootstrap's 95% CI of that widening (of that gap) lies above 0: a real difference, not resampling noise."""
    problems: list[str] = []
    figures: dict[str, Any] = {}
    compared: list[str] = []
    for attribute in holdout.attributes.columns:
        levels = comparable_levels(holdout, attribute, gates)
        values = _level_values(holdout, attribute)
        mine, gap = _gap(holdout.y, challenger.p, values, levels)
        entry: dict[str, Any] = {"levels": levels, "challenger_auroc": mine, "challenger_gap": gap}
        figures[str(attribute)] = entry
        if not math.isfinite(gap):
            continue
        compared.append(str(attribute))
        scores = [challenger.p] if champion is None else [challenger.p, champion.p]
        boot = (_bootstrap_gaps(holdout, values, levels, scores, gates.subgroup_n_boot, gates.seed)
                if gates.subgroup_by_ci else np.empty((0, len(scores))))
        if champion is None:
            low, high = M._ci(boot[:, 0])
            entry.update(gap_ci_low=low, gap_ci_high=high, max_gap=gates.subgroup_max_gap)
            if gap > gates.subgroup_max_gap and (not gates.subgroup_by_ci or low > 0):
                problems.append(f"{attribute} gap {gap:.3f} > {gates.subgroup_max_gap:.2f}")
            continue
        theirs, their_gap = _gap(holdout.y, champion.p, values, levels)
        widening = gap - their_gap
        low, high = M._ci(boot[:, 0] - boot[:, 1])
        entry.update(champion_auroc=theirs, champion_gap=their_gap, widening=widening, widening_ci_low=low,
                     widening_ci_high=high, max_widening=gates.subgroup_max_widening)
        if widening > gates.subgroup_max_widening and (not gates.subgroup_by_ci or low > 0):
            problems.append(f"{attribute} gap widened by {widening:.3f} > {gates.subgroup_max_widening:.2f}"
                            + (f" (95% CI {low:.3f} to {high:.3f})" if gates.subgroup_by_ci else ""))
    if problems:
        reason = "; ".join(problems)
    elif compared:
        reason = f"no gap beyond the threshold ({', '.join(compared)})"
    else:
        reason = "no attribute has two levels large enough to compare"
    return GateResult("subgroups", not problems, reason, figures)


def schema_gate(challenger: Candidate, champion: Candidate | None, available: Iterable[str]) -> GateResult:
    have = set(available)
    columns = list(challenger.schema.get("columns") or [])
    missing = sorted(c for c in columns if c not in have)
    figures: dict[str, Any] = {"columns": len(columns), "not_served": missing[:20], "n_not_served": len(missing),
                               "hash": challenger.schema.get("hash")}
    problems = [f"{len(missing)} column(s) the serving feature builder does not produce"] if missing else []
    if not columns:
        problems.append("the card declares no feature columns")
    if champion is not None:
        kinds = {c: "numeric" for c in champion.schema.get("numeric") or []}
        kinds.update({c: "categorical" for c in champion.schema.get("categorical") or []})
        mine = {c: "numeric" for c in challenger.schema.get("numeric") or []}
        mine.update({c: "categorical" for c in challenger.schema.get("categorical") or []})
        changed = sorted(c for c, k in mine.items() if c in kinds and kinds[c] != k)
        theirs = set(champion.schema.get("columns") or [])
        figures.update(champion_hash=champion.schema.get("hash"), same_hash=champion.schema.get("hash") ==
                       challenger.schema.get("hash"), added=len(set(columns) - theirs),
                       removed=len(theirs - set(columns)), kind_changed=changed[:20])
        if changed:
            problems.append(f"{len(changed)} column(s) changed kind from the champion's")
    reason = "; ".join(problems) if problems else (
        "same feature schema as the champion" if figures.get("same_hash") else
        "every column is produced by the serving feature builder")
    return GateResult("schema", not problems, reason, figures)


def evaluate_gates(holdout: Holdout, challenger: Candidate, champion: Candidate | None, *,
                   available_columns: Iterable[str], gates: PromotionGates = DEFAULT_GATES) -> GateDecision:
    """Check every gate (all of them, even after a failure, so the decision lists every reason).

    `available_columns` are the columns the serving feature builder produces now (`FeatureSpec.columns()`)."""
    n = len(holdout.y)
    for cand in (challenger, champion):
        if cand is not None and len(cand.p) != n:
            raise ValueError(f"model {cand.version} has {len(cand.p)} holdout scores for {n} holdout rows")
    if n == 0 or holdout.y.min() == holdout.y.max():
        raise ValueError("the holdout needs both outcomes to compare models")
    results = (
        discrimination_gate(holdout, challenger, champion, gates),
        calibration_gate(holdout, challenger, champion, gates),
        subgroup_gate(holdout, challenger, champion, gates),
        schema_gate(challenger, champion, available_columns),
    )
    return GateDecision(challenger=challenger.version, against=None if champion is None else champion.version,
                        results=results, gates=gates)
