"""The hospital's plan: every admission, its latent course, its vitals schedule and the ground truth.

Planning is cheap (numbers only, no resources): it decides who is admitted when, runs each latent course
to its end (or to 24 h past the window, so every prediction point in the window has a label), plans
readmissions, fixes the times of the vitals sets and computes the oracle risk at each one. The
resources are written later, lazily, by `hospital.Hospital.events()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from carecast.simulate import tables as T
from carecast.simulate.config import SimulationConfig
from carecast.simulate.identifiers import COURSES, HISTORY, IDENTIFIERS, READMISSION, SCHEDULE, rng_for, uuids
from carecast.simulate.latent import (
    DIED,
    DISCHARGED,
    INTENSIVE_CARE,
    WARD,
    Covariates,
    LatentParameters,
    OracleRisk,
    SeverityChain,
    simulate_courses,
    softplus,
)
from carecast.simulate.physiology import Phenotype
from carecast.simulate.population import PatientProfile, draw_population, state_covid_weights

HOUR = 60
DAY = 1440
# Admissions per hour of the day (UTC) by priority: emergencies peak in the afternoon, elective
# admissions arrive in the morning.
_EMERGENCY_PROFILE = np.array([4, 3, 3, 2, 2, 2, 3, 4, 6, 8, 9, 10, 10, 10, 10, 10, 10, 10, 9, 9, 8, 7, 6, 5],
                              dtype=float)
_ELECTIVE_PROFILE = np.array([0] * 7 + [10, 10, 8] + [0] * 14, dtype=float)


@dataclass(slots=True)
class Admission:
    """One inpatient stay. Minutes are offsets from the configured start."""

    index: int
    patient: PatientProfile
    encounter_id: str
    start: int
    diagnosis: T.Diagnosis
    phenotype: Phenotype
    priority: str
    unit: str
    previous: int | None  # the admission this one is a readmission after
    setpoint: float
    deteriorating: bool  # drawn onto a deteriorating course (setpoint raised)
    ceiling_of_care: bool  # ICU not offered: fewer transfers, more ward deaths
    covariates: tuple[float, float, float]  # log-hazard shifts: ICU, death, discharge
    start_severity: float
    wearable: bool
    # Filled by the course simulation:
    severity: np.ndarray = field(default_factory=lambda: np.zeros(0))  # s_k per hour
    location: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    x_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    segment: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    setpoints: list[float] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)  # (exact minute, kind)
    outcome: int = 0
    end_exact: float | None = None  # minute of discharge or death (None: still in hospital)
    disposition: str | None = None
    readmit_at: int | None = None  # planned readmission minute (may lie beyond the window)
    vitals: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    vitals_on_ward: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    prior_ed_visits: list[tuple[int, int]] = field(default_factory=list)  # (start, end) minutes, index only

    @property
    def reference(self) -> str:
        return f"Encounter/{self.encounter_id}"

    @property
    def first_minute(self) -> int:
        """When this admission's patient first appears (an earlier ED visit, or the admission)."""
        return min([self.start] + [s for s, _ in self.prior_ed_visits])

    @property
    def end(self) -> int | None:
        """The whole minute at which the stay ends: events are recorded at the next whole minute, so
        that a vitals set at minute m is always taken before an event that happens after m."""
        return None if self.end_exact is None else math.ceil(self.end_exact)

    def hour_of(self, minute: int | np.ndarray) -> int | np.ndarray:
        return (minute - self.start) // HOUR

    def location_at(self, minute: float) -> int:
        where = WARD
        for at, kind in self.events:
            if at > minute:
                break
            if kind == "icu":
                where = INTENSIVE_CARE
            elif kind == "stepdown":
                where = WARD
        return where

    def deterioration_times(self) -> list[float]:
        """Exact minutes of ICU transfers and of death on the ward."""
        out = []
        for at, kind in self.events:
            if kind == "icu" or (kind == "death" and self.location_at(at - 1e-9) == WARD):
                out.append(at)
        return out


@dataclass(frozen=True, slots=True)
class RiskTable:
    """Ground truth at every ward vitals set in the window (arrays of equal length, time-ordered)."""

    minute: np.ndarray
    admission: np.ndarray
    hours_since_admission: np.ndarray
    severity: np.ndarray
    setpoint: np.ndarray
    risk: np.ndarray
    label: np.ndarray  # ICU transfer or death within the next 24 h

    def __len__(self) -> int:
        return len(self.minute)


@dataclass(frozen=True, slots=True)
class AdmissionCoefficients:
    """How an admission's covariates set its latent course (docs/simulator.md, "Admission")."""

    deteriorate_base: float = -2.6  # log-odds of a deteriorating course
    deteriorate_per_decade: float = 0.3
    deteriorate_per_charlson: float = 0.2
    deteriorate_per_severity_shift: float = 1.5
    deteriorate_readmission: float = 0.4
    deteriorate_rise: float = 3.3  # setpoint rise of a deteriorating course
    deteriorate_rise_sd: float = 0.5
    setpoint_base: float = -1.5
    setpoint_per_decade: float = 0.12
    setpoint_per_charlson: float = 0.1
    setpoint_readmission: float = 0.3
    setpoint_sd: float = 0.5
    acuity_per_charlson: float = 0.12
    acuity_sd: float = 0.5
    ceiling_share: float = 0.6  # of the very old or demented, share with a ceiling of care (no ICU)
    ceiling_icu: float = -2.5
    ceiling_death: float = 1.3
    death_per_decade: float = 0.3
    death_per_charlson: float = 0.08
    discharge_elective: float = 0.3
    discharge_per_decade: float = -0.1
    readmit_base: float = -2.5  # log-odds of a readmission within 30 days of a live discharge
    readmit_per_charlson: float = 0.22
    readmit_per_ed_visit: float = 0.3
    readmit_aged_75: float = 0.4
    readmit_unresolved: float = 0.3  # severity still above -0.5 at discharge


@dataclass(slots=True)
class HospitalPlan:
    config: SimulationConfig
    params: LatentParameters
    coefficients: AdmissionCoefficients
    patients: list[PatientProfile]
    admissions: list[Admission]
    risk: RiskTable
    window: int  # minutes

    def admissions_of(self, patient: PatientProfile) -> list[Admission]:
        return [a for a in self.admissions if a.patient.index == patient.index]


def _sample_minutes(rng: np.random.Generator, n: int, window: int, profile: np.ndarray,
                    minute_of_day_at_start: int) -> np.ndarray:
    """Minutes in [0, window) with a daily rhythm given by `profile` (weights per UTC hour)."""
    out = np.zeros(0, dtype=np.int64)
    accept = profile / profile.max()
    while len(out) < n:
        draw = rng.integers(0, window, size=max(2 * n, 16))
        hour = ((draw + minute_of_day_at_start) % DAY) // HOUR
        keep = draw[rng.random(len(draw)) < accept[hour]]
        out = np.concatenate([out, keep])
        if window < DAY and accept[((np.arange(window) + minute_of_day_at_start) % DAY) // HOUR].max() == 0:
            accept = np.ones(24)  # a window too short for the profile: admit at any hour
    return out[:n]


def _diagnosis_weights(patient: PatientProfile, covid_weight: float) -> np.ndarray:
    weights = np.array([d.weight for d in T.DIAGNOSES], dtype=float)
    for j, d in enumerate(T.DIAGNOSES):
        if d.code == T.COVID_CODE:
            weights[j] *= covid_weight
        if d.comorbidity_link and patient.has(d.comorbidity_link):
            weights[j] *= 3.0
    return weights / weights.sum()


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


class Planner:
    """Builds a HospitalPlan from a config; see the module docstring."""

    def __init__(self, config: SimulationConfig, params: LatentParameters | None = None,
                 coefficients: AdmissionCoefficients | None = None) -> None:
        self.config = config
        self.params = params or LatentParameters()
        self.coefficients = coefficients or AdmissionCoefficients()
        self.chain = SeverityChain(self.params)
        self.window = config.window_minutes
        self.start_minute_of_day = config.start.hour * 60 + config.start.minute
        self._ed_visits: dict[int, int] = {}  # patient index -> ED visits before the index admission

    def plan(self) -> HospitalPlan:
        cfg = self.config
        patients = draw_population(cfg)
        covid = state_covid_weights(cfg.seed)
        rng = rng_for(cfg.seed, READMISSION, 0)

        starts, first_dx = self._index_starts(rng, patients, covid)
        admissions: list[Admission] = []
        pending: list[tuple[PatientProfile, int, int | None, T.Diagnosis | None]] = [
            (p, int(starts[p.index]), None, first_dx[p.index]) for p in patients]
        round_no = 0
        while pending:
            batch = [self._admit(len(admissions) + j, patient, start, previous, dx, rng, covid)
                     for j, (patient, start, previous, dx) in enumerate(pending)]
            self._run_courses(batch, round_no)
            admissions.extend(batch)
            pending = []
            for adm in batch:
                self._plan_readmission(adm, rng)
                if adm.readmit_at is not None and adm.readmit_at < self.window:
                    pending.append((adm.patient, adm.readmit_at, adm.index, None))
            round_no += 1
        ids = uuids(rng_for(cfg.seed, IDENTIFIERS, 1), len(admissions))
        for adm, encounter_id in zip(admissions, ids, strict=True):
            adm.encounter_id = encounter_id
        for adm in admissions:
            self._schedule_vitals(adm)
        risk = self._risk_table(admissions)
        return HospitalPlan(cfg, self.params, self.coefficients, patients, admissions, risk, self.window)

    # --- who is admitted when -----------------------------------------------------------------
    def _index_starts(self, rng: np.random.Generator, patients: list[PatientProfile],
                      covid: dict[str, float]) -> tuple[np.ndarray, list[T.Diagnosis]]:
        """Each patient's index admission: its diagnosis, then an arrival time that suits its priority."""
        n = len(patients)
        emergency = _sample_minutes(rng, n, self.window, _EMERGENCY_PROFILE, self.start_minute_of_day)
        elective = _sample_minutes(rng, n, self.window, _ELECTIVE_PROFILE, self.start_minute_of_day)
        covid_weight = self.config.population_shift.covid_weight
        starts = np.empty(n, dtype=np.int64)
        diagnoses: list[T.Diagnosis] = []
        for p in patients:
            w = _diagnosis_weights(p, covid_weight * covid[p.state])
            dx = T.DIAGNOSES[int(rng.choice(len(T.DIAGNOSES), p=w))]
            diagnoses.append(dx)
            starts[p.index] = elective[p.index] if dx.priority == "EL" else emergency[p.index]
        return starts, diagnoses

    def _admit(self, index: int, patient: PatientProfile, start: int, previous: int | None,
               dx: T.Diagnosis | None, rng: np.random.Generator, covid: dict[str, float]) -> Admission:
        shift = self.config.population_shift
        severity_shift = shift.severity
        if dx is None:
            w = _diagnosis_weights(patient, shift.covid_weight * covid[patient.state])
            dx = T.DIAGNOSES[int(rng.choice(len(T.DIAGNOSES), p=w))]
            if dx.priority == "EL":
                dx = T.DIAGNOSES[0]  # readmissions are unplanned
        c = self.coefficients
        decade = (patient.age - 65.0) / 10.0
        cci = min(patient.charlson, 6)
        z = rng.standard_normal(3)
        readmit = 0.0 if previous is None else 1.0
        p_det = _sigmoid(c.deteriorate_base + dx.deteriorate_logit + c.deteriorate_per_decade * decade
                         + c.deteriorate_per_charlson * cci
                         + c.deteriorate_per_severity_shift * severity_shift
                         + c.deteriorate_readmission * readmit)
        deteriorating = bool(rng.random() < p_det)
        setpoint = (c.setpoint_base + dx.setpoint + c.setpoint_per_decade * decade
                    + c.setpoint_per_charlson * cci + severity_shift + c.setpoint_readmission * readmit
                    + c.setpoint_sd * z[0]
                    + (c.deteriorate_rise + c.deteriorate_rise_sd * z[1] if deteriorating else 0.0))
        start_severity = dx.acuity + severity_shift + c.acuity_per_charlson * cci + c.acuity_sd * z[2]
        ceiling = bool((patient.age >= 88 or (patient.has("dementia") and patient.age >= 75))
                       and rng.random() < c.ceiling_share)
        icu_shift = c.ceiling_icu if ceiling else 0.0
        death_shift = (c.death_per_decade * decade + c.death_per_charlson * cci
                       + (c.ceiling_death if ceiling else 0.0))
        discharge_shift = (c.discharge_elective if dx.priority == "EL" else 0.0) \
            + c.discharge_per_decade * max(decade, 0.0)
        wearable = bool(rng.random() < self.config.wearable_share)
        ph = Phenotype(dx.respiratory, dx.circulatory, dx.inflammatory)
        adm = Admission(
            index=index, patient=patient, encounter_id="", start=start, diagnosis=dx, phenotype=ph,
            priority=dx.priority if previous is None else "EM", unit=dx.unit, previous=previous,
            setpoint=setpoint, deteriorating=deteriorating, ceiling_of_care=ceiling,
            covariates=(icu_shift, death_shift, discharge_shift), start_severity=start_severity,
            wearable=wearable,
        )
        if previous is None:
            self._history(adm)
        return adm

    # --- the latent courses ------------------------------------------------------------------
    def _run_courses(self, batch: list[Admission], round_no: int) -> None:
        horizon_end = self.window + self.params.horizon_hours * HOUR
        hours = np.array([math.ceil((horizon_end - a.start) / HOUR) + 1 for a in batch], dtype=np.int64)
        setpoint = np.array([a.setpoint for a in batch])
        start_x = self.chain.index_of(np.array([a.start_severity for a in batch]) - setpoint)
        cov = Covariates(*(np.array([a.covariates[j] for a in batch]) for j in range(3)))
        rng = rng_for(self.config.seed, COURSES, round_no)
        courses = simulate_courses(self.chain, rng, start_x, setpoint, cov, hours)
        for i, adm in enumerate(batch):
            n = int(courses.hours[i])
            adm.x_index = courses.x[i, :n].copy()
            adm.location = courses.location[i, :n].copy()
            adm.segment = courses.segment[i, :n].copy()
            adm.setpoints = courses.setpoints[i]
            adm.severity = courses.severity(i)
            adm.events = [(adm.start + HOUR * h, kind) for h, kind in courses.events[i]]
            adm.outcome = int(courses.outcome[i])
            if adm.outcome != 0:
                adm.end_exact = adm.start + HOUR * float(courses.end_hours[i])

    def _plan_readmission(self, adm: Admission, rng: np.random.Generator) -> None:
        """Discharge disposition, and whether (and when) the patient comes back within 30 days."""
        p = adm.patient
        if adm.outcome == DIED:
            adm.disposition = "exp"
            return
        if adm.outcome != DISCHARGED or adm.end is None:
            return
        u = rng.random(3)
        if adm.diagnosis.code.startswith("S72") and u[0] < 0.45:
            adm.disposition = "rehab"
        elif p.age >= 80 and u[0] < 0.3:
            adm.disposition = "snf"
        elif u[0] > 0.97:
            adm.disposition = "other-hcf"
        else:
            adm.disposition = "home"
        c = self.coefficients
        chance = _sigmoid(c.readmit_base + c.readmit_per_charlson * min(p.charlson, 6)
                          + c.readmit_per_ed_visit * min(self._ed_visits.get(p.index, 0), 3)
                          + (c.readmit_aged_75 if p.age >= 75 else 0.0)
                          + c.readmit_unresolved * float(adm.severity[-1] > -0.5))
        if u[1] < chance:
            days = 0.5 + 29.5 * float(rng.beta(0.8, 2.6))
            adm.readmit_at = adm.end + round(days * DAY)

    def _history(self, adm: Admission) -> None:
        """Emergency-department visits in the 180 days before an index admission (LACE's E).

        Each visit ends more than 30 days before the next encounter starts, so that no visit (nor the
        index admission) reads as a 30-day readmission after it; visits that do not fit are dropped.
        """
        drawn = adm.patient.prior_ed_visits
        if drawn == 0:
            return
        rng = rng_for(self.config.seed, HISTORY, adm.index)
        starts = np.sort(adm.start - rng.integers(32 * DAY, 180 * DAY, size=drawn))[::-1]
        lengths = rng.integers(2 * HOUR, 9 * HOUR, size=drawn)
        kept: list[tuple[int, int]] = []
        following = adm.start
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            if following - (start + length) > 30 * DAY:
                kept.append((start, start + length))
                following = start
        adm.prior_ed_visits = kept[::-1]
        self._ed_visits[adm.patient.index] = len(kept)

    # --- vitals schedule and ground truth ------------------------------------------------------
    def _schedule_vitals(self, adm: Admission) -> None:
        """Vitals every 1-4 h on the ward (more often when sicker), hourly in the ICU, and soon after
        every move. Only inside the window and before the stay ends."""
        rng = rng_for(self.config.seed, SCHEDULE, adm.index)
        stop = float(self.window) if adm.end_exact is None else min(float(self.window), adm.end_exact)
        moves = [math.ceil(at) for at, kind in adm.events if kind in ("icu", "stepdown")]
        times: list[int] = []
        ward: list[bool] = []
        v = adm.start + int(rng.integers(5, 31))
        while v < stop:
            where = adm.location_at(v)
            times.append(v)
            ward.append(where == WARD)
            if where == INTENSIVE_CARE:
                gap = HOUR + int(rng.integers(-5, 6))
            else:
                load = float(softplus(adm.severity[adm.hour_of(v)]))
                gap = HOUR if load >= 2.2 else 2 * HOUR if load >= 1.2 else 4 * HOUR
                gap += int(rng.integers(-15, 16))
            following = v + gap
            for move in moves:
                if v < move + 10 <= following:
                    following = move + 10
                    break
            v = following
        adm.vitals = np.array(times, dtype=np.int64)
        adm.vitals_on_ward = np.array(ward, dtype=bool)

    def _risk_table(self, admissions: list[Admission]) -> RiskTable:
        horizon = self.params.horizon_hours * HOUR
        seg_ids: dict[tuple[int, int], int] = {}
        seg_mu: list[float] = []
        seg_cov: list[tuple[float, float, float]] = []
        names = ("minute", "adm", "hours", "s", "mu", "seg", "x", "frac", "label")
        cols: dict[str, list[np.ndarray]] = {k: [] for k in names}
        for adm in admissions:
            rows = adm.vitals[adm.vitals_on_ward]
            if rows.size == 0:
                continue
            offset = rows - adm.start
            k = offset // HOUR
            seg_local = adm.segment[k]
            seg_global = np.empty(len(rows), dtype=np.int64)
            for j, s_local in enumerate(seg_local.tolist()):
                key = (adm.index, s_local)
                if key not in seg_ids:
                    seg_ids[key] = len(seg_mu)
                    seg_mu.append(adm.setpoints[s_local])
                    seg_cov.append(adm.covariates)
                seg_global[j] = seg_ids[key]
            events = np.array(adm.deterioration_times() or [np.inf])
            # the first deterioration strictly after each row, within the horizon
            after = np.where(events[None, :] > rows[:, None], events[None, :], np.inf).min(axis=1)
            cols["minute"].append(rows)
            cols["adm"].append(np.full(len(rows), adm.index))
            cols["hours"].append(offset / HOUR)
            cols["s"].append(adm.severity[k])
            cols["mu"].append(np.asarray(adm.setpoints)[seg_local])
            cols["seg"].append(seg_global)
            cols["x"].append(adm.x_index[k].astype(np.int64))
            cols["frac"].append((offset % HOUR) / HOUR)
            cols["label"].append(after - rows <= horizon)
        if not seg_mu:
            empty = np.zeros(0)
            return RiskTable(empty.astype(np.int64), empty.astype(np.int64), empty, empty, empty, empty,
                             empty.astype(bool))
        flat = {k: np.concatenate(v) for k, v in cols.items()}
        cov = np.array(seg_cov)
        oracle = OracleRisk(self.chain, np.array(seg_mu), Covariates(cov[:, 0], cov[:, 1], cov[:, 2]))
        risk = oracle.risk(flat["seg"], flat["x"], flat["frac"])
        order = np.lexsort((flat["adm"], flat["minute"]))
        return RiskTable(flat["minute"][order], flat["adm"][order], flat["hours"][order], flat["s"][order],
                         flat["mu"][order], risk[order], flat["label"][order])
