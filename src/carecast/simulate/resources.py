"""FHIR R4 (4.0.1) resource builders: plain dicts in the shapes EHR bulk exports use.

Each builder takes already-decided facts (ids, codes, values, ISO times) and returns one resource.
Keys are inserted in a fixed order, so the same facts always serialise to the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carecast.domain.variables import LOINC, Variable
from carecast.simulate import tables as T

UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_PRIORITY = "http://terminology.hl7.org/CodeSystem/v3-ActPriority"
ADMIT_SOURCE = "http://terminology.hl7.org/CodeSystem/admit-source"
DISCHARGE_DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
MRN_SYSTEM = "urn:carecast:mrn"
SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
ACCESSION_SYSTEM = "urn:carecast:accession"
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
# Human-readable unit spellings (valueQuantity.unit); `code` always carries the UCUM code. Each spelling
# here is also known to units.csv, so a reader that trusts `unit` converts it too.
UNIT_DISPLAY = {"mm[Hg]": "mmHg", "[degF]": "degF"}


def _ref(reference: str) -> dict[str, str]:
    return {"reference": reference}


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


def _concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [_coding(system, code, display)]}
    if text is not None:
        out["text"] = text
    return out


def quantity(value: float | int, ucum: str) -> dict[str, Any]:
    return {"value": value, "unit": UNIT_DISPLAY.get(ucum, ucum), "system": UCUM, "code": ucum}


# --- Patient --------------------------------------------------------------------------------------------

def patient(*, id: str, mrn: str, ssn: str, family: str, given: tuple[str, ...], gender: str,
            birth_date: str, race: tuple[str | None, str], ethnicity: tuple[str, str], line: str, city: str,
            state: str, postal_code: str, phone: str, email: str, deceased: str | None) -> dict[str, Any]:
    race_code, race_text = race
    race_parts: list[dict[str, Any]] = []
    if race_code is not None:
        race_parts.append({"url": "ombCategory", "valueCoding": _coding(T.OMB_RACE, race_code, race_text)})
    else:
        race_parts.append({"url": "ombCategory", "valueCoding": _coding(T.NULL_FLAVOR, "UNK", "Unknown")})
    race_parts.append({"url": "text", "valueString": race_text})
    out: dict[str, Any] = {
        "resourceType": "Patient",
        "id": id,
        "extension": [
            {"url": US_CORE_RACE, "extension": race_parts},
            {"url": US_CORE_ETHNICITY, "extension": [
                {"url": "ombCategory", "valueCoding": _coding(T.OMB_RACE, ethnicity[0], ethnicity[1])},
                {"url": "text", "valueString": ethnicity[1]},
            ]},
        ],
        "identifier": [
            {"use": "usual", "type": _concept(IDENTIFIER_TYPE, "MR", "Medical record number"),
             "system": MRN_SYSTEM, "value": mrn},
            {"type": _concept(IDENTIFIER_TYPE, "SS", "Social Security number"), "system": SSN_SYSTEM,
             "value": ssn},
        ],
        "name": [{"use": "official", "family": family, "given": list(given)}],
        "telecom": [{"system": "phone", "value": phone, "use": "home"},
                    {"system": "email", "value": email}],
        "gender": gender,
        "birthDate": birth_date,
    }
    if deceased is not None:
        out["deceasedDateTime"] = deceased
    out["address"] = [{"use": "home", "line": [line], "city": city, "state": state, "postalCode": postal_code,
                       "country": "US"}]
    return out


# --- Encounter ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Stay:
    """One stretch of an encounter in one unit and bed. Times are ISO strings; end None = ongoing."""

    unit: str
    bed: str
    start: str
    end: str | None


def encounter(*, id: str, patient_ref: str, encounter_class: str, priority: str, start: str, end: str | None,
              stays: list[Stay], disposition: str | None) -> dict[str, Any]:
    period: dict[str, str] = {"start": start}
    if end is not None:
        period["end"] = end
    source_code, source_display = T.ADMIT_SOURCE[priority]
    hospitalization: dict[str, Any] = {"admitSource": _concept(ADMIT_SOURCE, source_code, source_display)}
    if disposition is not None:
        hospitalization["dischargeDisposition"] = _concept(DISCHARGE_DISPOSITION, disposition,
                                                           T.DISPOSITIONS[disposition])
    class_display = "inpatient encounter" if encounter_class == "IMP" else "emergency"
    locations: list[dict[str, Any]] = []
    for stay in stays:
        stay_period = {"start": stay.start} if stay.end is None else {"start": stay.start, "end": stay.end}
        status = "active" if stay.end is None else "completed"
        locations.append({"location": {"display": stay.unit}, "status": status,
                          "physicalType": _concept(PHYSICAL_TYPE, "wa", "Ward"), "period": stay_period})
        locations.append({"location": {"display": stay.bed}, "status": status,
                          "physicalType": _concept(PHYSICAL_TYPE, "bd", "Bed"), "period": dict(stay_period)})
    return {
        "resourceType": "Encounter",
        "id": id,
        "status": "in-progress" if end is None else "finished",
        "class": _coding(ACT_CODE, encounter_class, class_display),
        "priority": _concept(ACT_PRIORITY, priority, T.PRIORITY_DISPLAY[priority]),
        "subject": _ref(patient_ref),
        "period": period,
        "hospitalization": hospitalization,
        "location": locations,
    }


# --- Condition ------------------------------------------------------------------------------------------

def condition(*, id: str, patient_ref: str, encounter_ref: str, code: str, display: str, category: str,
              onset: str, recorded: str, clinical_status: str = "active") -> dict[str, Any]:
    category_display = "Problem List Item" if category == "problem-list-item" else "Encounter Diagnosis"
    return {
        "resourceType": "Condition",
        "id": id,
        "clinicalStatus": _concept(CONDITION_CLINICAL, clinical_status),
        "verificationStatus": _concept(CONDITION_VERIFICATION, "confirmed"),
        "category": [_concept(CONDITION_CATEGORY, category, category_display)],
        "code": _concept(T.ICD10, code, display, text=display),
        "subject": _ref(patient_ref),
        "encounter": _ref(encounter_ref),
        "onsetDateTime": onset,
        "recordedDate": recorded,
    }


# --- Observation ----------------------------------------------------------------------------------------

_CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "laboratory": "Laboratory"}


def _category(code: str) -> list[dict[str, Any]]:
    return [_concept(OBSERVATION_CATEGORY, code, _CATEGORY_DISPLAY[code])]


def observation(*, id: str, variable: Variable, value: float | int, ucum: str, patient_ref: str,
                encounter_ref: str, effective: str, issued: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "category": _category(variable.category),
        "code": _concept(LOINC, variable.loinc, variable.display),
        "subject": _ref(patient_ref),
        "encounter": _ref(encounter_ref),
        "effectiveDateTime": effective,
    }
    if issued is not None:
        out["issued"] = issued
    out["valueQuantity"] = quantity(value, ucum)
    return out


def blood_pressure(*, id: str, systolic: Variable, diastolic: Variable, systolic_value: int,
                   diastolic_value: int, patient_ref: str, encounter_ref: str,
                   effective: str) -> dict[str, Any]:
    """The R4 vital-signs profile's blood pressure panel with its two components."""
    return {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "category": _category("vital-signs"),
        "code": _concept(LOINC, BP_PANEL[0], BP_PANEL[1], text="Blood pressure"),
        "subject": _ref(patient_ref),
        "encounter": _ref(encounter_ref),
        "effectiveDateTime": effective,
        "component": [
            {"code": _concept(LOINC, systolic.loinc, systolic.display),
             "valueQuantity": quantity(systolic_value, systolic.unit)},
            {"code": _concept(LOINC, diastolic.loinc, diastolic.display),
             "valueQuantity": quantity(diastolic_value, diastolic.unit)},
        ],
    }


# --- Imaging --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Series:
    uid: str
    description: str
    instances: int


def imaging_study(*, id: str, study_uid: str, accession: str, patient_ref: str, encounter_ref: str,
                  started: str, modality: str, description: str, series: list[Series]) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": id,
        "identifier": [
            {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"},
            {"type": _concept(IDENTIFIER_TYPE, "ACSN", "Accession ID"), "system": ACCESSION_SYSTEM,
             "value": accession},
        ],
        "status": "available",
        "modality": [_coding(T.DICOM, modality)],
        "subject": _ref(patient_ref),
        "encounter": _ref(encounter_ref),
        "started": started,
        "numberOfSeries": len(series),
        "numberOfInstances": sum(s.instances for s in series),
        "description": description,
        "series": [
            {"uid": s.uid, "number": n, "modality": _coding(T.DICOM, modality), "description": s.description,
             "numberOfInstances": s.instances, "bodySite": _coding(T.SNOMED, "51185008", "Thorax")}
            for n, s in enumerate(series, start=1)
        ],
    }


def imaging_report(*, id: str, loinc: str, loinc_display: str, patient_ref: str, encounter_ref: str,
                   effective: str, issued: str, study_id: str, finding: T.Finding) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": id,
        "status": "final",
        "category": [_concept(DIAGNOSTIC_SERVICE, "RAD", "Radiology")],
        "code": _concept(LOINC, loinc, loinc_display),
        "subject": _ref(patient_ref),
        "encounter": _ref(encounter_ref),
        "effectiveDateTime": effective,
        "issued": issued,
        "imagingStudy": [_ref(f"ImagingStudy/{study_id}")],
        "conclusion": finding.conclusion,
        "conclusionCode": [_concept(T.SNOMED, code, display) for code, display in finding.codes],
    }
