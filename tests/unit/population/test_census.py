"""The shipped state populations: complete, summing to the published total, and their source named."""

from __future__ import annotations

import doctest
import importlib

import pytest

from carecast.domain.geography import STATES
from carecast.population import load_state_populations

US_RESIDENT_POPULATION_2020 = 331_449_281  # 50 states + DC, 2020 Census apportionment release


def test_fifty_states_dc_and_puerto_rico() -> None:
    pops = load_state_populations()
    expected = set(STATES) - {"GU", "VI", "AS", "MP"}
    assert set(pops.by_state) == expected and len(expected) == 52
    assert all(n > 100_000 for n in pops.by_state.values())


def test_states_and_dc_sum_to_the_published_total() -> None:
    pops = load_state_populations()
    assert sum(n for code, n in pops.by_state.items() if code != "PR") == US_RESIDENT_POPULATION_2020
    assert pops.get("PR") == 3_285_874 and pops.get("CA") == 39_538_223 and pops.get("GU") is None


def test_source_is_named() -> None:
    source = load_state_populations().source
    assert "U.S. Census Bureau" in source and "2020 Census" in source and "Table 2" in source


@pytest.mark.parametrize("module", ["carecast.population.census", "carecast.population.rates",
                                    "carecast.population.regression"])
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
