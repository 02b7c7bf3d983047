"""`carecast population report`: from an imported CSV and from the stored data."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pandas as pd
import pytest
from click.testing import CliRunner

from carecast.cli import main
from carecast.errors import ExitCode
from tests import factories as F

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CSV = """State,Date,Total Cases,Total Deaths,Total Hospitalizations,Population
Ohio,2021-01-01,1000,10,100,1000000
Ohio,2021-01-02,3000,30,300,1000000
VT,2021-01-02,200,4,20,50000
TX,2021-01-02,5000,40,500,2000000
"""


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return {"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_DATABASE_URL": database_url}


def test_report_from_csv_writes_png_and_table(tmp_path: Path) -> None:
    src = tmp_path / "states.csv"
    src.write_text(CSV)
    out = tmp_path / "reports" / "population.png"
    result = CliRunner().invoke(main, ["population", "report", "--out", str(out), "--csv", str(src)])
    assert result.exit_code == ExitCode.OK, result.output
    assert out.read_bytes().startswith(PNG_MAGIC)
    table = pd.read_csv(tmp_path / "reports" / "population.csv").set_index("state")
    assert table.loc["OH", "cases_per_100k"] == pytest.approx(300.0)  # latest total, normalised once
    assert table.loc["VT", "deaths_per_100k"] == pytest.approx(8.0)
    assert "3 states from states.csv" in result.output and "R² " in result.output and "n 3" in result.output


def test_quarantined_rows_are_listed_without_values_and_exit_partial(tmp_path: Path) -> None:
    src = tmp_path / "states.csv"
    src.write_text(CSV + "Zyxwvutland,2021-01-02,1,0,0,1000\nOH,2021-01-03,Quillamena,0,0,1000\n")
    out = tmp_path / "p.png"
    result = CliRunner().invoke(main, ["population", "report", "--out", str(out), "--csv", str(src), "--json"])
    assert result.exit_code == ExitCode.PARTIAL, result.output
    assert "row 6 column State" in result.output and "row 7 column Total Cases" in result.output
    assert "Zyxwvutland" not in result.output and "Quillamena" not in result.output
    view = json.loads(result.output[result.output.index("{"):])
    assert len(view["states"]) == 3 and [p["row"] for p in view["problems"]] == [6, 7]
    assert out.exists()


def test_nothing_to_report_and_bad_options(tmp_path: Path) -> None:
    src = tmp_path / "states.csv"
    src.write_text(CSV.splitlines()[0] + "\nAtlantis,2021-01-02,1,0,0,1000\n")
    runner = CliRunner()
    result = runner.invoke(main, ["population", "report", "--out", str(tmp_path / "p.png"), "--csv", str(src)])
    assert result.exit_code == ExitCode.NOTHING_STORED and "nothing to report" in result.output
    assert not (tmp_path / "p.png").exists()
    result = runner.invoke(main, ["population", "report", "--out", str(tmp_path / "p.csv"), "--csv", str(src)])
    assert result.exit_code == ExitCode.USAGE and ".png" in result.output
    result = runner.invoke(main, ["population", "report", "--out", str(tmp_path / "p.png"), "--csv", str(src),
                                  "--codes", "U07.1"])
    assert result.exit_code == ExitCode.USAGE and "--codes" in result.output


def test_report_from_stored_data(env: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    patients = [F.patient("p1", address=[{"state": "VT"}]), F.patient("p2", address=[{"state": "VT"}]),
                F.patient("p3", address=[{"state": "WY"}], deceasedDateTime="2026-01-20T10:00:00Z")]
    (d / "Patient.ndjson").write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in patients))
    (d / "Encounter.ndjson").write_bytes(orjson.dumps(F.encounter("e1", "p1")) + b"\n")
    conditions = [F.condition("c1", "U07.1", pid="p1"), F.condition("c2", "U07.1", pid="p2"),
                  F.condition("c3", "U07.1", pid="p3"), F.condition("c4", "J12.82", pid="p2")]
    (d / "Condition.ndjson").write_bytes(b"".join(orjson.dumps(c) + b"\n" for c in conditions))
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(d)], env=env).exit_code == ExitCode.OK

    out = tmp_path / "stored.png"
    result = runner.invoke(main, ["population", "report", "--out", str(out)], env=env)
    assert result.exit_code == ExitCode.OK, result.output
    assert "2 states from stored patients with ICD-10 U07.1" in result.output and "2020 Census" in result.output
    table = pd.read_csv(tmp_path / "stored.csv").set_index("state")
    assert table.loc["VT", "cases"] == 2 and table.loc["VT", "hospitalizations"] == 1
    assert table.loc["VT", "cases_per_100k"] == pytest.approx(2 * 100_000 / 643_077, rel=1e-5)
    assert table.loc["WY", "deaths_per_100k"] == pytest.approx(100_000 / 576_851, rel=1e-5)
    assert out.read_bytes().startswith(PNG_MAGIC)

    result = runner.invoke(main, ["population", "report", "--out", str(out), "--codes", "J12.82", "--json"], env=env)
    assert result.exit_code == ExitCode.OK, result.output
    view = json.loads(result.output)
    assert view["source"]["codes"] == ["J12.82"] and [s["state"] for s in view["states"]] == ["VT"]
    assert view["states"][0]["cases"] == 1 and view["regression"] is None


def test_bad_diagnosis_code_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["population", "report", "--out", str(tmp_path / "p.png"),
                                       "--codes", "U07.1,not-a-code"], env=env)
    assert result.exit_code == ExitCode.NOTHING_STORED and "diagnosis code 2 is not an ICD-10 code" in result.output
