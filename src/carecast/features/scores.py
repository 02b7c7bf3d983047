"""Clinical scores as pure functions: NEWS2, qSOFA, the Charlson comorbidity index and LACE.

Each score takes plain values (or a DataFrame for the vectorised forms) and never touches a database,
so training and serving compute them with the same code.

Sources:

- NEWS2: Royal College of Physicians, *National Early Warning Score (NEWS) 2*, 2017, chart 1
  (the scoring table) and the clinical-response thresholds (chart 2 and section 4).
- qSOFA: Seymour CW et al., *Assessment of clinical criteria for sepsis*, JAMA 2016;315:762-774,
  as adopted by Sepsis-3 (Singer M et al., JAMA 2016;315:801-810).
- LACE: van Walraven C et al., *Derivation and validation of an index to predict early death or
  unplanned readmission after discharge from hospital to the community*, CMAJ 2010;182:551-557.
- Charlson: the ICD-10 coding algorithm of Quan H et al., *Coding algorithms for defining
  comorbidities in ICD-9-CM and ICD-10 administrative data*, Med Care 2005;43:1130-1139 (table 1),
  scored with the original weights of Charlson ME et al., J Chronic Dis 1987;40:373-383.
  The code table is data: ``features/data/charlson_icd10.csv``.

NEWS2 conventions (decisions this module makes where the chart is silent):

- **Band boundaries.** The chart prints integer (temperature: one-decimal) bands. Every band is read
  as "value <= the band's upper bound", checked from the lowest band up, so every real number maps
  to exactly one band: respiratory rate 20.5 is above 20 and scores 2 (band 21-24); temperature
  38.05 is above 38.0 and scores 1. The comparison allows an absolute tolerance of 1e-6 so that
  unit-conversion noise (100.4 [degF] converts to 38.00000000000001 Cel) does not flip a band.
- **Missing values.** Any input may be ``None`` (or NaN). A missing parameter scores nothing; the
  total is the sum over the parameters that are present, ``n_missing`` counts the absent ones and
  ``complete`` is true only when all seven are present. An incomplete total is therefore a lower
  bound, and so is its band.
- **SpO2 scale 2 without oxygen status.** At or below 92 % scale 2 does not depend on oxygen; above
  92 % it does, so when ``on_oxygen`` is missing the SpO2 sub-score is missing too.
- **Bands** (the RCP clinical-risk categories): ``"high"`` total >= 7; ``"medium"`` total 5-6;
  ``"low-medium"`` total 0-4 with a single parameter scoring 3 (the "red score", urgent ward-based
  review); ``"low"`` total 0-4 otherwise. ``any_parameter_3`` is reported on its own as well, since
  a red score calls for urgent review whatever the total.
"""

from __future__ import annotations

import csv
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "CHARLSON_HIERARCHY",
    "NEWS2_BANDS",
    "NEWS2_PARAMETERS",
    "CharlsonResult",
    "LaceResult",
    "News2Band",
    "News2Result",
    "QsofaResult",
    "charlson",
    "charlson_categories",
    "charlson_from_categories",
    "lace",
    "news2",
    "news2_frame",
    "qsofa",
    "qsofa_frame",
]

FloatArray = npt.NDArray[np.float64]

# Absorbs floating-point noise from unit conversion; far below any charted resolution (0.1).
_TOLERANCE: Final = 1e-6


@dataclass(frozen=True, slots=True)
class _Bands:
    """A banded parameter: ``scores[i]`` applies when value <= ``upper_bounds[i]``; the last score above all."""

    upper_bounds: tuple[float, ...]
    scores: tuple[int, ...]
    _limits: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.scores) != len(self.upper_bounds) + 1:
            raise ValueError("a band table needs one more score than upper bounds")
        object.__setattr__(self, "_limits", tuple(bound + _TOLERANCE for bound in self.upper_bounds))

    def points(self, value: float) -> int:
        """Points for one present value."""
        return self.scores[bisect_left(self._limits, value)]

    def score(self, value: float | None) -> int | None:
        """Points for one value; None (or NaN) scores None."""
        return None if value is None or math.isnan(value) else self.points(value)

    def score_array(self, values: FloatArray) -> FloatArray:
        """Vectorised :meth:`score`; NaN in, NaN out."""
        index = np.searchsorted(np.asarray(self._limits), values, side="left")
        scored = np.asarray(self.scores, dtype=np.float64)[index]
        return np.where(np.isnan(values), np.nan, scored)


# NEWS2 chart 1 (RCP 2017), one row per parameter.
_RESPIRATORY_RATE: Final = _Bands((8, 11, 20, 24), (3, 1, 0, 2, 3))
_SPO2_SCALE_1: Final = _Bands((91, 93, 95), (3, 2, 1, 0))
_SPO2_SCALE_2_AIR: Final = _Bands((83, 85, 87), (3, 2, 1, 0))  # 88-92 and >= 93 on air both score 0
_SPO2_SCALE_2_OXYGEN: Final = _Bands((83, 85, 87, 92, 94, 96), (3, 2, 1, 0, 1, 2, 3))
_SPO2_SCALE_2_OXYGEN_INDEPENDENT_MAX: Final = 92.0  # at or below this, scale 2 ignores oxygen
_SYSTOLIC_BP: Final = _Bands((90, 100, 110, 219), (3, 2, 1, 0, 3))
_HEART_RATE: Final = _Bands((40, 50, 90, 110, 130), (3, 1, 0, 1, 2, 3))
_TEMPERATURE: Final = _Bands((35.0, 36.0, 38.0, 39.0), (3, 1, 0, 1, 2))
_OXYGEN_SCORE: Final = 2  # supplemental oxygen; air scores 0
_NOT_ALERT_SCORE: Final = 3  # new confusion, voice, pain or unresponsive
_ACVPU_LEVELS: Final = (0, 1, 2, 3, 4)  # alert, new confusion, voice, pain, unresponsive

NEWS2_PARAMETERS: Final = (
    "respiratory_rate",
    "spo2",
    "oxygen",
    "systolic_bp",
    "heart_rate",
    "consciousness",
    "temperature",
)
"""Sub-score keys of :class:`News2Result` (and, prefixed ``news2_``, columns of :func:`news2_frame`)."""

News2Band = Literal["low", "low-medium", "medium", "high"]
NEWS2_BANDS: Final[tuple[News2Band, ...]] = ("low", "low-medium", "medium", "high")


@dataclass(frozen=True, slots=True)
class News2Result:
    """A NEWS2 score. ``subscores`` maps each of :data:`NEWS2_PARAMETERS` to its points, or None if missing."""

    total: int
    subscores: Mapping[str, int | None]
    n_missing: int
    any_parameter_3: bool
    band: News2Band
    complete: bool  # all seven parameters were present


def _is_missing(value: float | bool | None) -> bool:
    return value is None or value != value  # NaN is the only value unequal to itself


def _check_scale(spo2_scale: object) -> None:
    if spo2_scale not in (1, 2):
        raise ValueError("spo2_scale must be 1 or 2")


def _news2_band(total: int, any_parameter_3: bool) -> News2Band:
    if total >= 7:
        return "high"
    if total >= 5:
        return "medium"
    if any_parameter_3:
        return "low-medium"
    return "low"


def _spo2_subscore(spo2: float, on_oxygen: bool | None, spo2_scale: int) -> int | None:
    if spo2_scale == 1:
        return _SPO2_SCALE_1.points(spo2)
    if on_oxygen is None:
        if spo2 <= _SPO2_SCALE_2_OXYGEN_INDEPENDENT_MAX + _TOLERANCE:
            return _SPO2_SCALE_2_AIR.points(spo2)
        return None
    return (_SPO2_SCALE_2_OXYGEN if on_oxygen else _SPO2_SCALE_2_AIR).points(spo2)


def news2(
    respiratory_rate: float | None,
    spo2: float | None,
    on_oxygen: bool | None,
    systolic_bp: float | None,
    heart_rate: float | None,
    acvpu: int | None,
    temperature: float | None,
    *,
    spo2_scale: int = 1,
) -> News2Result:
    """Score one observation set with NEWS2 (RCP 2017).

    Units: breaths/min, %, mm[Hg], beats/min, Cel. ``acvpu`` is 0 alert, 1 new confusion, 2 voice,
    3 pain, 4 unresponsive. ``spo2_scale`` 2 is only for patients with confirmed hypercapnic
    respiratory failure, chosen by a clinician. None or NaN means not measured.

    >>> news2(18, 97, False, 125, 72, 0, 37.0).total
    0
    >>> news2(26, 90, True, 88, 135, 4, 34.5).band
    'high'
    """
    _check_scale(spo2_scale)
    if not _is_missing(acvpu) and acvpu not in _ACVPU_LEVELS:
        raise ValueError("acvpu must be one of 0 (alert), 1 (new confusion), 2 (voice), 3 (pain), 4 (unresponsive)")
    oxygen = None if _is_missing(on_oxygen) else bool(on_oxygen)

    subscores: dict[str, int | None] = {
        "respiratory_rate": _RESPIRATORY_RATE.score(respiratory_rate),
        "spo2": None if spo2 is None or math.isnan(spo2) else _spo2_subscore(spo2, oxygen, spo2_scale),
        "oxygen": None if oxygen is None else (_OXYGEN_SCORE if oxygen else 0),
        "systolic_bp": _SYSTOLIC_BP.score(systolic_bp),
        "heart_rate": _HEART_RATE.score(heart_rate),
        "consciousness": None if acvpu is None or math.isnan(acvpu) else (0 if acvpu == 0 else _NOT_ALERT_SCORE),
        "temperature": _TEMPERATURE.score(temperature),
    }
    present = [points for points in subscores.values() if points is not None]
    total = sum(present)
    any_3 = any(points == 3 for points in present)
    return News2Result(
        total=total,
        subscores=subscores,
        n_missing=len(subscores) - len(present),
        any_parameter_3=any_3,
        band=_news2_band(total, any_3),
        complete=len(present) == len(subscores),
    )


def _numeric_column(df: pd.DataFrame, name: str) -> FloatArray:
    return np.asarray(df[name].to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)


def _require_columns(df: pd.DataFrame, function: str, names: Sequence[str]) -> None:
    absent = [name for name in names if name not in df.columns]
    if absent:
        raise ValueError(f"{function}: missing columns: {', '.join(absent)}")


def _oxygen_column(df: pd.DataFrame) -> FloatArray:
    """1.0 on oxygen, 0.0 on air, NaN unknown. ``on_oxygen`` wins where both columns are present."""
    if "on_oxygen" not in df.columns and "oxygen_flow" not in df.columns:
        raise ValueError("news2_frame: needs an on_oxygen or an oxygen_flow column")
    oxygen = np.full(len(df), np.nan)
    if "oxygen_flow" in df.columns:
        flow = _numeric_column(df, "oxygen_flow")
        oxygen = np.where(np.isnan(flow), np.nan, (flow > 0).astype(np.float64))
    if "on_oxygen" in df.columns:
        flag = _numeric_column(df, "on_oxygen")
        oxygen = np.where(np.isnan(flag), oxygen, (flag != 0).astype(np.float64))
    return oxygen


def _acvpu_column(df: pd.DataFrame, function: str) -> FloatArray:
    acvpu = _numeric_column(df, "acvpu")
    known = ~np.isnan(acvpu)
    if not np.isin(acvpu[known], _ACVPU_LEVELS).all():
        raise ValueError(f"{function}: acvpu must be 0..4 or missing")
    return acvpu


def news2_frame(df: pd.DataFrame, spo2_scale_col: str | None = None) -> pd.DataFrame:
    """NEWS2 for every row of ``df``; the same rules as :func:`news2`, vectorised.

    Columns read: respiratory_rate, spo2, systolic_bp, heart_rate, acvpu, temperature, and
    on_oxygen (truthy = oxygen) and/or oxygen_flow (L/min, > 0 = oxygen); NaN means missing.
    ``spo2_scale_col`` names an optional column holding 1 or 2 per row (NaN = scale 1).

    Returns a frame on the same index with news2_total (int), news2_band (str), news2_any3 (bool),
    news2_missing (int) and one float column per sub-score, ``news2_<parameter>`` (NaN = missing).
    """
    _require_columns(
        df, "news2_frame", ["respiratory_rate", "spo2", "systolic_bp", "heart_rate", "acvpu", "temperature"]
    )
    oxygen = _oxygen_column(df)
    acvpu = _acvpu_column(df, "news2_frame")
    if spo2_scale_col is None:
        scale = np.ones(len(df))
    else:
        _require_columns(df, "news2_frame", [spo2_scale_col])
        scale = np.nan_to_num(_numeric_column(df, spo2_scale_col), nan=1.0)
        if not np.isin(scale, (1.0, 2.0)).all():
            raise ValueError(f"news2_frame: {spo2_scale_col} must hold 1 or 2")

    spo2 = _numeric_column(df, "spo2")
    spo2_points = np.select(
        [
            np.isnan(spo2),
            scale == 1,
            spo2 <= _SPO2_SCALE_2_OXYGEN_INDEPENDENT_MAX + _TOLERANCE,
            oxygen == 1,
            oxygen == 0,
        ],
        [
            np.nan,
            _SPO2_SCALE_1.score_array(spo2),
            _SPO2_SCALE_2_AIR.score_array(spo2),
            _SPO2_SCALE_2_OXYGEN.score_array(spo2),
            _SPO2_SCALE_2_AIR.score_array(spo2),
        ],
        default=np.nan,  # scale 2, above 92 %, oxygen unknown
    )
    subscores: dict[str, FloatArray] = {
        "respiratory_rate": _RESPIRATORY_RATE.score_array(_numeric_column(df, "respiratory_rate")),
        "spo2": spo2_points,
        "oxygen": oxygen * _OXYGEN_SCORE,
        "systolic_bp": _SYSTOLIC_BP.score_array(_numeric_column(df, "systolic_bp")),
        "heart_rate": _HEART_RATE.score_array(_numeric_column(df, "heart_rate")),
        "consciousness": np.where(np.isnan(acvpu), np.nan, np.where(acvpu == 0, 0.0, float(_NOT_ALERT_SCORE))),
        "temperature": _TEMPERATURE.score_array(_numeric_column(df, "temperature")),
    }
    matrix = np.column_stack([subscores[name] for name in NEWS2_PARAMETERS])
    total = np.nansum(matrix, axis=1).astype(np.int64)
    any_3 = (matrix == 3).any(axis=1)
    band = np.select([total >= 7, total >= 5, any_3], ["high", "medium", "low-medium"], default="low")

    out = pd.DataFrame(
        {
            "news2_total": total,
            "news2_band": band.astype(object),
            "news2_any3": any_3,
            "news2_missing": np.isnan(matrix).sum(axis=1).astype(np.int64),
        },
        index=df.index,
    )
    for name in NEWS2_PARAMETERS:
        out[f"news2_{name}"] = subscores[name]
    return out


# ---------------------------------------------------------------------------------------------- qSOFA

_QSOFA_RESPIRATORY_RATE_MIN: Final = 22.0  # >= scores 1
_QSOFA_SYSTOLIC_BP_MAX: Final = 100.0  # <= scores 1
_GCS_NORMAL: Final = 15.0  # GCS below this is altered mentation


@dataclass(frozen=True, slots=True)
class QsofaResult:
    """A qSOFA score (0-3); ``positive`` when total >= 2, counted over the criteria that were present."""

    total: int
    positive: bool
    n_missing: int


def qsofa(
    respiratory_rate: float | None,
    systolic_bp: float | None,
    altered_mentation: bool | None,
    gcs: float | None = None,
) -> QsofaResult:
    """Score qSOFA (Sepsis-3): one point each for RR >= 22/min, SBP <= 100 mm[Hg], altered mentation.

    Mentation is altered when ``altered_mentation`` is true or ``gcs`` < 15; it is not altered when at
    least one of the two is present and neither says altered; it is missing when both are None.

    >>> qsofa(24, 95, False)
    QsofaResult(total=2, positive=True, n_missing=0)
    """
    points: list[int | None] = [
        None if respiratory_rate is None or _is_missing(respiratory_rate)
        else int(respiratory_rate >= _QSOFA_RESPIRATORY_RATE_MIN),
        None if systolic_bp is None or _is_missing(systolic_bp) else int(systolic_bp <= _QSOFA_SYSTOLIC_BP_MAX),
    ]
    mentation: list[bool] = []
    if altered_mentation is not None and not _is_missing(altered_mentation):
        mentation.append(bool(altered_mentation))
    if gcs is not None and not _is_missing(gcs):
        mentation.append(gcs < _GCS_NORMAL)
    points.append(int(any(mentation)) if mentation else None)
    total = sum(point for point in points if point is not None)
    return QsofaResult(total=total, positive=total >= 2, n_missing=sum(point is None for point in points))


def qsofa_frame(df: pd.DataFrame) -> pd.DataFrame:
    """qSOFA for every row of ``df``; the same rules as :func:`qsofa`, vectorised.

    Columns read: respiratory_rate, systolic_bp, and gcs_total and/or acvpu (mentation is altered
    when gcs_total < 15 or acvpu != 0). NaN means missing. Returns qsofa_total (int),
    qsofa_positive (bool) and qsofa_missing (int) on the same index.
    """
    _require_columns(df, "qsofa_frame", ["respiratory_rate", "systolic_bp"])
    if "gcs_total" not in df.columns and "acvpu" not in df.columns:
        raise ValueError("qsofa_frame: needs a gcs_total or an acvpu column")
    rr = _numeric_column(df, "respiratory_rate")
    sbp = _numeric_column(df, "systolic_bp")
    rr_points = np.where(np.isnan(rr), np.nan, (rr >= _QSOFA_RESPIRATORY_RATE_MIN).astype(np.float64))
    sbp_points = np.where(np.isnan(sbp), np.nan, (sbp <= _QSOFA_SYSTOLIC_BP_MAX).astype(np.float64))

    altered = np.zeros(len(df), dtype=bool)
    known = np.zeros(len(df), dtype=bool)
    if "gcs_total" in df.columns:
        gcs = _numeric_column(df, "gcs_total")
        altered |= gcs < _GCS_NORMAL  # NaN compares false
        known |= ~np.isnan(gcs)
    if "acvpu" in df.columns:
        acvpu = _acvpu_column(df, "qsofa_frame")
        altered |= acvpu > 0
        known |= ~np.isnan(acvpu)
    mentation_points = np.where(known, altered.astype(np.float64), np.nan)

    matrix = np.column_stack([rr_points, sbp_points, mentation_points])
    total = np.nansum(matrix, axis=1).astype(np.int64)
    return pd.DataFrame(
        {
            "qsofa_total": total,
            "qsofa_positive": total >= 2,
            "qsofa_missing": np.isnan(matrix).sum(axis=1).astype(np.int64),
        },
        index=df.index,
    )


# ------------------------------------------------------------------------------------------- Charlson

CHARLSON_HIERARCHY: Final[Mapping[str, str]] = {
    "moderate_severe_liver_disease": "mild_liver_disease",
    "diabetes_with_complications": "diabetes_without_complications",
    "metastatic_solid_tumour": "any_malignancy",
}
"""Each key, when present, supersedes (removes) its value before weights are summed."""


@dataclass(frozen=True, slots=True)
class CharlsonResult:
    """A Charlson comorbidity index. ``categories`` are those counted, after the hierarchy rules."""

    score: int
    categories: frozenset[str]


@dataclass(frozen=True, slots=True)
class _CharlsonTable:
    weights: Mapping[str, int]  # category -> weight
    prefixes: Mapping[str, str]  # normalised ICD-10 prefix -> category
    prefix_lengths: tuple[int, ...]


@cache
def _charlson_table() -> _CharlsonTable:
    """Load ``data/charlson_icd10.csv`` (category, weight, icd10_prefix); checked once, then cached."""
    text = resources.files("carecast.features").joinpath("data", "charlson_icd10.csv").read_text(encoding="utf-8")
    weights: dict[str, int] = {}
    prefixes: dict[str, str] = {}
    for row in csv.DictReader(text.splitlines()):
        category, weight, prefix = row["category"], int(row["weight"]), _normalise_icd10(row["icd10_prefix"])
        if weights.setdefault(category, weight) != weight:
            raise ValueError(f"charlson_icd10.csv: category {category} has more than one weight")
        if prefixes.setdefault(prefix, category) != category:
            raise ValueError(f"charlson_icd10.csv: prefix {prefix} is listed under two categories")
    for superseding, superseded in CHARLSON_HIERARCHY.items():
        if superseding not in weights or superseded not in weights:
            raise ValueError("charlson_icd10.csv: a category named in the hierarchy rules is missing")
    return _CharlsonTable(weights, prefixes, tuple(sorted({len(prefix) for prefix in prefixes})))


def charlson_categories() -> tuple[str, ...]:
    """The Charlson categories of the code table, sorted."""
    return tuple(sorted(_charlson_table().weights))


def charlson_categories_of(code: str) -> frozenset[str]:
    """The Charlson categories one ICD-10 code falls in, before the hierarchy rules."""
    table = _charlson_table()
    normalised = _normalise_icd10(code)
    return frozenset(category for length in table.prefix_lengths if len(normalised) >= length
                     if (category := table.prefixes.get(normalised[:length])) is not None)


def charlson_from_categories(present: Iterable[str]) -> int:
    """The index from categories already found (the hierarchy rules are applied here)."""
    table = _charlson_table()
    found = set(present)
    for superseding, superseded in CHARLSON_HIERARCHY.items():
        if superseding in found:
            found.discard(superseded)
    return sum(table.weights[c] for c in found)


def _normalise_icd10(code: str) -> str:
    return code.strip().upper().replace(".", "")


def charlson(codes: Iterable[str]) -> CharlsonResult:
    """Charlson comorbidity index from ICD-10 diagnosis codes (Quan 2005 mapping, Charlson 1987 weights).

    Codes are matched by prefix after normalising (upper-case, dots and surrounding spaces removed), so
    ``"e11.9"``, ``"E11.9"`` and ``"E119"`` all match prefix ``E119``. Unknown codes are ignored and each
    category counts once however many of its codes appear.

    >>> result = charlson(["I21.4", "E11.9", "E11.2"])
    >>> result.score, sorted(result.categories)
    (3, ['diabetes_with_complications', 'myocardial_infarction'])
    """
    table = _charlson_table()
    found: set[str] = set()
    for raw in codes:
        if not isinstance(raw, str):
            continue  # a NaN from a sparse diagnosis column is "no code", not an error
        code = _normalise_icd10(raw)
        for length in table.prefix_lengths:
            category = table.prefixes.get(code[:length]) if len(code) >= length else None
            if category is not None:
                found.add(category)
    for superseding, superseded in CHARLSON_HIERARCHY.items():
        if superseding in found:
            found.discard(superseded)
    return CharlsonResult(score=sum(table.weights[category] for category in found), categories=frozenset(found))


# ----------------------------------------------------------------------------------------------- LACE

_LACE_LENGTH_OF_STAY: Final = _Bands((0, 1, 2, 3, 6, 13), (0, 1, 2, 3, 4, 5, 7))  # on whole days
_LACE_ACUTE: Final = 3
_LACE_CHARLSON: Final = _Bands((0, 1, 2, 3), (0, 1, 2, 3, 5))
_LACE_ED_VISITS_MAX: Final = 4


@dataclass(frozen=True, slots=True)
class LaceResult:
    """A LACE index (0-19) and its four parts."""

    total: int
    L: int
    A: int
    C: int
    E: int


def lace(length_of_stay_days: float, emergent_admission: bool, charlson_index: int, ed_visits_6m: int) -> LaceResult:
    """LACE index for 30-day death or unplanned readmission (van Walraven 2010).

    Length of stay is counted in whole days, the floor of the fractional stay: 0.9 days is "< 1 day"
    (0 points), 6.99 days is 6 days (4 points). L: <1 d 0; 1 d 1; 2 d 2; 3 d 3; 4-6 d 4; 7-13 d 5;
    >=14 d 7. A: 3 if the admission was acute (emergent). C: Charlson 0-3 -> same, >=4 -> 5.
    E: emergency-department visits in the previous 6 months, capped at 4.

    >>> lace(5.5, True, 2, 1).total
    10
    """
    for name, value in (
        ("length_of_stay_days", length_of_stay_days),
        ("charlson_index", charlson_index),
        ("ed_visits_6m", ed_visits_6m),
    ):
        if value is None or math.isnan(value):
            raise ValueError(f"{name} is required")
        if value < 0:
            raise ValueError(f"{name} must be >= 0")
    points_l = _LACE_LENGTH_OF_STAY.points(math.floor(length_of_stay_days))
    points_a = _LACE_ACUTE if emergent_admission else 0
    points_c = _LACE_CHARLSON.points(charlson_index)
    points_e = min(int(ed_visits_6m), _LACE_ED_VISITS_MAX)
    return LaceResult(total=points_l + points_a + points_c + points_e, L=points_l, A=points_a, C=points_c, E=points_e)
