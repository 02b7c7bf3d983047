"""Discrimination and calibration of a risk score against realised labels (numpy only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties given average ranks.
    NaN when the labels hold only one class."""
    score = np.asarray(score, dtype=float)
    positive = np.asarray(label, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def calibration_table(risk: np.ndarray, label: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Mean predicted risk against the observed rate in `bins` groups of equal size (by risk)."""
    risk = np.asarray(risk, dtype=float)
    label = np.asarray(label, dtype=bool)
    if len(risk) == 0:
        return []
    order = np.argsort(risk, kind="stable")
    out = []
    for group in np.array_split(order, min(bins, len(risk))):
        out.append({"n": len(group), "mean_risk": float(risk[group].mean()),
                    "observed_rate": float(label[group].mean())})
    return out
