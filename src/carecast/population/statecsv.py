"""Read and validate an imported CSV of cumulative totals per state and date.

Columns (header names matched case-insensitively): State, Date, Total Cases, Total Deaths,
Total Hospitalizations, Population. Each row holds the cumulative totals of one state on one date.
A bad row is quarantined with its row number, the column at fault and why, never the value;
the good rows are kept.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import pandas as pd

from carecast.domain.geography import state_code
from carecast.errors import InputError

STATE, DATE, CASES, DEATHS, HOSPITALIZATIONS, POPULATION = (
    "State", "Date", "Total Cases", "Total Deaths", "Total Hospitalizations", "Population")
COLUMNS = (STATE, DATE, CASES, DEATHS, HOSPITALIZATIONS, POPULATION)
# The columns of the frame of good rows (`row` is the row number in the file).
FRAME_COLUMNS = ("row", "state", "date", "cases", "deaths", "hospitalizations", "population")

_DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y")
_THOUSANDS = re.compile(r"^\d{1,3}(,\d{3})+$")


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why one row was quarantined. `row` counts the header as row 1, as a spreadsheet shows it."""

    row: int
    column: str | None
    reason: str

    def describe(self) -> str:
        at = f" column {self.column}" if self.column else ""
        return f"row {self.row}{at}: {self.reason}"


@dataclass(slots=True)
class StateCsv:
    """The good rows (one per state and date, states as two-letter codes) and the quarantined ones."""

    rows: pd.DataFrame
    problems: list[RowProblem] = field(default_factory=list)
    label: str = "CSV"


class _Bad(Exception):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


def _count(text: str, column: str, *, required: bool) -> int | None:
    """A whole, non-negative count. Thousands separators ("1,234") are accepted; 12.0 is 12."""
    text = text.strip()
    if not text:
        if required:
            raise _Bad(column, "is empty")
        return None
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    try:
        number = float(text)
    except ValueError:
        raise _Bad(column, "is not a number") from None
    if not math.isfinite(number):
        raise _Bad(column, "is not a finite number")
    if number != int(number):
        raise _Bad(column, "is not a whole number")
    if number < 0:
        raise _Bad(column, "is negative")
    return int(number)


def _date(text: str) -> date:
    text = text.strip()
    if not text:
        raise _Bad(DATE, "is empty")
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    try:  # ISO 8601 with a time part: the calendar date is what counts
        return datetime.fromisoformat(text).date()
    except ValueError:
        raise _Bad(DATE, "is not a date (YYYY-MM-DD or MM/DD/YYYY)") from None


def _parse_row(cells: dict[str, str]) -> tuple[str, date, int, int, int | None, int]:
    code = state_code(cells[STATE])
    if code is None:
        raise _Bad(STATE, "is not a US state or territory code or name")
    when = _date(cells[DATE])
    cases = _count(cells[CASES], CASES, required=True)
    deaths = _count(cells[DEATHS], DEATHS, required=True)
    hospitalizations = _count(cells[HOSPITALIZATIONS], HOSPITALIZATIONS, required=False)
    population = _count(cells[POPULATION], POPULATION, required=True)
    assert cases is not None and deaths is not None and population is not None
    if population == 0:
        raise _Bad(POPULATION, "is zero")
    if deaths > cases:
        raise _Bad(DEATHS, f"exceeds {CASES}")
    if hospitalizations is not None and hospitalizations > cases:
        raise _Bad(HOSPITALIZATIONS, f"exceeds {CASES}")
    if cases > population:
        raise _Bad(CASES, f"exceeds {POPULATION}")
    return code, when, cases, deaths, hospitalizations, population


def parse_state_csv(text: str, label: str = "CSV") -> StateCsv:
    """Validate the CSV text. A missing column or an empty file fails as a whole (InputError);
    otherwise every bad row is quarantined and every good row kept."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = next(reader, None)
    if header is None:
        raise InputError(f"{label}: the file is empty")
    index = {name.strip().lower(): i for i, name in enumerate(header)}
    missing = [c for c in COLUMNS if c.lower() not in index]
    if missing:
        raise InputError(f"{label}: missing column(s) {', '.join(missing)}")
    where = {c: index[c.lower()] for c in COLUMNS}
    good: list[tuple[int, str, date, int, int, int | None, int]] = []
    problems: list[RowProblem] = []
    seen: dict[tuple[str, date], int] = {}
    for number, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue  # a blank line is not a row
        if len(cells) != len(header):
            problems.append(RowProblem(number, None, f"has {len(cells)} fields where the header has {len(header)}"))
            continue
        try:
            code, when, cases, deaths, hosp, population = _parse_row({c: cells[i] for c, i in where.items()})
        except _Bad as bad:
            problems.append(RowProblem(number, bad.column, bad.reason))
            continue
        first = seen.get((code, when))
        if first is not None:
            problems.append(RowProblem(number, DATE, f"repeats the state and date of row {first}"))
            continue
        seen[(code, when)] = number
        good.append((number, code, when, cases, deaths, hosp, population))
    rows = pd.DataFrame(good, columns=list(FRAME_COLUMNS))
    rows["hospitalizations"] = rows["hospitalizations"].astype("Int64")
    rows["date"] = pd.to_datetime(rows["date"])
    return StateCsv(rows=rows, problems=problems, label=label)


def read_state_csv(path: Path) -> StateCsv:
    """Read and validate a CSV file (UTF-8, with or without a byte-order mark)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path.name}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{path.name}: cannot be read ({type(exc).__name__})") from None
    return parse_state_csv(text, label=path.name)
