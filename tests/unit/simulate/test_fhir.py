"""Every resource line is valid FHIR R4 (checked with fhir.resources' R4B models, which keep R4's shape
for these resource types) and carries the codes and references the ingest decoder relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from carecast.domain.variables import BLOOD_PRESSURE_PANELS, LOINC, by_loinc
from carecast.simulate import SimulationSummary

from .conftest import read_ndjson

MODELS = {"Patient": Patient, "Encounter": Encounter, "Condition": Condition, "Observation": Observation,
          "ImagingStudy": ImagingStudy, "DiagnosticReport": DiagnosticReport}


@pytest.mark.parametrize("resource_type", list(MODELS))
def test_every_line_validates_as_r4(small_run: tuple[Path, SimulationSummary], resource_type: str) -> None:
    root, _ = small_run
    model = MODELS[resource_type]
    n = 0
    for obj in read_ndjson(root / f"{resource_type}.ndjson"):
        assert obj["resourceType"] == resource_type
        model.model_validate(obj)
        n += 1
    assert n > 0


def test_imaging_and_deaths_validate_in_a_larger_run(medium_run: tuple[Path, SimulationSummary]) -> None:
    root, _ = medium_run
    for resource_type in ("Patient", "Encounter", "Condition", "ImagingStudy", "DiagnosticReport"):
        for obj in read_ndjson(root / f"{resource_type}.ndjson"):
            MODELS[resource_type].model_validate(obj)


def test_references_resolve(small_run: tuple[Path, SimulationSummary]) -> None:
    root, _ = small_run
    patients = {f"Patient/{p['id']}" for p in read_ndjson(root / "Patient.ndjson")}
    encounters = {f"Encounter/{e['id']}" for e in read_ndjson(root / "Encounter.ndjson")}
    studies = {f"ImagingStudy/{s['id']}" for s in read_ndjson(root / "ImagingStudy.ndjson")}
    for name in ("Encounter", "Condition", "Observation", "ImagingStudy", "DiagnosticReport"):
        for obj in read_ndjson(root / f"{name}.ndjson"):
            assert obj["subject"]["reference"] in patients
            if name != "Encounter":
                assert obj["encounter"]["reference"] in encounters
    for report in read_ndjson(root / "DiagnosticReport.ndjson"):
        assert all(ref["reference"] in studies for ref in report["imagingStudy"])


def test_ids_are_unique(small_run: tuple[Path, SimulationSummary]) -> None:
    root, _ = small_run
    for name in MODELS:
        ids = [obj["id"] for obj in read_ndjson(root / f"{name}.ndjson")]
        assert len(ids) == len(set(ids)), name


def test_observation_codes_come_from_the_catalogue(small_run: tuple[Path, SimulationSummary]) -> None:
    root, _ = small_run
    seen_categories = set()
    for obj in read_ndjson(root / "Observation.ndjson"):
        coding = obj["code"]["coding"][0]
        assert coding["system"] == LOINC
        seen_categories.add(obj["category"][0]["coding"][0]["code"])
        if coding["code"] in BLOOD_PRESSURE_PANELS:
            assert [c["code"]["coding"][0]["code"] for c in obj["component"]] == ["8480-6", "8462-4"]
            assert "valueQuantity" not in obj
        else:
            assert coding["code"] in by_loinc()
            assert obj["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    assert seen_categories == {"vital-signs", "laboratory"}


def test_patient_identifiers_and_demographics(small_run: tuple[Path, SimulationSummary]) -> None:
    root, _ = small_run
    for p in read_ndjson(root / "Patient.ndjson"):
        systems = {i["system"]: i for i in p["identifier"]}
        assert systems["urn:carecast:mrn"]["value"].startswith("MRN")
        assert systems["urn:carecast:mrn"]["type"]["coding"][0]["code"] == "MR"
        assert len(systems["http://hl7.org/fhir/sid/us-ssn"]["value"]) == 11
        assert len(p["address"][0]["state"]) == 2
        urls = {e["url"] for e in p["extension"]}
        assert urls == {"http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"}
        assert {t["system"] for t in p["telecom"]} == {"phone", "email"}
