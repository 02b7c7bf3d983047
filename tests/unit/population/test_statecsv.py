"""The imported CSV: good rows kept, bad rows quarantined by row and column, never by value."""

from __future__ import annotations

from pathlib import Path

import pytest

from carecast.errors import InputError
from carecast.population import parse_state_csv, read_state_csv

HEADER = "State,Date,Total Cases,Total Deaths,Total Hospitalizations,Population\n"


def test_good_rows_are_kept_with_state_codes() -> None:
    data = parse_state_csv(HEADER + "Ohio,2021-01-02,200,4,20,11799448\n"
                                    "tx,01/03/2021,\"3,000\",60,,29145505\n"
                                    "District of Columbia,2021-01-02T00:00:00,10.0,0,1,689545\n")
    assert data.problems == []
    rows = data.rows.set_index("state")
    assert list(rows.index) == ["OH", "TX", "DC"]
    assert rows.loc["TX", "cases"] == 3000 and rows.loc["TX", "date"].isoformat()[:10] == "2021-01-03"
    assert rows.loc["DC", "cases"] == 10
    assert rows["hospitalizations"].isna().tolist() == [False, True, False]  # blank stays blank
    assert rows.loc["OH", "row"] == 2


@pytest.mark.parametrize(("line", "column", "reason"), [
    ("Atlantis,2021-01-02,1,0,0,1000", "State", "not a US state"),
    ("OH,2021-13-45,1,0,0,1000", "Date", "not a date"),
    ("OH,,1,0,0,1000", "Date", "empty"),
    ("OH,2021-01-02,,0,0,1000", "Total Cases", "empty"),
    ("OH,2021-01-02,eleven,0,0,1000", "Total Cases", "not a number"),
    ("OH,2021-01-02,-5,0,0,1000", "Total Cases", "negative"),
    ("OH,2021-01-02,5.5,0,0,1000", "Total Cases", "whole number"),
    ("OH,2021-01-02,nan,0,0,1000", "Total Cases", "finite"),
    ("OH,2021-01-02,5,6,0,1000", "Total Deaths", "exceeds Total Cases"),
    ("OH,2021-01-02,5,1,7,1000", "Total Hospitalizations", "exceeds Total Cases"),
    ("OH,2021-01-02,5,1,1,0", "Population", "zero"),
    ("OH,2021-01-02,5000,1,1,1000", "Total Cases", "exceeds Population"),
    ("OH,2021-01-02,5,1,1", None, "has 5 fields"),
])
def test_bad_row_is_quarantined_and_good_rows_kept(line: str, column: str | None, reason: str) -> None:
    data = parse_state_csv(HEADER + "VT,2021-01-02,50,1,5,643077\n" + line + "\n")
    assert len(data.rows) == 1 and data.rows.iloc[0]["state"] == "VT"
    [problem] = data.problems
    assert problem.row == 3 and problem.column == column and reason in problem.reason


def test_problems_never_echo_the_value() -> None:
    data = parse_state_csv(HEADER + "Zyxwvutland,2021-01-02,1,0,0,1000\nOH,2021-01-02,Quillamena,0,0,1000\n")
    text = " ".join(p.describe() for p in data.problems)
    assert "row 2 column State" in text and "row 3 column Total Cases" in text
    assert "Zyxwvutland" not in text and "Quillamena" not in text


def test_repeated_state_and_date_is_quarantined() -> None:
    data = parse_state_csv(HEADER + "OH,2021-01-02,5,1,1,1000\n\nOhio,2021-01-02,6,1,1,1000\n")
    assert len(data.rows) == 1 and data.rows.iloc[0]["cases"] == 5
    [problem] = data.problems
    assert problem.row == 4 and problem.column == "Date" and "row 2" in problem.reason


def test_header_is_matched_whatever_the_case_and_order() -> None:
    data = parse_state_csv("population, total deaths ,STATE,date,Total Cases,total hospitalizations\n"
                           "643077,1,VT,2021-01-02,50,5\n")
    assert data.problems == [] and data.rows.iloc[0]["population"] == 643077


def test_missing_column_fails_the_file() -> None:
    with pytest.raises(InputError, match="Total Hospitalizations"):
        parse_state_csv("State,Date,Total Cases,Total Deaths,Population\nOH,2021-01-02,5,1,1000\n")
    with pytest.raises(InputError, match="empty"):
        parse_state_csv("")


def test_read_file_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "states.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "VT,2021-01-02,50,1,5,643077\n").encode())
    assert read_state_csv(path).label == "states.csv" and len(read_state_csv(path).rows) == 1
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="UTF-8"):
        read_state_csv(path)
