"""Outcomes in the files agree with each other, with the summary and with the ground truth."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import orjson

from carecast.simulate import SimulationSummary

from .conftest import read_ndjson

DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"


def _disposition(encounter: dict) -> str | None:
    coding = encounter.get("hospitalization", {}).get("dischargeDisposition", {}).get("coding", [{}])
    return coding[0].get("code")


def test_deaths_have_a_deceased_time_and_an_expired_disposition(medium_run: tuple[Path, SimulationSummary]
                                                                 ) -> None:
    root, summary = medium_run
    patients = {f"Patient/{p['id']}": p for p in read_ndjson(root / "Patient.ndjson")}
    inpatient = [e for e in read_ndjson(root / "Encounter.ndjson") if e["class"]["code"] == "IMP"]
    expired = [e for e in inpatient if _disposition(e) == "exp"]
    deceased = {ref for ref, p in patients.items() if "deceasedDateTime" in p}
    assert summary.n_deaths > 0
    assert len(expired) == len(deceased) == summary.n_deaths
    for encounter in expired:
        patient = patients[encounter["subject"]["reference"]]
        assert encounter["status"] == "finished"
        assert patient["deceasedDateTime"] == encounter["period"]["end"]
        assert encounter["hospitalization"]["dischargeDisposition"]["coding"][0]["system"] == DISPOSITION
    # Nobody is seen after death.
    for encounter in inpatient:
        patient = patients[encounter["subject"]["reference"]]
        if "deceasedDateTime" in patient:
            assert encounter["period"]["start"] <= patient["deceasedDateTime"]


def test_icu_transfers_appear_as_icu_locations(medium_run: tuple[Path, SimulationSummary]) -> None:
    root, summary = medium_run
    transfers = 0
    for encounter in read_ndjson(root / "Encounter.ndjson"):
        wards = [loc for loc in encounter["location"] if loc["physicalType"]["coding"][0]["code"] == "wa"]
        beds = [loc for loc in encounter["location"] if loc["physicalType"]["coding"][0]["code"] == "bd"]
        assert len(wards) == len(beds)
        for ward, bed in zip(wards, beds, strict=True):
            assert ward["period"] == bed["period"]
            assert bed["location"]["display"].split("-")[0] in {"4W", "5E", "3N", "6S", "ICU", "ED"}
        icu = [w for w in wards if w["location"]["display"] == "ICU"]
        transfers += len(icu)
        for stay in icu:
            assert stay["period"]["start"] > encounter["period"]["start"]
        if encounter["status"] == "finished":
            for loc in encounter["location"]:
                assert loc["status"] == "completed" and "end" in loc["period"]
    assert transfers == summary.n_icu_transfers > 0


def test_readmissions_are_new_encounters_of_the_same_patient(medium_run: tuple[Path, SimulationSummary]
                                                              ) -> None:
    root, summary = medium_run
    with open(root / "truth" / "encounters.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_id = {r["encounter_id"]: r for r in rows}
    readmissions = [r for r in rows if r["readmission_of"]]
    assert len(readmissions) == summary.n_readmissions > 0
    for r in readmissions:
        previous = by_id[r["readmission_of"]]
        assert previous["patient_id"] == r["patient_id"]
        assert previous["discharged"] and previous["discharged"] < r["admitted"]
        assert previous["readmitted_within_30d"] == "1"
    encounters = {e["id"] for e in read_ndjson(root / "Encounter.ndjson") if e["class"]["code"] == "IMP"}
    assert encounters == set(by_id)
    assert summary.n_admissions == len(rows)


def test_summary_json_matches_the_summary(small_run: tuple[Path, SimulationSummary]) -> None:
    root, summary = small_run
    document = orjson.loads((root / "truth" / "summary.json").read_bytes())
    expected = {k: v for k, v in summary.to_dict().items() if k != "out_dir"}
    assert document["summary"] == expected
    assert document["config"]["patients"] == 40
    with open(root / "truth" / "risk.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary.n_prediction_points
    assert all(0.0 <= float(r["true_risk_24h"]) <= 1.0 for r in rows)
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)


def test_imaging_findings_follow_respiratory_state(medium_run: tuple[Path, SimulationSummary]) -> None:
    root, _ = medium_run
    reports = list(read_ndjson(root / "DiagnosticReport.ndjson"))
    assert reports
    conclusions = {r["conclusionCode"][0]["coding"][0]["code"] for r in reports}
    assert "281900007" in conclusions  # some normal studies
    assert conclusions & {"233604007", "840539006", "19242006"}  # and some pneumonia / COVID / edema


def test_only_planned_readmissions_start_within_30_days_of_a_discharge(
        medium_run: tuple[Path, SimulationSummary]) -> None:
    """Ingestion derives 30-day readmissions from the encounters alone; the files must agree with the truth
    (earlier emergency visits are spaced so that they never read as readmissions)."""
    root, _ = medium_run
    with open(root / "truth" / "encounters.csv", encoding="utf-8") as handle:
        readmissions = {r["encounter_id"] for r in csv.DictReader(handle) if r["readmission_of"]}
    by_patient: dict[str, list[dict]] = {}
    for encounter in read_ndjson(root / "Encounter.ndjson"):
        by_patient.setdefault(encounter["subject"]["reference"], []).append(encounter)
    derived = set()
    for encounters in by_patient.values():
        encounters.sort(key=lambda e: e["period"]["start"])
        for before, after in pairwise(encounters):
            end = before["period"].get("end")
            if end is None or _disposition(before) == "exp":
                continue
            gap = datetime.fromisoformat(after["period"]["start"]) - datetime.fromisoformat(end)
            if gap <= timedelta(days=30):
                derived.add(after["id"])
    assert derived == readmissions
