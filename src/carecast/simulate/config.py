"""What to simulate: the run's configuration and the named population shifts used for drift tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class PopulationShift:
    """A change to the admitted population, relative to the baseline hospital.

    `age_years` moves the mean age; `severity` raises admission acuity and the course setpoint (in
    units of the latent severity); `comorbidity_odds` multiplies the odds of every chronic condition;
    `covid_weight` multiplies how often COVID-19 is the admission diagnosis.
    """

    age_years: float = 0.0
    severity: float = 0.0
    comorbidity_odds: float = 1.0
    covid_weight: float = 1.0


SHIFTS: dict[str, PopulationShift] = {
    "older": PopulationShift(age_years=12.0, comorbidity_odds=1.3),
    "sicker": PopulationShift(severity=0.5, comorbidity_odds=1.5),
    "covid": PopulationShift(covid_weight=4.0),
}

BASELINE = PopulationShift()


@dataclass(frozen=True)
class SimulationConfig:
    """One simulated hospital. The same config always produces byte-identical output.

    `patients` distinct patients each have one index admission that starts within
    [start, start + days); readmissions within the window are extra encounters. `wearable_share` is the
    share of admissions that wear a minute-rate device. `shift` names a population shift from `SHIFTS`
    (None: the baseline population).
    """

    seed: int = 0
    patients: int = 200
    days: float = 7.0
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)
    wearable_share: float = 0.3
    shift: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError("seed must be a non-negative integer")
        if isinstance(self.patients, bool) or not isinstance(self.patients, int) or self.patients < 1:
            raise ValueError("patients must be a positive integer")
        if not 0 < self.days <= 3660:
            raise ValueError("days must be in (0, 3660]")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if self.start.tzinfo is not UTC:
            object.__setattr__(self, "start", self.start.astimezone(UTC))
        if self.start.second or self.start.microsecond:
            raise ValueError("start must fall on a whole minute")
        if not 0.0 <= self.wearable_share <= 1.0:
            raise ValueError("wearable_share must be within [0, 1]")
        if self.shift is not None and self.shift not in SHIFTS:
            raise ValueError(f"shift must be one of {', '.join(sorted(SHIFTS))} or None")

    @property
    def population_shift(self) -> PopulationShift:
        return BASELINE if self.shift is None else SHIFTS[self.shift]

    @property
    def window_minutes(self) -> int:
        """Length of the simulated window in whole minutes."""
        return max(1, round(self.days * 1440))
