"""The admitted population: configuration checks, shifts, geography and identifiers."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from carecast.simulate import SHIFTS, SimulationConfig
from carecast.simulate.population import draw_population


def test_older_shift_moves_the_age_distribution() -> None:
    base = np.array([p.age for p in draw_population(SimulationConfig(seed=1, patients=800))])
    older = np.array([p.age for p in draw_population(SimulationConfig(seed=1, patients=800, shift="older"))])
    assert older.mean() - base.mean() > 8.0
    assert np.median(older) > np.median(base)


def test_sicker_shift_raises_comorbidity() -> None:
    base = np.mean([p.charlson for p in draw_population(SimulationConfig(seed=2, patients=800))])
    shifted = draw_population(SimulationConfig(seed=2, patients=800, shift="sicker"))
    sicker = np.mean([p.charlson for p in shifted])
    assert sicker > base


def test_states_follow_population_and_ids_are_unique() -> None:
    patients = draw_population(SimulationConfig(seed=4, patients=3000))
    states = Counter(p.state for p in patients)
    assert len(states) > 40
    assert states["CA"] > states["TX"] > states["WY"]
    assert len({p.id for p in patients}) == len({p.mrn for p in patients}) == 3000
    ages = [p.age for p in patients]
    assert min(ages) >= 18 and max(ages) <= 101
    start = SimulationConfig().start.date()
    for p in patients[:200]:
        whole_years = start.year - p.birth_date.year - ((start.month, start.day) < (p.birth_date.month,
                                                                                     p.birth_date.day))
        assert whole_years == int(p.age)


@pytest.mark.parametrize("kwargs", [
    {"patients": 0}, {"seed": -1}, {"days": 0}, {"wearable_share": 1.5}, {"shift": "younger"},
    {"start": datetime(2026, 1, 5)},
])
def test_invalid_configs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SimulationConfig(**kwargs)


def test_start_is_normalised_to_utc() -> None:
    config = SimulationConfig(start=datetime(2026, 1, 5, 1, 0, tzinfo=timezone(timedelta(hours=1))))
    assert config.start == datetime(2026, 1, 5, tzinfo=SimulationConfig().start.tzinfo)
    assert config.start.utcoffset() == timedelta(0)
    assert set(SHIFTS) >= {"older", "sicker"}
