"""Synthetic FHIR R4 resources and DICOM datasets for tests (no real patient data anywhere)."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

SECRET_IDENTIFIERS = {
    "family": "Zyxwvutson", "given": "Quillamena", "mrn": "MRN-7731-QX", "ssn": "987-65-4329",
    "birth": "1948-02-29", "line": "4412 Zanzibar Crescent", "city": "Quixotic Falls", "postal": "90412",
    "phone": "555-0147-882", "email": "quillamena.z@example.test", "device": "SER-ZX-99182",
    # The rest of the 18 Safe Harbor kinds (for the de-identified export's proof, figure 12).
    "fax": "555-0193-447", "url": "https://quillamena-zyx.example.test/home", "ip": "203.0.113.77",
    "account": "ACCT-55120-QZ", "plan": "HPB-88213-ZQ", "licence": "DL-Z9913-OH", "certificate": "CERT-40417-QX",
    "vehicle": "1QZX7WVT3K0419923", "biometric": "BIO-FP-77410-Z", "photo": "UXVpbGxhbWVuYVBob3Rv",
    "unique": "UNQ-31337-ZX", "accession": "ACC-66104-ZQ", "study_uid": "1.2.826.0.1.3680043.99.77123",
    "series_uid": "1.2.826.0.1.3680043.99.77124",
}


def patient(pid: str = "p1", *, mrn: str | None = None, **overrides: Any) -> dict[str, Any]:
    s = SECRET_IDENTIFIERS
    res: dict[str, Any] = {
        "resourceType": "Patient", "id": pid,
        "identifier": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
             "system": "urn:carecast:mrn", "value": mrn or f"{s['mrn']}-{pid}"},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": s["ssn"]},
        ],
        "name": [{"use": "official", "family": s["family"], "given": [s["given"]]}],
        "gender": "female", "birthDate": s["birth"],
        "address": [{"line": [s["line"]], "city": s["city"], "state": "OH", "postalCode": s["postal"]}],
        "telecom": [{"system": "phone", "value": s["phone"]}, {"system": "email", "value": s["email"]}],
    }
    res.update(overrides)
    return res


def encounter(eid: str = "e1", pid: str = "p1", *, start: str = "2026-01-05T08:00:00Z", end: str | None = None,
              units: tuple[tuple[str, str], ...] = (("Medical Ward 4W", "2026-01-05T08:00:00Z"),),
              disposition: str | None = None, klass: str = "IMP") -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Encounter", "id": eid, "status": "finished" if end else "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": klass},
        "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActPriority", "code": "EM"}]},
        "subject": {"reference": f"Patient/{pid}"}, "period": {"start": start, **({"end": end} if end else {})},
        "location": [{"location": {"display": u}, "period": {"start": t},
                      "physicalType": {"coding": [{"code": "wa"}]}} for u, t in units],
    }
    if disposition:
        res["hospitalization"] = {"dischargeDisposition": {"coding": [{"code": disposition}]}}
    return res


def vital(oid: str, loinc: str, value: float, unit: str, *, pid: str = "p1", eid: str | None = "e1",
          when: str = "2026-01-05T09:00:00Z", **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation", "id": oid, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }
    if eid:
        res["encounter"] = {"reference": f"Encounter/{eid}"}
    res.update(extra)
    return res


def blood_pressure(oid: str, systolic: float, diastolic: float, *, pid: str = "p1",
                   when: str = "2026-01-05T09:00:00Z") -> dict[str, Any]:
    def comp(code: str, v: float) -> dict[str, Any]:
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": v, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                  "code": "mm[Hg]"}}

    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
            "component": [comp("8480-6", systolic), comp("8462-4", diastolic)]}


def condition(cid: str, code: str = "E11.9", *, pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid,
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}, "recordedDate": "2026-01-05"}


def bundle(resources: list[dict[str, Any]], btype: str = "transaction", *, urn: bool = False) -> dict[str, Any]:
    entries = []
    for r in resources:
        entry: dict[str, Any] = {"resource": r}
        if urn:
            entry["fullUrl"] = f"urn:uuid:{r['id']}"
        else:
            entry["fullUrl"] = f"http://ehr.example/fhir/{r['resourceType']}/{r['id']}"
        if btype in ("transaction", "batch"):
            entry["request"] = {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": btype, "entry": entries}


def dicom_dataset(*, filename: str = "synthetic.dcm", patient_id: str | None = "SYN-0001",
                  study_uid: str | None = "2.25.100", series_uid: str = "2.25.100.1", sop_uid: str = "2.25.100.1.1",
                  modality: str = "CT", transfer_syntax: str = ExplicitVRLittleEndian, pixels: bool = True,
                  **tags: Any) -> FileDataset:
    """A small synthetic DICOM Part 10 dataset (not written): file meta, study/series/instance tags, `tags` set
    last (they may replace any of these), and a 2x2 16-bit frame when `pixels`. A None uid or patient id is
    left out."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = tags.get("SOPClassUID", CTImageStorage)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(filename, Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    if study_uid is not None:
        ds.StudyInstanceUID = study_uid
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.Modality = modality
    ds.StudyDate = "20250203"
    ds.StudyTime = "081530"
    ds.SeriesNumber = 2
    ds.BodyPartExamined = "CHEST"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    if pixels:
        ds.Rows = ds.Columns = 2
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = b"\x01\x00" * 4
    return ds
