"""How the latent severity shows: patient baselines, and vitals, labs and wearable signals as functions of
s(t) plus measurement noise. Every value stays inside the plausible range of the variable catalogue.

With the load u = log(1 + e^s) and the diagnosis's organ weights (r respiratory, c circulatory,
i inflammatory), the noise-free means are, e.g.

    heart_rate = hr0 + 7 u (0.4 + c) + 3 u i           respiratory_rate = rr0 + 1.6 u (0.3 + r) + 0.5 u c
    spo2 (air) = spo2_0 - 1.8 u (0.15 + r)             systolic_bp = sbp0 - 6 u (0.3 + c)
    temperature = t0 + 0.4 u i                         lactate = 0.9 exp(0.25 u (0.3 + c))

(docs/simulator.md lists them all). Oxygen is prescribed when SpO2 on air falls below 92 %, and lifts
the measured SpO2 back towards 92-95 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carecast.simulate.latent import softplus

VITALS = ("heart_rate", "respiratory_rate", "spo2", "systolic_bp", "diastolic_bp", "temperature",
          "gcs_total", "oxygen_flow")
LABS = ("lactate", "creatinine", "wbc", "hemoglobin", "platelets", "sodium", "potassium", "bilirubin",
        "crp", "glucose", "urea_nitrogen")

# Limits well inside variables.csv's plausible ranges: the simulator never emits an implausible value.
LIMITS: dict[str, tuple[float, float]] = {
    "heart_rate": (30, 210), "respiratory_rate": (5, 55), "spo2": (70, 100), "systolic_bp": (55, 240),
    "diastolic_bp": (25, 140), "temperature": (33.5, 42.0), "gcs_total": (3, 15), "oxygen_flow": (0, 15),
    "body_weight": (35, 250), "body_height": (135, 210),
    "lactate": (0.3, 20), "creatinine": (0.3, 15), "wbc": (0.5, 80), "hemoglobin": (4, 20),
    "platelets": (8, 900), "sodium": (112, 168), "potassium": (2.3, 7.8), "bilirubin": (0.1, 35),
    "crp": (0.1, 450), "glucose": (35, 700), "urea_nitrogen": (3, 160),
}
DECIMALS: dict[str, int] = {
    "heart_rate": 0, "respiratory_rate": 0, "spo2": 0, "systolic_bp": 0, "diastolic_bp": 0,
    "temperature": 1, "gcs_total": 0, "oxygen_flow": 1, "body_weight": 1, "body_height": 0,
    "lactate": 1, "creatinine": 2, "wbc": 1, "hemoglobin": 1, "platelets": 0, "sodium": 0,
    "potassium": 1, "bilirubin": 1, "crp": 1, "glucose": 0, "urea_nitrogen": 0,
}


# Healthy baselines are kept inside these ranges (the tails of the normal draws are cut).
_BASELINE_RANGE: dict[str, tuple[float, float]] = {
    "body_weight": (40, 180), "body_height": (140, 205), "creatinine": (0.4, 4.0), "hemoglobin": (7, 18),
    "platelets": (60, 500), "glucose": (60, 300),
}


@dataclass(frozen=True, slots=True)
class Phenotype:
    """How strongly severity shows in each organ system (from the admission diagnosis)."""

    respiratory: float
    circulatory: float
    inflammatory: float

    @property
    def dominant(self) -> str:
        if self.respiratory >= max(self.circulatory, self.inflammatory):
            return "respiratory"
        return "circulatory"


def draw_baselines(rng: np.random.Generator, age: np.ndarray, female: np.ndarray,
                   has: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each patient's healthy values, shaped by age, sex and chronic conditions."""
    n = len(age)
    decade = (age - 65.0) / 10.0

    def normal(mean: float | np.ndarray, sd: float) -> np.ndarray:
        return mean + sd * rng.standard_normal(n)

    def lognormal(median: float, sd: float) -> np.ndarray:
        return np.asarray(median * np.exp(sd * rng.standard_normal(n)))

    def flag(key: str) -> np.ndarray:
        return has[key].astype(float)

    base = {
        "heart_rate": normal(76.0, 8.0) + 6.0 * flag("atrial_fibrillation"),
        "respiratory_rate": normal(15.0, 1.3),
        "spo2": np.minimum(normal(97.2, 0.9) - 3.0 * flag("copd"), 99.5),
        "systolic_bp": normal(124.0 + 2.5 * decade, 12.0) + 9.0 * flag("hypertension"),
        "temperature": normal(36.75, 0.18),
        "body_weight": np.where(female, normal(72.0, 15.0), normal(84.0, 16.0)),
        "body_height": np.where(female, normal(162.0, 6.5), normal(176.0, 7.0)),
        "creatinine": lognormal(0.85, 0.18) * (1.0 + 0.9 * flag("ckd")),
        "hemoglobin": np.where(female, normal(12.9, 1.0), normal(14.1, 1.1))
        - 1.2 * np.maximum(flag("ckd"), flag("cancer")),
        "wbc": lognormal(7.3, 0.2),
        "platelets": normal(250.0, 50.0) - 80.0 * flag("liver"),
        "sodium": normal(139.0, 1.8),
        "potassium": normal(4.2, 0.25) + 0.3 * flag("ckd"),
        "bilirubin": lognormal(0.6, 0.3) * (1.0 + 1.5 * flag("liver")),
        "crp": lognormal(3.5, 0.7),
        "glucose": normal(102.0, 10.0) + 55.0 * flag("diabetes"),
        "urea_nitrogen": lognormal(15.0, 0.25) * (1.0 + 0.8 * flag("ckd")),
    }
    for name, (low, high) in _BASELINE_RANGE.items():
        base[name] = np.clip(base[name], low, high)
    return base


def vital_means(s: np.ndarray, base: dict[str, float], ph: Phenotype) -> dict[str, np.ndarray]:
    """Noise-free vitals at severities `s` (spo2 here is on room air)."""
    u = softplus(s)
    r, c, i = ph.respiratory, ph.circulatory, ph.inflammatory
    sbp = base["systolic_bp"] - 6.0 * u * (0.3 + c)
    return {
        "heart_rate": base["heart_rate"] + 7.0 * u * (0.4 + c) + 3.0 * u * i,
        "respiratory_rate": base["respiratory_rate"] + 1.6 * u * (0.3 + r) + 0.5 * u * c,
        "spo2": base["spo2"] - 1.8 * u * (0.15 + r),
        "systolic_bp": sbp,
        "diastolic_bp": 0.55 * sbp + 8.0,
        "temperature": base["temperature"] + 0.4 * u * i,
        "consciousness_deficit": 2.2 * (u - 3.2),
    }


def oxygen_support(spo2_on_air: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flow L/min, expected SpO2 on that flow). Oxygen is started below 92 % on air and titrated
    towards 93 %, but only part of a large deficit is made up, so severe hypoxaemia still shows."""
    flow = np.where(spo2_on_air < 92.0, np.clip(np.round(0.9 * (93.0 - spo2_on_air) * 2) / 2, 1.0, 15.0), 0.0)
    return flow, np.minimum(spo2_on_air + 0.9 * flow, 99.0)


def finish(name: str, values: np.ndarray) -> np.ndarray:
    """Clip to the variable's limits and round as a bedside device or lab would report."""
    low, high = LIMITS[name]
    return np.round(np.clip(values, low, high), DECIMALS[name])


def measure_vitals(rng: np.random.Generator, s: np.ndarray, base: dict[str, float], ph: Phenotype,
                   confused: bool) -> dict[str, np.ndarray]:
    """One vitals set per element of `s`: the means plus measurement noise, rounded and clipped."""
    n = len(s)
    mean = vital_means(s, base, ph)
    noise = rng.standard_normal((7, n))
    # The flow follows the patient's state; the reading on that flow has its own noise.
    flow, spo2 = oxygen_support(mean["spo2"])
    spo2 = spo2 + 1.2 * noise[2]
    sbp = mean["systolic_bp"] + 8.0 * noise[3]
    deficit = np.maximum(0.0, mean["consciousness_deficit"] + 0.6 * noise[6])
    if confused:
        deficit = deficit + (rng.random(n) < 0.3)
    return {
        "heart_rate": finish("heart_rate", mean["heart_rate"] + 4.0 * noise[0]),
        "respiratory_rate": finish("respiratory_rate", mean["respiratory_rate"] + 1.4 * noise[1]),
        "spo2": finish("spo2", spo2),
        "systolic_bp": finish("systolic_bp", sbp),
        "diastolic_bp": finish("diastolic_bp", 0.55 * sbp + 8.0 + 5.0 * noise[4]),
        "temperature": finish("temperature", mean["temperature"] + 0.25 * noise[5]),
        "gcs_total": finish("gcs_total", 15.0 - np.round(deficit)),
        "oxygen_flow": finish("oxygen_flow", flow),
    }


def measure_labs(rng: np.random.Generator, s: np.ndarray, base: dict[str, float],
                 ph: Phenotype) -> dict[str, np.ndarray]:
    """One lab panel per element of `s`."""
    n = len(s)
    u = softplus(s)
    c, i = ph.circulatory, ph.inflammatory
    z = rng.standard_normal((len(LABS), n))

    def ln(row: int, sd: float) -> np.ndarray:
        return np.asarray(np.exp(sd * z[row]))

    values = {
        "lactate": 0.9 * np.exp(0.25 * u * (0.3 + c)) * ln(0, 0.15),
        "creatinine": base["creatinine"] * (1.0 + 0.15 * u * (0.3 + c)) * ln(1, 0.08),
        "wbc": (base["wbc"] + 2.2 * u * i) * ln(2, 0.1),
        "hemoglobin": base["hemoglobin"] - 0.15 * u + 0.4 * z[3],
        "platelets": base["platelets"] * np.exp(-0.08 * u * i) + 15.0 * z[4],
        "sodium": base["sodium"] - 0.5 * u + 1.5 * z[5],
        "potassium": base["potassium"] + 0.08 * u * c + 0.25 * z[6],
        "bilirubin": base["bilirubin"] * np.exp(0.12 * u * c) * ln(7, 0.15),
        "crp": (base["crp"] + 25.0 * u * i) * ln(8, 0.2),
        "glucose": base["glucose"] + 8.0 * u + 15.0 * z[9],
        "urea_nitrogen": base["urea_nitrogen"] * (1.0 + 0.2 * u * (0.3 + c)) * ln(10, 0.1),
    }
    return {name: finish(name, value) for name, value in values.items()}
