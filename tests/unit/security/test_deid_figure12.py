"""Figure 12: a seeded data set holding every Safe Harbor identifier kind, ingested, exported de-identified;
then every exported byte is scanned for each identifier value and pattern: 0 of the 18 kinds survive."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from carecast.jobs.ingest import ingest_paths
from carecast.security.deid import IDENTIFIER_PATTERNS, TERMINOLOGY_URI, export_deidentified
from carecast.store import Store
from tests import factories as F

S = F.SECRET_IDENTIFIERS
BIRTH_OVER_89 = "1930-05-17"  # over 89 at any export date after mid-2020
RESTRICTED_ZIP = "03601"  # 036 holds 20,000 people or fewer: must become 000
EVERY = " ".join(f"{k}: {v}" for k, v in S.items())  # every identifier in one free text

# The 18 kinds of 45 CFR 164.514(b)(2)(i), each with the seeded values that stand for it.
KINDS: dict[str, list[str]] = {
    "A names": [S["family"], S["given"]],
    "B geography below state": [S["line"], S["city"], S["postal"], RESTRICTED_ZIP],
    "C dates (except year), ages over 89": [S["birth"], BIRTH_OVER_89, "2026-01-05", "1930"],
    "D telephone numbers": [S["phone"]],
    "E fax numbers": [S["fax"]],
    "F email addresses": [S["email"]],
    "G social security numbers": [S["ssn"]],
    "H medical record numbers": [S["mrn"]],
    "I health plan beneficiary numbers": [S["plan"]],
    "J account numbers": [S["account"]],
    "K certificate/licence numbers": [S["licence"], S["certificate"]],
    "L vehicle identifiers": [S["vehicle"]],
    "M device identifiers and serials": [S["device"]],
    "N URLs": [S["url"]],
    "O IP addresses": [S["ip"]],
    "P biometric identifiers": [S["biometric"]],
    "Q full-face photographs": [S["photo"]],
    "R any other unique code": [S["unique"], S["accession"], S["study_uid"], S["series_uid"], "Patient/p1"],
}
PATTERN_OF_KIND = {"D telephone numbers": "phone", "E fax numbers": "phone", "F email addresses": "email",
                   "G social security numbers": "ssn", "N URLs": "url", "O IP addresses": "ip",
                   "C dates (except year), ages over 89": "date"}


def _identified_patient() -> dict[str, Any]:
    res = F.patient("p1", mrn=S["mrn"], birthDate=BIRTH_OVER_89)
    res["identifier"] += [
        {"type": {"coding": [{"code": "AN"}]}, "system": "urn:acct", "value": S["account"]},
        {"type": {"coding": [{"code": "MB"}]}, "system": "urn:plan", "value": S["plan"]},
        {"type": {"coding": [{"code": "DL"}]}, "system": "urn:dl", "value": S["licence"]},
        {"system": "urn:cert", "value": S["certificate"]}, {"system": "urn:vin", "value": S["vehicle"]},
        {"system": "urn:biometric", "value": S["biometric"]}, {"system": "urn:other", "value": S["unique"]},
    ]
    res["telecom"] += [{"system": "fax", "value": S["fax"]}, {"system": "url", "value": S["url"]}]
    res["photo"] = [{"contentType": "image/jpeg", "data": S["photo"], "url": S["url"]}]
    res["address"][0]["postalCode"] = RESTRICTED_ZIP
    res["extension"] = [{"url": "urn:last-login-ip", "valueString": S["ip"]}]
    return res


def seed_every_identifier(store: Store, tmp_path: Path, *, in_clear_text_columns: bool = True) -> None:
    """`in_clear_text_columns`: also put identifiers in free text the store keeps in clear (imaging and series
    descriptions, condition display), which the export must drop."""
    d = tmp_path / "seed"
    d.mkdir()
    enc = F.encounter("e1", "p1", units=(("Medical Ward 4W", "2026-01-05T08:00:00Z"),))
    enc["location"].append({"location": {"display": S["vehicle"]}, "physicalType": {"coding": [{"code": "bd"}]}})
    study = {"resourceType": "ImagingStudy", "id": "s1", "status": "available",
             "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:" + S["study_uid"]},
                            {"type": {"coding": [{"code": "ACSN"}]}, "value": S["accession"]}],
             "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
             "started": "2026-01-05T11:00:00Z",
             "description": f"CT for {S['family']} call {S['phone']}" if in_clear_text_columns else "CT chest",
             "series": [{"uid": S["series_uid"], "modality": {"code": "CT"}, "number": 1, "numberOfInstances": 40,
                         "description": f"sent to {S['email']}" if in_clear_text_columns else "axial",
                         "bodySite": {"code": "51185008",
                                                                            "display": "Chest"}}]}
    report = {"resourceType": "DiagnosticReport", "id": "r1", "status": "final",
              "category": [{"coding": [{"code": "RAD"}]}], "code": {"coding": [{"code": "24627-2"}]},
              "subject": {"reference": "Patient/p1"}, "imagingStudy": [{"reference": "ImagingStudy/s1"}],
              "issued": "2026-01-05T12:00:00Z", "conclusion": EVERY,
              "conclusionCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "233604007"}]}]}
    cond = F.condition("c1")
    cond["code"]["coding"][0]["display"] = f"{S['given']} {S['ssn']}" if in_clear_text_columns else "Diabetes"
    cond["note"] = [{"text": EVERY}]
    lines = {
        "Patient.ndjson": [_identified_patient(), F.patient("p2", mrn=S["mrn"] + "-2")],
        "Encounter.ndjson": [enc, F.encounter("e2", "p2")],
        "Observation.ndjson": [F.vital("o1", "8867-4", 88, "/min"), F.vital("o2", "8310-5", 38.2, "Cel"),
                               F.vital("o3", "8867-4", 71, "/min", pid="p2", eid="e2")],
        "Condition.ndjson": [cond], "ImagingStudy.ndjson": [study], "DiagnosticReport.ndjson": [report],
    }
    for name, resources in lines.items():
        (d / name).write_bytes(b"\n".join(orjson.dumps(r) for r in resources) + b"\n")
    (d / "w.jsonl").write_bytes(orjson.dumps({
        "device_id": S["device"], "patient": "Patient/p1", "type": "heart_rate", "value": 77, "unit": "/min",
        "time": "2026-01-05T10:00:00Z"}) + b"\n")
    summary = ingest_paths([d], store.writer())
    assert summary.total("rejected") == 0
    assert summary.total("inserted") >= 11


def _variants(value: str) -> list[bytes]:
    forms = {value, value.lower(), value.upper()}
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 7:
        forms.add(digits)
    return [f.encode() for f in forms]


def scan(out: Path, *, patterns: bool) -> dict[str, list[str]]:
    """Kinds found in any exported byte, with where (file names only)."""
    found: dict[str, list[str]] = {}
    for path in sorted(out.iterdir()):
        blob = path.read_bytes()
        text = TERMINOLOGY_URI.sub("", blob.decode("utf-8"))  # http://loinc.org names a code system, not a person
        for kind, values in KINDS.items():
            if any(v in blob for value in values for v in _variants(value)):
                found.setdefault(kind, []).append(path.name)
            pattern = PATTERN_OF_KIND.get(kind)
            if patterns and pattern and path.suffix == ".csv" and IDENTIFIER_PATTERNS[pattern].search(text):
                found.setdefault(kind, []).append(path.name + " (pattern)")
    return found


def test_figure_12_no_identifier_kind_survives_the_export(store: Store, tmp_path: Path) -> None:
    seed_every_identifier(store, tmp_path)
    out = tmp_path / "export"
    result = export_deidentified(store.engine, store.keyring, out)
    # The export is not empty: the clinical content is there.
    assert {p.name for p in out.iterdir()} >= {"patients.csv", "encounters.csv", "observations.csv",
                                               "conditions.csv", "imaging_studies.csv", "imaging_series.csv",
                                               "findings.csv", "outcomes.csv", "manifest.json"}
    assert result.manifest["tables"]["observations"]["rows"] == 4
    assert result.manifest["tables"]["findings"]["rows"] == 1
    findings = pd.read_csv(out / "findings.csv", dtype=str)
    assert findings["conclusion_codes"].tolist() == ["233604007"] and findings["study_id"].notna().all()
    survived = scan(out, patterns=True)
    print(f"\nfigure 12: {len(survived)} of {len(KINDS)} Safe Harbor identifier kinds survive the export")
    assert survived == {}
    # Year-only dates: no exported value finer than a year.
    for path in out.glob("*.csv"):
        assert not re.search(r"\d{4}-\d{2}|\d{2}:\d{2}", path.read_text()), path.name
    observations = pd.read_csv(out / "observations.csv", dtype=str)
    assert set(observations["unit"]) == {"/min", "Cel"} and set(observations["code_system"]) == {"http://loinc.org"}
    patients = pd.read_csv(out / "patients.csv", dtype=str, keep_default_na=False)
    today = date.today()
    p2_age = today.year - 1948 - ((today.month, today.day) < (2, 29))
    assert sorted(patients["age"]) == sorted([str(p2_age), "90+"])
    old = patients[patients["age"] == "90+"].iloc[0]
    assert old["birth_year"] == "" and old["zip3"] == "000"
    assert patients[patients["age"] != "90+"].iloc[0]["zip3"] == "904"


def test_shifted_export_keeps_no_original_date(store: Store, tmp_path: Path) -> None:
    seed_every_identifier(store, tmp_path)
    out = tmp_path / "export"
    export_deidentified(store.engine, store.keyring, out, dates="shift", max_shift_days=30)
    assert scan(out, patterns=False) == {}
    for path in out.glob("*.csv"):
        assert "2026-01-05" not in path.read_text()


@pytest.mark.parametrize("dates", ["year", "shift"])
def test_export_refuses_a_directory_with_files(store: Store, tmp_path: Path, dates: str) -> None:
    from carecast.errors import InputError

    out = tmp_path / "export"
    out.mkdir()
    (out / "old.csv").write_text("x\n")
    with pytest.raises(InputError):
        export_deidentified(store.engine, store.keyring, out, dates=dates)
