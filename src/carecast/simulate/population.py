"""Who comes to the hospital: demographics, identifiers, chronic conditions and healthy baselines.

One vectorised draw per attribute over the whole population, from the population stream, so the
patients of a run depend only on the seed, the patient count and the population shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from carecast.simulate import tables as T
from carecast.simulate.config import SimulationConfig
from carecast.simulate.identifiers import IDENTIFIERS, POPULATION, REGIONS, rng_for, uuids
from carecast.simulate.physiology import draw_baselines


@dataclass(frozen=True, slots=True)
class PatientProfile:
    index: int
    id: str
    mrn: str
    ssn: str
    family: str
    given: tuple[str, ...]
    gender: str  # FHIR administrative gender
    birth_date: date
    age: float  # years, at the start of the window
    race: tuple[str | None, str]  # (OMB code or None, text)
    ethnicity: tuple[str, str]
    address_line: str
    city: str
    state: str
    postal_code: str
    phone: str
    email: str
    comorbidities: tuple[T.Comorbidity, ...]
    onset_years_ago: tuple[float, ...]  # per comorbidity
    charlson: int
    prior_ed_visits: int  # ED visits drawn for the 6 months before the index admission (plan keeps <= this)
    baseline: dict[str, float]

    @property
    def reference(self) -> str:
        return f"Patient/{self.id}"

    def has(self, key: str) -> bool:
        return any(c.key == key for c in self.comorbidities)


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def state_covid_weights(seed: int) -> dict[str, float]:
    """How much likelier (or rarer) COVID-19 admissions are in each state: a regional wave pattern."""
    rng = rng_for(seed, REGIONS)
    weights = np.exp(0.6 * rng.standard_normal(len(T.STATES)))
    return {state.code: float(w) for state, w in zip(T.STATES, weights, strict=True)}


def draw_population(config: SimulationConfig) -> list[PatientProfile]:
    shift = config.population_shift
    rng = rng_for(config.seed, POPULATION)
    n = config.patients
    start = config.start.date()

    age = np.clip(64.0 + shift.age_years + 17.0 * rng.standard_normal(n), 18.0, 101.0)
    female = rng.random(n) < 0.52
    decade = (age - 65.0) / 10.0

    has: dict[str, np.ndarray] = {}
    for c in T.COMORBIDITIES:
        logit = _logit(c.prevalence_65) + np.log(c.odds_per_decade) * decade + np.log(shift.comorbidity_odds)
        if c.key == "dementia":
            logit = logit - 4.0 * (age < 55)
        has[c.key] = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    onset = 1.0 + 15.0 * rng.random((n, len(T.COMORBIDITIES)))
    charlson = np.zeros(n, dtype=np.int64)
    for c in T.COMORBIDITIES:
        charlson += c.charlson * has[c.key]
    prior_ed = rng.poisson(0.25 + 0.2 * np.minimum(charlson, 5))

    population = np.array([s.population_millions for s in T.STATES])
    state_idx = rng.choice(len(T.STATES), size=n, p=population / population.sum())
    city_pick = rng.random(n)
    zip_pick = rng.random(n)
    zip_tail = rng.integers(1, 100, size=n)
    house = rng.integers(1, 9900, size=n)
    street = rng.integers(0, len(T.STREETS), size=n)
    suffix = rng.integers(0, len(T.STREET_SUFFIXES), size=n)
    family = rng.integers(0, len(T.FAMILY_NAMES), size=n)
    given = rng.integers(0, 40, size=(n, 2))
    has_middle = rng.random(n) < 0.35
    race_idx = rng.choice(len(T.RACES), size=n, p=[r[2] for r in T.RACES])
    eth_idx = rng.choice(len(T.ETHNICITIES), size=n, p=[e[2] for e in T.ETHNICITIES])
    area = rng.integers(201, 990, size=n)
    line = rng.integers(0, 100, size=n)
    mail_no = rng.integers(1, 100, size=n)
    ssn_parts = np.stack([rng.integers(900, 1000, n), rng.integers(1, 100, n), rng.integers(1, 10000, n)], 1)
    mrns = rng.choice(90_000_000, size=n, replace=False) + 10_000_000
    day_of_year = rng.integers(0, 365, size=n)
    baselines = draw_baselines(rng, age, female, has)
    ids = uuids(rng_for(config.seed, IDENTIFIERS), n)

    patients: list[PatientProfile] = []
    for i in range(n):
        state = T.STATES[int(state_idx[i])]
        names = T.GIVEN_FEMALE if female[i] else T.GIVEN_MALE
        given_names = (names[int(given[i, 0])],) + ((names[int(given[i, 1])],) if has_middle[i] else ())
        fam = T.FAMILY_NAMES[int(family[i])]
        zip3 = state.zip3_low + int(zip_pick[i] * (state.zip3_high - state.zip3_low + 1))
        years = int(age[i])
        birth = date(start.year - years, 1, 1) + timedelta(days=int(day_of_year[i]))
        if (birth.month, birth.day) > (start.month, start.day):  # keep the whole-year age
            birth = date(start.year - years - 1, 1, 1) + timedelta(days=int(day_of_year[i]))
        chronic = tuple(c for c in T.COMORBIDITIES if has[c.key][i])
        onset_years = tuple(float(onset[i, j]) for j, c in enumerate(T.COMORBIDITIES) if has[c.key][i])
        local = "".join(ch for ch in fam.lower() if ch.isalpha())
        patients.append(PatientProfile(
            index=i, id=ids[i], mrn=f"MRN{int(mrns[i]):08d}",
            ssn=f"{ssn_parts[i, 0]:03d}-{ssn_parts[i, 1]:02d}-{ssn_parts[i, 2]:04d}",
            family=fam, given=given_names, gender="female" if female[i] else "male",
            birth_date=birth, age=float(age[i]),
            race=(T.RACES[int(race_idx[i])][0], T.RACES[int(race_idx[i])][1]),
            ethnicity=(T.ETHNICITIES[int(eth_idx[i])][0], T.ETHNICITIES[int(eth_idx[i])][1]),
            address_line=f"{int(house[i])} {T.STREETS[int(street[i])]} {T.STREET_SUFFIXES[int(suffix[i])]}",
            city=state.cities[int(city_pick[i] * len(state.cities))], state=state.code,
            postal_code=f"{zip3:03d}{int(zip_tail[i]):02d}",
            phone=f"+1-{int(area[i])}-555-01{int(line[i]):02d}",
            email=f"{given_names[0].lower()}.{local}{int(mail_no[i])}@example.com",
            comorbidities=chronic, onset_years_ago=onset_years, charlson=int(charlson[i]),
            prior_ed_visits=int(min(prior_ed[i], 6)),
            baseline={name: float(values[i]) for name, values in baselines.items()},
        ))
    return patients
