"""Rates per 100,000: the latest cumulative total per state, normalised once by population."""

from __future__ import annotations

import pandas as pd
import pytest

from carecast.population import latest_totals, parse_state_csv, rates_per_100k, totals_from_counts
from carecast.population.census import StatePopulations

# Cumulative totals on three dates. Vermont's rows are out of order on purpose.
CSV = """State,Date,Total Cases,Total Deaths,Total Hospitalizations,Population
Ohio,2021-01-01,1000,10,100,1000000
Ohio,2021-01-02,3000,30,300,1000000
Ohio,2021-01-03,6000,60,,1000000
VT,2021-01-03,200,2,20,50000
VT,2021-01-01,100,1,10,50000
VT,2021-01-02,150,1,15,50000
"""


def _original_script(text: str) -> pd.Series:
    """What the project's first analysis did: a per-100K rate of each cumulative row, summed over all
    dates, then divided by the population a second time."""
    df = parse_state_csv(text).rows
    df["rate"] = df["cases"] / df["population"] * 100_000
    summed = df.groupby("state").agg(rate=("rate", "sum"), population=("population", "last"))
    return summed["rate"] / summed["population"]


def test_latest_cumulative_value_normalised_once() -> None:
    rates = rates_per_100k(latest_totals(parse_state_csv(CSV).rows)).set_index("state")
    # Hand-computed: 6000 / 1,000,000 * 100,000 = 600; 200 / 50,000 * 100,000 = 400.
    assert rates.loc["OH", "cases_per_100k"] == pytest.approx(600.0)
    assert rates.loc["VT", "cases_per_100k"] == pytest.approx(400.0)
    assert rates.loc["OH", "deaths_per_100k"] == pytest.approx(6.0)
    assert rates.loc["VT", "deaths_per_100k"] == pytest.approx(4.0)
    assert rates.loc["VT", "hospitalizations_per_100k"] == pytest.approx(40.0)
    assert pd.isna(rates.loc["OH", "hospitalizations_per_100k"])  # blank on the latest date: not filled
    assert rates.loc["VT", "as_of"] == pd.Timestamp("2021-01-03")
    assert rates.loc["OH", "name"] == "Ohio"


def test_fixed_computation_corrects_the_original_script() -> None:
    fixed = rates_per_100k(latest_totals(parse_state_csv(CSV).rows)).set_index("state")["cases_per_100k"]
    original = _original_script(CSV)
    # The original: Ohio (100 + 300 + 600) / 1,000,000 = 0.001; Vermont (200 + 300 + 400) / 50,000 = 0.018.
    assert original["OH"] == pytest.approx(0.001) and original["VT"] == pytest.approx(0.018)
    assert fixed["OH"] == pytest.approx(600.0) and fixed["VT"] == pytest.approx(400.0)
    # It even ranked the states the wrong way round.
    assert (original["VT"] > original["OH"]) and (fixed["VT"] < fixed["OH"])


def test_more_dates_of_the_same_totals_change_nothing() -> None:
    extra = CSV + "VT,2020-12-31,50,0,5,50000\nOhio,2020-12-30,10,0,1,1000000\n"
    before = rates_per_100k(latest_totals(parse_state_csv(CSV).rows))
    after = rates_per_100k(latest_totals(parse_state_csv(extra).rows))
    pd.testing.assert_frame_equal(before, after)
    assert not _original_script(extra).equals(_original_script(CSV))  # the sum over dates drifted


def test_rates_need_a_positive_population() -> None:
    with pytest.raises(ValueError, match="positive population"):
        rates_per_100k(pd.DataFrame({"state": ["OH"], "population": [0], "cases": [1],
                                     "hospitalizations": [0], "deaths": [0]}))


def test_counts_take_the_shipped_population_and_report_what_is_left_out() -> None:
    pops = StatePopulations(by_state={"OH": 200_000, "TX": 1_000_000}, source="test")
    counts = pd.DataFrame({"state": ["OH", "GU", "TX", None], "cases": [10, 3, 5, 7],
                           "hospitalizations": [4, 1, 0, 2], "deaths": [2, 0, 1, 1]})
    totals, excluded, unknown = totals_from_counts(counts, pops)
    assert totals["state"].tolist() == ["OH", "TX"] and totals["population"].tolist() == [200_000, 1_000_000]
    assert excluded == [{"state": "GU", "reason": "no shipped population for this state or territory"}]
    assert unknown == 7
    rates = rates_per_100k(totals).set_index("state")
    assert rates.loc["OH", "cases_per_100k"] == pytest.approx(5.0)
    assert rates.loc["OH", "hospitalizations_per_100k"] == pytest.approx(2.0)
    assert rates.loc["TX", "deaths_per_100k"] == pytest.approx(0.1)
