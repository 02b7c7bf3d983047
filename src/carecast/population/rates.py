"""Per-state totals and their rates per 100,000 population.

The original analysis summed per-100K rates of cumulative totals over every date and then divided by
the population a second time. Cumulative totals already hold every earlier day, so here each state
contributes its LATEST cumulative value, divided by its population ONCE.
"""

from __future__ import annotations

import pandas as pd

from carecast.domain.geography import STATES
from carecast.population.census import StatePopulations, load_state_populations

PER = 100_000
METRICS = ("cases", "hospitalizations", "deaths")
RATE_COLUMNS = {m: f"{m}_per_100k" for m in METRICS}
RATES_FRAME = ("state", "name", "as_of", "population", *METRICS, *RATE_COLUMNS.values())


def latest_totals(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per state: the cumulative totals and population of its latest date (`as_of`).

    `rows` has the columns state, date, cases, deaths, hospitalizations, population (as read by
    `carecast.population.statecsv`), at most one row per state and date, in any order. A blank
    hospitalisation total on the latest date stays blank: it is not filled from an older date.
    """
    ordered = rows.sort_values(["state", "date"], kind="stable")
    last = ordered.groupby("state", sort=True).tail(1)
    out = pd.DataFrame({
        "state": last["state"].to_numpy(),
        "as_of": last["date"].to_numpy(),
        "population": last["population"].to_numpy(dtype="int64"),
        "cases": last["cases"].to_numpy(dtype="int64"),
        "hospitalizations": pd.array(last["hospitalizations"], dtype="Int64"),
        "deaths": last["deaths"].to_numpy(dtype="int64"),
    })
    return out.reset_index(drop=True)


def rates_per_100k(totals: pd.DataFrame) -> pd.DataFrame:
    """Add each total's rate per 100,000 population (normalised once). `totals` has the columns state,
    population, cases, hospitalizations, deaths and optionally as_of; rows are sorted by state.

    >>> t = pd.DataFrame({"state": ["VT"], "population": [643077], "cases": [6431],
    ...                   "hospitalizations": [pd.NA], "deaths": [64]})
    >>> r = rates_per_100k(t).iloc[0]
    >>> round(float(r.cases_per_100k), 1), round(float(r.deaths_per_100k), 2), pd.isna(r.hospitalizations_per_100k)
    (1000.0, 9.95, True)
    """
    if (totals["population"] <= 0).any():
        raise ValueError("every state needs a positive population")
    out = pd.DataFrame({
        "state": totals["state"].astype(str).to_numpy(),
        "name": [STATES.get(code, code) for code in totals["state"]],
        "as_of": totals["as_of"].to_numpy() if "as_of" in totals else pd.NaT,
        "population": totals["population"].to_numpy(dtype="int64"),
    })
    for metric in METRICS:
        counts = pd.array(totals[metric], dtype="Int64")
        out[metric] = counts
        out[RATE_COLUMNS[metric]] = (counts.astype("Float64") * PER / out["population"].to_numpy()).astype(float)
    return out.sort_values("state", kind="stable").reset_index(drop=True)[list(RATES_FRAME)]


def totals_from_counts(counts: pd.DataFrame, populations: StatePopulations | None = None,
                       ) -> tuple[pd.DataFrame, list[dict[str, str]], int]:
    """Stored per-state patient counts -> totals with the shipped populations.

    `counts` has the columns state (code or None), cases, hospitalizations, deaths. Returns the totals
    of the states with a shipped population, the states left out (with why), and the number of
    patients counted without a state.
    """
    pops = populations or load_state_populations()
    known = counts[counts["state"].notna()]
    unknown_state = int(counts.loc[counts["state"].isna(), "cases"].sum())
    with_pop = known["state"].map(pops.get)
    excluded = [{"state": str(code), "reason": "no shipped population for this state or territory"}
                for code in known.loc[with_pop.isna(), "state"]]
    kept = known[with_pop.notna()]
    totals = pd.DataFrame({
        "state": kept["state"].astype(str).to_numpy(),
        "population": with_pop[with_pop.notna()].to_numpy(dtype="int64"),
        **{m: kept[m].to_numpy(dtype="int64") for m in METRICS},
    })
    return totals, excluded, unknown_state
