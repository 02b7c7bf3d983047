"""The latent physiological model: severity s(t), its hourly Markov chain, the hazards it drives, and the
Bayes-optimal 24-hour deterioration risk computed from it. Pure numpy; no FHIR, no I/O.

Per admission, on an hourly grid k = 0, 1, ... from the admission time:

    s_k = mu + x_k                                   severity = setpoint + deviation
    x_{k+1} = snap((1 - theta) x_k + sigma eps_k)    eps_k ~ N(0, 1); snap() rounds to a grid of step `step`

so x is a discretised Ornstein-Uhlenbeck process and s mean-reverts to the admission's setpoint mu.
During hour k the hazards (per hour) are constant:

    ward: h_icu   = exp(a_icu + b_icu s_k + c_icu)
          h_death = exp(a_wd  + b_wd  s_k + c_death)
          h_home  = exp(a_dis - b_dis s_k + c_dis)
    ICU:  h_death = exp(a_id  + b_id  s_k + c_death)

(c_* are the admission's covariate effects). The first event of the hour, if any, happens at
k + T with T ~ Exp(sum of hazards), and is of each kind in proportion to its hazard. Because
(x_k, mu, covariates) is Markov and the chain lives on a finite grid, P(ICU transfer or death within
24 h | state) is computed exactly by dynamic programming over the grid; see `OracleRisk`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WARD, INTENSIVE_CARE = 0, 1
ONGOING, DISCHARGED, DIED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class LatentParameters:
    """Every constant of the latent model. docs/simulator.md quotes these defaults."""

    theta: float = 0.04  # mean reversion per hour (time constant 25 h)
    sigma: float = 0.3  # innovation standard deviation per hour
    step: float = 0.1  # grid step of x
    x_low: float = -6.0
    x_high: float = 9.0
    icu_log_base: float = -8.9
    icu_slope: float = 1.3
    ward_death_log_base: float = -11.2
    ward_death_slope: float = 1.25
    icu_death_log_base: float = -7.8
    icu_death_slope: float = 0.9
    discharge_log_base: float = -5.6
    discharge_slope: float = 1.3
    icu_setpoint_drop: float = 2.5  # treatment in the ICU lowers the setpoint by this much
    stepdown_below: float = 0.0  # back to the ward after `stepdown_hours` hours with s below this
    stepdown_hours: int = 12
    horizon_hours: int = 24  # the risk horizon of the oracle and of the deterioration label
    fraction_nodes: int = 7  # interpolation nodes for a prediction time part-way through an hour


@dataclass(frozen=True, slots=True)
class Covariates:
    """Log-hazard shifts of each admission (arrays of equal length)."""

    icu: np.ndarray
    death: np.ndarray
    discharge: np.ndarray

    def take(self, index: np.ndarray) -> Covariates:
        return Covariates(self.icu[index], self.death[index], self.discharge[index])


def ward_hazards(p: LatentParameters, s: np.ndarray, cov: Covariates) -> tuple[np.ndarray, ...]:
    """Per-hour hazards of ICU transfer, death and discharge on the ward, at severity `s`."""
    h_icu = np.exp(p.icu_log_base + p.icu_slope * s + cov.icu)
    h_death = np.exp(p.ward_death_log_base + p.ward_death_slope * s + cov.death)
    h_home = np.exp(p.discharge_log_base - p.discharge_slope * s + cov.discharge)
    return h_icu, h_death, h_home


def icu_death_hazard(p: LatentParameters, s: np.ndarray, death_shift: np.ndarray) -> np.ndarray:
    return np.exp(p.icu_death_log_base + p.icu_death_slope * s + death_shift)


def softplus(s: np.ndarray | float) -> np.ndarray:
    """The severity load u = log(1 + e^s) >= 0 that vitals and labs respond to."""
    return np.logaddexp(0.0, s)


class SeverityChain:
    """The discretised OU chain of the deviation x = s - mu, shared by the simulator and the oracle."""

    def __init__(self, params: LatentParameters) -> None:
        self.params = params
        size = round((params.x_high - params.x_low) / params.step) + 1
        self.grid = params.x_low + params.step * np.arange(size)
        self.transition = self._transition_matrix()

    @property
    def size(self) -> int:
        return len(self.grid)

    def index_of(self, x: np.ndarray) -> np.ndarray:
        """Snap deviations to the nearest grid point (clipped to the grid)."""
        raw = np.rint((x - self.params.x_low) / self.params.step)
        return np.clip(raw, 0, self.size - 1).astype(np.int16)

    def step(self, index: np.ndarray, eps: np.ndarray) -> np.ndarray:
        p = self.params
        return self.index_of((1.0 - p.theta) * self.grid[index] + p.sigma * eps)

    def shift(self, index: np.ndarray, delta: float) -> np.ndarray:
        """Move x by `delta` (a whole number of grid steps), e.g. when the setpoint drops."""
        steps = round(delta / self.params.step)
        return np.clip(index.astype(np.int32) + steps, 0, self.size - 1).astype(np.int16)

    def _transition_matrix(self) -> np.ndarray:
        """P[i, j] = P(snap((1 - theta) g_i + sigma eps) = g_j), exactly what `step` samples."""
        p = self.params
        mean = (1.0 - p.theta) * self.grid
        inner = self.grid[:-1] + p.step / 2.0
        z = (inner[None, :] - mean[:, None]) / (p.sigma * math.sqrt(2.0))
        erf = np.vectorize(math.erf, otypes=[float])
        cdf = 0.5 * (1.0 + erf(z))
        cdf = np.concatenate([np.zeros((self.size, 1)), cdf, np.ones((self.size, 1))], axis=1)
        matrix = np.diff(cdf, axis=1)
        return matrix / matrix.sum(axis=1, keepdims=True)


@dataclass(slots=True)
class Courses:
    """Simulated hospital courses of a batch of admissions, hour by hour.

    `x[i, k]` is the grid index of x during hour k (-1 once the course is over), `location[i, k]` WARD or
    INTENSIVE_CARE, `segment[i, k]` which setpoint applies (`setpoints[i][segment]`). `events[i]` lists
    (hours since admission, kind) with kind in icu | stepdown | death | discharge.
    """

    x: np.ndarray
    location: np.ndarray
    segment: np.ndarray
    setpoints: list[list[float]]
    events: list[list[tuple[float, str]]]
    outcome: np.ndarray  # ONGOING | DISCHARGED | DIED
    end_hours: np.ndarray  # hours since admission when the course ended (or was cut at its horizon)
    hours: np.ndarray  # hours the course lasted (including its last, partial hour)
    grid: np.ndarray  # the chain's grid of x

    def severity(self, i: int) -> np.ndarray:
        """s_k for every hour of admission i's course."""
        n = int(self.hours[i])
        mu = np.asarray(self.setpoints[i])[self.segment[i, :n]]
        return mu + self.grid[self.x[i, :n]]


def simulate_courses(chain: SeverityChain, rng: np.random.Generator, start_x: np.ndarray,
                     setpoint: np.ndarray, cov: Covariates, hours: np.ndarray) -> Courses:
    """Run every admission of a batch forward hour by hour until discharge, death or `hours`.

    The batch is vectorised across admissions; each hour draws exactly three arrays (exponential,
    uniform, normal) for the admissions still in hospital, so the result depends only on `rng`'s state.
    """
    p = chain.params
    n = len(start_x)
    k_max = int(hours.max()) if n else 0
    xs = np.full((n, k_max), -1, dtype=np.int16)
    location = np.zeros((n, k_max), dtype=np.int8)
    segment = np.zeros((n, k_max), dtype=np.int8)
    setpoints = [[float(m)] for m in setpoint]
    events: list[list[tuple[float, str]]] = [[] for _ in range(n)]
    outcome = np.full(n, ONGOING, dtype=np.int8)
    end_hours = hours.astype(float).copy()

    x = start_x.astype(np.int16).copy()
    mu = setpoint.astype(float).copy()
    loc = np.zeros(n, dtype=np.int8)
    seg = np.zeros(n, dtype=np.int8)
    low_hours = np.zeros(n, dtype=np.int32)
    active = np.ones(n, dtype=bool)
    drop = p.icu_setpoint_drop

    for k in range(k_max):
        live = np.flatnonzero(active & (k < hours))
        if live.size == 0:
            break
        xs[live, k] = x[live]
        location[live, k] = loc[live]
        segment[live, k] = seg[live]
        s = mu[live] + chain.grid[x[live]]
        on_ward = loc[live] == WARD
        sub = cov.take(live)
        h_icu, h_ward_death, h_home = ward_hazards(p, s, sub)
        h_icu_death = icu_death_hazard(p, s, sub.death)
        h_icu = np.where(on_ward, h_icu, 0.0)
        h_death = np.where(on_ward, h_ward_death, h_icu_death)
        h_home = np.where(on_ward, h_home, 0.0)
        total = h_icu + h_death + h_home
        wait = rng.standard_exponential(live.size) / total
        pick = rng.random(live.size) * total
        eps = rng.standard_normal(live.size)

        happens = wait < 1.0
        to_icu = happens & (pick < h_icu)
        dies = happens & ~to_icu & (pick < h_icu + h_death)  # the rest of `happens` go home
        for j in np.flatnonzero(happens):
            i = int(live[j])
            when = k + float(wait[j])
            if to_icu[j]:
                events[i].append((when, "icu"))
            elif dies[j]:
                events[i].append((when, "death"))
                outcome[i], end_hours[i], active[i] = DIED, when, False
            else:
                events[i].append((when, "discharge"))
                outcome[i], end_hours[i], active[i] = DISCHARGED, when, False

        # Step-down is decided at the end of the hour and takes effect at the next hour boundary.
        in_icu = ~on_ward & ~happens
        low = np.where(in_icu & (s < p.stepdown_below), low_hours[live] + 1, 0)
        low_hours[live] = low
        steps_down = in_icu & (low >= p.stepdown_hours)

        x_next = chain.step(x[live], eps)
        moved = np.flatnonzero(to_icu)
        if moved.size:
            # The setpoint drops by the treatment effect; x shifts up by as much so s stays continuous.
            x_next[moved] = chain.shift(x_next[moved], drop)
            for j in moved:
                i = int(live[j])
                mu[i] -= drop
                setpoints[i].append(float(mu[i]))
                seg[i] += 1
                loc[i] = INTENSIVE_CARE
                low_hours[i] = 0
        for j in np.flatnonzero(steps_down):
            i = int(live[j])
            if k + 1 < hours[i]:
                events[i].append((float(k + 1), "stepdown"))
            loc[i] = WARD
            low_hours[i] = 0
        x[live] = x_next

    ended = outcome != ONGOING
    lasted = np.where(ended, np.floor(end_hours).astype(np.int64) + 1, hours.astype(np.int64))
    return Courses(xs, location, segment, setpoints, events, outcome, end_hours, lasted, chain.grid)


class OracleRisk:
    """P(ICU transfer or death within the horizon | ward, x, setpoint, covariates), by dynamic programming.

    For one ward segment (setpoint mu and covariates fixed), with H(x) the total hazard and
    c(x) = (h_icu + h_death) / H the share of events that are deteriorations:

        q(x, tau) = c(x) (1 - exp(-H(x) tau))          event within the first tau hours of an hour
        V_0(x; f) = q(x, f)
        V_n(x; f) = q(x, 1) + exp(-H(x)) sum_x' P[x, x'] V_{n-1}(x'; f)

    A prediction at fraction f of hour k (the deviation being x_k) then has risk

        r = q(x_k, 1 - f) + exp(-H(x_k) (1 - f)) sum_x' P[x_k, x'] V_{23}(x'; f)

    which is exact for f on the interpolation nodes and linear in between (error below 1e-4).
    """

    def __init__(self, chain: SeverityChain, setpoint: np.ndarray, cov: Covariates,
                 chunk: int = 1024) -> None:
        p = chain.params
        self.chain = chain
        self.nodes = np.linspace(0.0, 1.0, p.fraction_nodes)
        n = len(setpoint)
        self.hazard = np.empty((chain.size, n))
        self.share = np.empty((chain.size, n))
        self.ahead = np.empty((chain.size, n, len(self.nodes)))  # sum_x' P[x, x'] V_{23}(x'; f)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            self._solve(lo, hi, setpoint[lo:hi], cov.take(np.arange(lo, hi)))

    def _solve(self, lo: int, hi: int, setpoint: np.ndarray, cov: Covariates) -> None:
        p = self.chain.params
        grid, matrix = self.chain.grid, self.chain.transition
        s = setpoint[None, :] + grid[:, None]
        cov_grid = Covariates(cov.icu[None, :], cov.death[None, :], cov.discharge[None, :])
        h_icu, h_death, h_home = ward_hazards(p, s, cov_grid)
        total = h_icu + h_death + h_home
        share = (h_icu + h_death) / total
        width = hi - lo
        nodes = self.nodes
        value = share[:, :, None] * (1.0 - np.exp(-total[:, :, None] * nodes[None, None, :]))
        one_hour = (share * (1.0 - np.exp(-total)))[:, :, None]
        survive = np.exp(-total)[:, :, None]
        for _ in range(p.horizon_hours - 1):
            spread = (matrix @ value.reshape(len(grid), -1)).reshape(len(grid), width, len(nodes))
            value = one_hour + survive * spread
        ahead = matrix @ value.reshape(len(grid), -1)
        self.ahead[:, lo:hi, :] = ahead.reshape(len(grid), width, len(nodes))
        self.hazard[:, lo:hi] = total
        self.share[:, lo:hi] = share

    def risk(self, which: np.ndarray, x_index: np.ndarray, fraction: np.ndarray) -> np.ndarray:
        """Risk for prediction points of ward segment `which`, at grid index `x_index`, `fraction` of
        the way through their hour."""
        last = len(self.nodes) - 1
        pos = np.clip(fraction, 0.0, 1.0) * last
        left = np.minimum(np.floor(pos).astype(np.int64), last - 1)
        weight = pos - left
        ahead = self.ahead[x_index, which, :]
        rows = np.arange(len(which))
        later = (1.0 - weight) * ahead[rows, left] + weight * ahead[rows, left + 1]
        total = self.hazard[x_index, which]
        share = self.share[x_index, which]
        rest = 1.0 - fraction
        return share * (1.0 - np.exp(-total * rest)) + np.exp(-total * rest) * later
