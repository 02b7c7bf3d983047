"""Population health: cases, hospitalisations and deaths per 100,000 by state, and the regression of
death rate on case rate. No Flask and no SQL here: the store hands in counts, the UI and CLI render.

For a web page: `population_json(report_from_counts(state_counts(engine, codes), codes))`, with
`state_counts` from `carecast.store.population`; or `report_from_csv(read_state_csv(path))`.
"""

from carecast.population.census import StatePopulations, load_state_populations
from carecast.population.rates import latest_totals, rates_per_100k, totals_from_counts
from carecast.population.regression import OlsFit, fit_death_on_case, ols
from carecast.population.report import (
    PopulationReport,
    build_figure,
    figure_png,
    population_json,
    report_from_counts,
    report_from_csv,
    table,
    write_figure,
    write_table,
)
from carecast.population.statecsv import RowProblem, StateCsv, parse_state_csv, read_state_csv

__all__ = [
    "OlsFit", "PopulationReport", "RowProblem", "StateCsv", "StatePopulations", "build_figure",
    "figure_png", "fit_death_on_case", "latest_totals", "load_state_populations", "ols", "parse_state_csv",
    "population_json", "rates_per_100k", "read_state_csv", "report_from_counts", "report_from_csv", "table",
    "totals_from_counts", "write_figure", "write_table",
]
