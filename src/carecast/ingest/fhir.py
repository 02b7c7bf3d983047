"""FHIR R4 (4.0.1) JSON -> domain records: Bundles and bulk NDJSON.

A validated mapping, written against the R4 specification rather than a generic model library:
it checks exactly the fields CareCast uses, names the failing field on every rejection, and keeps
bulk NDJSON fast. R5-only shapes (e.g. Encounter.class as a list) are refused with a message that
says so. Tests validate the simulator's output against the fhir.resources R4B models.

Bundles: `transaction` is one atomic unit (all entries or none); `batch`, `collection` and
`searchset` are stored entry by entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson

from carecast.domain import variables as V
from carecast.domain.geography import state_code
from carecast.domain.records import (
    ConditionRecord,
    DiagnosticReportRecord,
    EncounterRecord,
    ImagingSeriesRecord,
    ImagingStudyRecord,
    LocationStay,
    OutcomeRecord,
    PatientRecord,
    Record,
    Rejection,
    Source,
    UnitOfWork,
)
from carecast.ingest.common import (
    FieldProblem,
    as_dict,
    as_list,
    as_number,
    as_str,
    observation,
    parse_date,
    parse_datetime,
    require,
)

SUPPORTED = ("Patient", "Encounter", "Observation", "Condition", "ImagingStudy", "DiagnosticReport")
# Resource types CareCast acknowledges and ignores (counted as skipped, not quarantined).
IGNORED = frozenset({
    "Practitioner", "PractitionerRole", "Organization", "Location", "Device", "Medication", "MedicationRequest",
    "MedicationAdministration", "MedicationStatement", "Procedure", "Immunization", "AllergyIntolerance",
    "CarePlan", "CareTeam", "Claim", "ExplanationOfBenefit", "Coverage", "Provenance", "DocumentReference",
    "Goal", "ServiceRequest", "Specimen", "Media", "SupplyDelivery", "ImagingSelection", "Consent",
    "FamilyMemberHistory", "Composition", "RelatedPerson", "Appointment", "EpisodeOfCare", "QuestionnaireResponse",
    "Group", "List", "Basic", "MedicationDispense", "NutritionOrder", "RiskAssessment", "Flag", "Task",
})
# Every other FHIR R4 resource type is acknowledged and skipped; a name that is not an R4 resource
# type at all is rejected.
R4_RESOURCE_TYPES = frozenset(
    (files("carecast.ingest") / "fhir_r4_resource_types.txt").read_text(encoding="utf-8").split())
BUNDLE_TYPES_ENTRYWISE = frozenset({"batch", "collection", "searchset"})

MRN_SYSTEM_HINT = re.compile(r"mrn|medical.?record", re.IGNORECASE)
SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
ICU_UNIT = re.compile(r"\b(M|S|C|N|P)?ICU\b|intensive care|critical care", re.IGNORECASE)
ICD10_SYSTEMS = ("http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10")
SNOMED = "http://snomed.info/sct"
RACE_EXT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
ETHNICITY_EXT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
PRIORITY_TO_ADMISSION = {"EM": "emergency", "UR": "urgent", "EL": "elective", "R": "routine", "A": "asap",
                         "S": "stat"}
CLASS_CODES = {"IMP", "EMER", "AMB", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "VR", "HH", "FLD"}
GENDERS = {"male", "female", "other", "unknown"}


class Refs:
    """Turns a FHIR reference into the canonical "Type/id" form, resolving urn:uuid fullUrls of a bundle."""

    def __init__(self, full_urls: dict[str, str] | None = None) -> None:
        self.full_urls = full_urls or {}

    def resolve(self, value: Any, path: str, expected: str | None = None) -> str:
        ref = value.get("reference") if type(value) is dict else None
        # Fast path, the common case in bulk data: a plain "Type/id" of the expected type.
        if expected and type(ref) is str and ref.count("/") == 1 and ref.startswith(expected) \
                and ref[len(expected)] == "/" and len(ref) > len(expected) + 1:
            return ref
        ref = as_str(as_dict(value, path).get("reference"), f"{path}.reference")
        if ref in self.full_urls:
            ref = self.full_urls[ref]
        elif ref.startswith(("urn:uuid:", "urn:oid:")):
            raise FieldProblem(f"{path}.reference", "refers to a fullUrl that is not in this bundle")
        else:
            ref = ref.split("/_history/")[0]
            parts = ref.rstrip("/").split("/")
            if len(parts) < 2:
                raise FieldProblem(f"{path}.reference", "is not a Type/id reference")
            ref = f"{parts[-2]}/{parts[-1]}"
        if expected and not ref.startswith(expected + "/"):
            raise FieldProblem(f"{path}.reference", f"must reference a {expected}")
        return ref

    def optional(self, res: dict[str, Any], key: str, expected: str | None = None) -> str | None:
        value = res.get(key)
        if value is None:
            return None
        return self.resolve(value, key, expected)


def _id(res: dict[str, Any]) -> str:
    rid = res.get("id")
    if not isinstance(rid, str) or not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", rid):
        raise FieldProblem("id", "missing or not a valid FHIR id")
    return rid


def _codings(value: Any, path: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    concept = as_dict(value, path)
    return [c for c in as_list(concept.get("coding", []), f"{path}.coding") if isinstance(c, dict)]


def _first_code(value: Any, path: str) -> str | None:
    for c in _codings(value, path):
        if isinstance(c.get("code"), str):
            return str(c["code"])
    return None


def _opt_dt(res: dict[str, Any], key: str) -> Any:
    value = res.get(key)
    return parse_datetime(value, key) if value is not None else None


# -- resources -----------------------------------------------------------------------------------------------

def decode_patient(res: dict[str, Any], refs: Refs) -> list[Record]:
    rid = _id(res)
    mrn = ssn = None
    for i, ident in enumerate(as_list(res.get("identifier", []), "identifier")):
        ident = as_dict(ident, f"identifier[{i}]")
        raw_system = ident.get("system")
        system = raw_system if isinstance(raw_system, str) else ""
        value = ident.get("value")
        if not isinstance(value, str) or not value.strip():
            continue
        type_codes = {c.get("code") for c in _codings(ident.get("type"), f"identifier[{i}].type")
                      if isinstance(c.get("code"), str)}
        if system == SSN_SYSTEM or "SS" in type_codes:
            ssn = value.strip()
        elif mrn is None and ("MR" in type_codes or MRN_SYSTEM_HINT.search(system)):
            mrn = value.strip()
    family = given = None
    names = as_list(res.get("name", []), "name")
    if names:
        official = next((n for n in names if isinstance(n, dict) and n.get("use") == "official"), names[0])
        name = as_dict(official, "name[0]")
        family = name.get("family") if isinstance(name.get("family"), str) else None
        given_list = [g for g in as_list(name.get("given", []), "name[0].given") if isinstance(g, str)]
        given = " ".join(given_list) or None
    gender = res.get("gender", "unknown")
    if not isinstance(gender, str) or gender not in GENDERS:
        raise FieldProblem("gender", "must be male, female, other or unknown")
    birth = parse_date(res["birthDate"], "birthDate") if res.get("birthDate") else None
    line = city = state = postal = None
    addresses = as_list(res.get("address", []), "address")
    if addresses:
        addr = as_dict(addresses[0], "address[0]")
        line = ", ".join(x for x in as_list(addr.get("line", []), "address[0].line") if isinstance(x, str)) or None
        city = addr.get("city") if isinstance(addr.get("city"), str) else None
        state = state_code(addr.get("state"))
        postal = addr.get("postalCode") if isinstance(addr.get("postalCode"), str) else None
    phone = email = None
    for i, tel in enumerate(as_list(res.get("telecom", []), "telecom")):
        tel = as_dict(tel, f"telecom[{i}]")
        if tel.get("system") == "phone" and phone is None and isinstance(tel.get("value"), str):
            phone = tel["value"]
        elif tel.get("system") == "email" and email is None and isinstance(tel.get("value"), str):
            email = tel["value"]
    race = ethnicity = None
    for ext in as_list(res.get("extension", []), "extension"):
        if not isinstance(ext, dict):
            continue
        if ext.get("url") in (RACE_EXT, ETHNICITY_EXT):
            label = _us_core_label(ext)
            if ext.get("url") == RACE_EXT:
                race = label
            else:
                ethnicity = label
    deceased = _opt_dt(res, "deceasedDateTime")
    key = f"Patient/{rid}"
    records: list[Record] = [PatientRecord(
        natural_key=key, mrn=mrn, family_name=family, given_names=given, birth_date=birth, sex=gender,
        race=race, ethnicity=ethnicity, address_line=line, city=city, state=state, postal_code=postal,
        phone=phone, email=email, ssn=ssn, deceased_at=deceased)]
    if deceased is not None:
        records.append(OutcomeRecord(natural_key=f"death/{key}", patient_ref=key, kind="death", occurred_at=deceased))
    return records


def _us_core_label(ext: dict[str, Any]) -> str | None:
    text = None
    category = None
    subs = ext.get("extension")
    for sub in subs if isinstance(subs, list) else []:
        if not isinstance(sub, dict):
            continue
        if sub.get("url") == "text" and isinstance(sub.get("valueString"), str):
            text = sub["valueString"]
        elif sub.get("url") == "ombCategory" and category is None and isinstance(sub.get("valueCoding"), dict):
            category = sub["valueCoding"].get("display")
    label = category or text
    return label[:64] if isinstance(label, str) else None


def decode_encounter(res: dict[str, Any], refs: Refs) -> list[Record]:
    rid = _id(res)
    status = as_str(require(res, "status", "status"), "status")
    klass = require(res, "class", "class")
    if isinstance(klass, list):
        raise FieldProblem("class", "is a list: this looks like FHIR R5; CareCast reads FHIR R4 (class is a Coding)")
    klass_code = as_str(as_dict(klass, "class").get("code"), "class.code")
    patient = refs.resolve(require(res, "subject", "subject"), "subject", "Patient")
    period = as_dict(res.get("period", {}), "period")
    if status in ("planned", "cancelled", "entered-in-error"):
        raise FieldProblem("status", f"encounters with status {status} are not stored")
    admitted = parse_datetime(require(period, "start", "period.start"), "period.start")
    discharged = parse_datetime(period["end"], "period.end") if period.get("end") else None
    if discharged is not None and discharged < admitted:
        raise FieldProblem("period.end", "is before period.start")
    admission_type = PRIORITY_TO_ADMISSION.get(_first_code(res.get("priority"), "priority") or "")
    hosp = as_dict(res.get("hospitalization", {}), "hospitalization")
    if admission_type is None:
        source = _first_code(hosp.get("admitSource"), "hospitalization.admitSource")
        if klass_code == "EMER" or source == "emd":
            admission_type = "emergency"
        elif source:
            admission_type = "elective" if source in ("gp", "outp", "born") else "other"
    disposition = _first_code(hosp.get("dischargeDisposition"), "hospitalization.dischargeDisposition")
    stays: list[LocationStay] = []
    bed: str | None = None
    for i, loc in enumerate(as_list(res.get("location", []), "location")):
        loc = as_dict(loc, f"location[{i}]")
        target = as_dict(require(loc, "location", f"location[{i}].location"), f"location[{i}].location")
        name = target.get("display") or target.get("reference")
        if not isinstance(name, str) or not name.strip():
            raise FieldProblem(f"location[{i}].location", "needs a display or reference")
        kind = _first_code(loc.get("physicalType"), f"location[{i}].physicalType")
        lp = as_dict(loc.get("period", {}), f"location[{i}].period")
        start = parse_datetime(lp["start"], f"location[{i}].period.start") if lp.get("start") else None
        end = parse_datetime(lp["end"], f"location[{i}].period.end") if lp.get("end") else None
        if kind == "bd":
            bed = name.strip()[:32]
            if stays and stays[-1].bed is None:
                stays[-1] = LocationStay(stays[-1].unit, bed, stays[-1].start, stays[-1].end)
        else:
            stays.append(LocationStay(name.strip()[:64], None, start, end))
    key = f"Encounter/{rid}"
    records: list[Record] = [EncounterRecord(
        natural_key=key, patient_ref=patient, status=status, encounter_class=klass_code[:16],
        admitted_at=admitted, discharged_at=discharged, admission_type=admission_type,
        disposition=disposition, unit=stays[-1].unit if stays else None, bed=bed, locations=tuple(stays))]
    for i, stay in enumerate(stays):
        if i > 0 and ICU_UNIT.search(stay.unit) and not ICU_UNIT.search(stays[i - 1].unit):
            when = stay.start or admitted
            records.append(OutcomeRecord(natural_key=f"icu/{key}/{i}", patient_ref=patient, kind="icu_transfer",
                                         occurred_at=when, encounter_ref=key))
    if disposition == "exp" and discharged is not None:
        records.append(OutcomeRecord(natural_key=f"death/{patient}", patient_ref=patient, kind="death",
                                     occurred_at=discharged, encounter_ref=key))
    return records


def decode_observation(res: dict[str, Any], refs: Refs) -> list[Record]:
    rid = _id(res)
    status = as_str(require(res, "status", "status"), "status")
    if status in ("entered-in-error", "cancelled", "registered"):
        raise FieldProblem("status", f"observations with status {status} carry no result")
    patient = refs.resolve(require(res, "subject", "subject"), "subject", "Patient")
    encounter = refs.optional(res, "encounter", "Encounter")
    device = refs.optional(res, "device")
    if "effectiveDateTime" in res:
        when = parse_datetime(res["effectiveDateTime"], "effectiveDateTime")
    elif "effectiveInstant" in res:
        when = parse_datetime(res["effectiveInstant"], "effectiveInstant")
    elif isinstance(res.get("effectivePeriod"), dict) and res["effectivePeriod"].get("start"):
        when = parse_datetime(res["effectivePeriod"]["start"], "effectivePeriod.start")
    else:
        raise FieldProblem("effectiveDateTime", "required field is missing")
    codes = _codings(require(res, "code", "code"), "code")
    loincs = [c.get("code") for c in codes if c.get("system") == V.LOINC and isinstance(c.get("code"), str)]
    table = V.by_loinc()
    source: Source = "wearable" if device else "fhir"
    serial = device.split("/", 1)[1] if device else None
    base = f"Observation/{rid}"
    if not V.BLOOD_PRESSURE_PANELS.isdisjoint(loincs) or ("component" in res and "valueQuantity" not in res):
        out: list[Record] = []
        for i, comp in enumerate(as_list(res.get("component", []), "component")):
            comp = as_dict(comp, f"component[{i}]")
            ccodes = _codings(comp.get("code"), f"component[{i}].code")
            var = next((table[c["code"]] for c in ccodes
                        if c.get("system") == V.LOINC and isinstance(c.get("code"), str) and c["code"] in table), None)
            if var is None:
                continue
            value, unit = _quantity(comp, f"component[{i}]")
            out.append(observation(
                natural_key=f"{base}#{var.loinc}", patient_ref=patient, variable=var, code_system=V.LOINC,
                code=var.loinc, value=value, unit=unit, effective_at=when, source=source, encounter_ref=encounter,
                device_serial=serial, value_path=f"component[{i}].valueQuantity.value",
                unit_path=f"component[{i}].valueQuantity.code"))
        if not out:
            raise FieldProblem("component", "no component with a LOINC code that CareCast maps")
        return out
    var = next((table[c] for c in loincs if c in table), None)
    if var is None:
        raise FieldProblem("code.coding", "no LOINC code that CareCast maps (see variables.csv)")
    value, unit = _value(res, var)
    return [observation(
        natural_key=base, patient_ref=patient, variable=var, code_system=V.LOINC, code=var.loinc, value=value,
        unit=unit, effective_at=when, source=source, encounter_ref=encounter, device_serial=serial,
        value_path="valueQuantity.value", unit_path="valueQuantity.code")]


def _value(res: dict[str, Any], var: V.Variable) -> tuple[float, str | None]:
    """valueQuantity; valueInteger for scores; valueCodeableConcept for coded scales (ACVPU)."""
    if "valueQuantity" in res:
        return _quantity(res, "")
    if "valueInteger" in res and var.unit.startswith("{"):
        return as_number(res["valueInteger"], "valueInteger"), var.unit
    if "valueCodeableConcept" in res and V.has_coded_answers(var):
        concept = as_dict(res["valueCodeableConcept"], "valueCodeableConcept")
        codings = _codings(concept, "valueCodeableConcept")
        texts = [str(c.get("display")) for c in codings if c.get("display")] + [str(concept.get("text") or "")]
        value = V.coded_value(var, [(str(c.get("system", "")), str(c.get("code", ""))) for c in codings],
                              " ".join(texts))
        if value is None:
            raise FieldProblem("valueCodeableConcept", f"not an answer CareCast knows for {var.name}")
        return value, var.unit
    return _quantity(res, "")


def _quantity(holder: dict[str, Any], prefix: str) -> tuple[float, str | None]:
    path = f"{prefix}.valueQuantity" if prefix else "valueQuantity"
    if "valueQuantity" not in holder:
        if "dataAbsentReason" in holder:
            raise FieldProblem(path, "no value (dataAbsentReason given)")
        raise FieldProblem(path, "required field is missing (CareCast stores quantities)")
    q = as_dict(holder["valueQuantity"], path)
    value = as_number(require(q, "value", f"{path}.value"), f"{path}.value")
    unit = q.get("code") or q.get("unit")
    return value, unit if isinstance(unit, str) else None


def decode_condition(res: dict[str, Any], refs: Refs) -> list[Record]:
    rid = _id(res)
    patient = refs.resolve(require(res, "subject", "subject"), "subject", "Patient")
    encounter = refs.optional(res, "encounter", "Encounter")
    system = code = display = None
    for c in _codings(require(res, "code", "code"), "code"):
        if c.get("system") in ICD10_SYSTEMS and isinstance(c.get("code"), str):
            system, code, display = "icd10", c["code"], c.get("display")
            break
        if c.get("system") == SNOMED and isinstance(c.get("code"), str) and system is None:
            system, code, display = "snomed", c["code"], c.get("display")
    if system is None or code is None:
        raise FieldProblem("code.coding", "no ICD-10 or SNOMED CT coding")
    return [ConditionRecord(
        natural_key=f"Condition/{rid}", patient_ref=patient, code_system=system, code=code.strip()[:32],
        display=display if isinstance(display, str) else None, encounter_ref=encounter,
        onset_at=_opt_dt(res, "onsetDateTime"), recorded_at=_opt_dt(res, "recordedDate"),
        clinical_status=_first_code(res.get("clinicalStatus"), "clinicalStatus"))]


def decode_imaging_study(res: dict[str, Any], refs: Refs) -> list[Record]:
    rid = _id(res)
    patient = refs.resolve(require(res, "subject", "subject"), "subject", "Patient")
    study_uid = None
    for ident in as_list(res.get("identifier", []), "identifier"):
        if isinstance(ident, dict) and ident.get("system") == "urn:dicom:uid" and isinstance(ident.get("value"), str):
            study_uid = ident["value"].removeprefix("urn:oid:")
    modalities = [str(m.get("code")) for m in as_list(res.get("modality", []), "modality")
                  if isinstance(m, dict) and m.get("code")]
    series: list[ImagingSeriesRecord] = []
    sites: list[str] = []
    for i, s in enumerate(as_list(res.get("series", []), "series")):
        s = as_dict(s, f"series[{i}]")
        uid = as_str(require(s, "uid", f"series[{i}].uid"), f"series[{i}].uid")
        modality = as_dict(require(s, "modality", f"series[{i}].modality"), f"series[{i}].modality").get("code")
        site = s.get("bodySite")
        site_label = (site.get("display") or site.get("code")) if isinstance(site, dict) else None
        if site_label:
            sites.append(str(site_label))
        series.append(ImagingSeriesRecord(
            series_uid=uid, modality=str(modality) if modality else None, body_site=site_label,
            description=s.get("description") if isinstance(s.get("description"), str) else None,
            number=int(s["number"]) if isinstance(s.get("number"), int) else None,
            instance_count=int(s["numberOfInstances"]) if isinstance(s.get("numberOfInstances"), int) else None))
        if modality and str(modality) not in modalities:
            modalities.append(str(modality))
    return [ImagingStudyRecord(
        natural_key=f"ImagingStudy/{rid}", study_uid=study_uid, started_at=_opt_dt(res, "started"),
        patient_ref=patient, encounter_ref=refs.optional(res, "encounter", "Encounter"),
        modality=",".join(modalities) or None, body_site=sites[0] if sites else None,
        description=res.get("description") if isinstance(res.get("description"), str) else None,
        source="fhir", series=tuple(series))]


def decode_diagnostic_report(res: dict[str, Any], refs: Refs) -> list[Record]:
    rid = _id(res)
    status = as_str(require(res, "status", "status"), "status")
    if status in ("entered-in-error", "cancelled"):
        raise FieldProblem("status", f"reports with status {status} are not stored")
    patient = refs.resolve(require(res, "subject", "subject"), "subject", "Patient")
    categories = [c for cat in as_list(res.get("category", []), "category")
                  for c in _codings(cat, "category") if c.get("code")]
    studies = tuple(refs.resolve(s, f"imagingStudy[{i}]", "ImagingStudy")
                    for i, s in enumerate(as_list(res.get("imagingStudy", []), "imagingStudy")))
    conclusion_codes = tuple(str(c["code"]) for cc in as_list(res.get("conclusionCode", []), "conclusionCode")
                             for c in _codings(cc, "conclusionCode") if c.get("code"))
    issued = _opt_dt(res, "issued") or _opt_dt(res, "effectiveDateTime")
    return [DiagnosticReportRecord(
        natural_key=f"DiagnosticReport/{rid}", patient_ref=patient,
        category=str(categories[0]["code"])[:32] if categories else None,
        code=(_first_code(require(res, "code", "code"), "code") or "")[:32] or None, issued_at=issued,
        conclusion=res.get("conclusion") if isinstance(res.get("conclusion"), str) else None,
        conclusion_codes=conclusion_codes, encounter_ref=refs.optional(res, "encounter", "Encounter"),
        imaging_study_refs=studies)]


DECODERS: dict[str, Callable[[dict[str, Any], Refs], list[Record]]] = {
    "Patient": decode_patient, "Encounter": decode_encounter, "Observation": decode_observation,
    "Condition": decode_condition, "ImagingStudy": decode_imaging_study,
    "DiagnosticReport": decode_diagnostic_report,
}


def decode_resource(res: Any, refs: Refs | None = None) -> list[Record] | None:
    """Records of one resource; None for a resource type CareCast ignores. Raises FieldProblem."""
    if not isinstance(res, dict):
        raise FieldProblem("(resource)", "expected a JSON object")
    rtype = res.get("resourceType")
    if not isinstance(rtype, str):
        raise FieldProblem("resourceType", "required field is missing")
    decoder = DECODERS.get(rtype)
    if decoder is None:
        if rtype in IGNORED or rtype in R4_RESOURCE_TYPES:
            return None
        raise FieldProblem("resourceType", f"{rtype[:40]} is not a resource type CareCast reads")
    return decoder(res, refs or Refs())


def _raw(res: Any) -> bytes | None:
    """A resource as JSON bytes for the quarantine, or None when orjson cannot write it back (nesting deeper
    than the 254 levels it writes, though it reads 1,024; an integer beyond 64 bits from another JSON reader):
    keeping a copy must never lose the entry."""
    try:
        return orjson.dumps(res)
    except orjson.JSONEncodeError:
        return None


def _rtype(res: Any) -> str | None:
    return res.get("resourceType") if isinstance(res, dict) and isinstance(res.get("resourceType"), str) else None


# -- containers ----------------------------------------------------------------------------------------------

def decode_bundle(doc: dict[str, Any], where: str) -> UnitOfWork:
    """One Bundle. A transaction is atomic: any bad entry rejects the lot."""
    btype = doc.get("type")
    if btype != "transaction" and (not isinstance(btype, str) or btype not in BUNDLE_TYPES_ENTRYWISE):
        unit = UnitOfWork(where=where)
        unit.rejections.append(Rejection(where=where, reason=f"bundle type {str(btype)[:24]!r} is not accepted "
                                         "(transaction, batch, collection or searchset)", field="type",
                                         resource_type="Bundle"))
        return unit
    unit = UnitOfWork(where=where, atomic=btype == "transaction")
    entries = doc.get("entry", [])
    if not isinstance(entries, list):
        unit.rejections.append(Rejection(where=where, reason="expected a JSON array", field="entry",
                                         resource_type="Bundle"))
        return unit
    full_urls: dict[str, str] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            res = entry["resource"]
            rtype, rid = res.get("resourceType"), res.get("id")
            url = entry.get("fullUrl")
            if isinstance(url, str) and url.startswith("urn:uuid:") and not rid:
                rid = url.removeprefix("urn:uuid:")
                res["id"] = rid
            if isinstance(url, str) and rtype and rid:
                full_urls[url] = f"{rtype}/{rid}"
    refs = Refs(full_urls)
    for i, entry in enumerate(entries):
        loc = f"{where} entry[{i}]"
        res = entry.get("resource") if isinstance(entry, dict) else None
        try:
            if not isinstance(entry, dict) or res is None:
                raise FieldProblem("resource", "entry has no resource")
            request = entry.get("request")
            if isinstance(request, dict) and request.get("method") == "DELETE":
                raise FieldProblem("request.method", "DELETE is not supported")
            records = decode_resource(res, refs)
        except FieldProblem as problem:
            unit.rejections.append(problem.rejection(loc, _rtype(res), _raw(res) if res else None))
            continue
        if records is None:
            unit.skipped += 1
            continue
        for rec in records:
            unit.add(rec, loc)
        raw = _raw(res)
        if raw is not None:
            unit.raw[loc] = raw
    return unit


def decode_json_document(data: bytes, where: str) -> UnitOfWork:
    """A .json file: a Bundle or a single resource."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        unit = UnitOfWork(where=where)
        unit.rejections.append(Rejection(where=where, reason="not valid JSON", field="(document)", raw=None))
        return unit
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        return decode_bundle(doc, where)
    unit = UnitOfWork(where=where)
    add_resource(unit, doc, where, data)
    return unit


def add_resource(unit: UnitOfWork, resource: Any, where: str, raw: bytes | None = None) -> None:
    """Decode one resource into `unit`: its records, a rejection naming the field, or a skip."""
    raw = raw if raw is not None else _raw(resource)
    try:
        records = decode_resource(resource)
    except FieldProblem as problem:
        unit.rejections.append(problem.rejection(where, _rtype(resource), raw))
        return
    if records is None:
        unit.skipped += 1
        return
    for rec in records:
        unit.add(rec, where)
    if raw is not None:
        unit.raw[where] = raw


def decode_ndjson(path: Path, chunk_size: int = 5000, label: str | None = None) -> Iterator[UnitOfWork]:
    """Bulk FHIR NDJSON, one resource per line, in chunks of `chunk_size` lines (entry by entry)."""
    name = label or path.name
    unit = UnitOfWork(where=name)
    decode = DECODERS
    refs = Refs()
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            loc = f"{name}:line {lineno}"
            res: Any = None
            try:
                try:
                    res = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise FieldProblem("(line)", "not valid JSON") from None
                rtype = res.get("resourceType") if isinstance(res, dict) else None
                fn = decode.get(rtype) if isinstance(rtype, str) else None
                records = fn(res, refs) if fn is not None else decode_resource(res, refs)
            except FieldProblem as problem:
                unit.rejections.append(problem.rejection(loc, _rtype(res), line.rstrip(b"\n")))
            else:
                if records is None:
                    unit.skipped += 1
                else:
                    for rec in records:
                        unit.records.append(rec)
                        unit.locations.append(loc)
                    unit.raw[loc] = line  # kept (encrypted) only if the record is quarantined later
            if len(unit.records) + len(unit.rejections) >= chunk_size:
                yield unit
                unit = UnitOfWork(where=name)
    if unit.records or unit.rejections or unit.skipped:
        yield unit
