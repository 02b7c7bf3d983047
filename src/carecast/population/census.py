"""The shipped state populations (2020 Census resident population; see data/README.md for the source)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from carecast.domain.geography import STATES

POPULATION_FILE = "state_population_2020.csv"


@dataclass(frozen=True, slots=True)
class StatePopulations:
    """Population by two-letter state code, with the source the figures come from."""

    by_state: dict[str, int]
    source: str

    def get(self, state: str) -> int | None:
        return self.by_state.get(state)


@lru_cache(maxsize=1)
def load_state_populations() -> StatePopulations:
    """The populations shipped with CareCast: 50 states, DC and Puerto Rico (2020 Census).

    >>> pops = load_state_populations()
    >>> pops.get("WY"), pops.get("PR"), len(pops.by_state)
    (576851, 3285874, 52)
    """
    text = resources.files("carecast.population").joinpath("data", POPULATION_FILE).read_text(encoding="utf-8")
    comments = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    body = "\n".join(line for line in text.splitlines() if line and not line.startswith("#"))
    by_state: dict[str, int] = {}
    for row in csv.DictReader(io.StringIO(body)):
        code = row["state"]
        if code not in STATES or STATES[code] != row["name"]:
            raise ValueError(f"{POPULATION_FILE}: unknown state code or name in the row of {code}")
        by_state[code] = int(row["population"])
    source = " ".join(comments[:3])  # the first three comment lines name the source and its vintage
    return StatePopulations(by_state=by_state, source=source)
