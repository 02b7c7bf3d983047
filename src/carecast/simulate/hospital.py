"""The synthetic hospital as one time-ordered stream of FHIR resources and wearable batches.

`Hospital(config).events()` yields `Event(time, resource_type, resource)` in time order, as a live feed
would deliver them: a resource appears when it becomes known (a lab result when it is issued, an
Encounter again each time it changes). Admissions are planned up front (`plan.py`, numbers only); the
resources of an admission are built lazily while it is in hospital, so memory follows the census.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from itertools import count
from typing import Any, NamedTuple

import numpy as np

from carecast.domain.variables import catalogue
from carecast.simulate import resources as R
from carecast.simulate import tables as T
from carecast.simulate.clock import Clock
from carecast.simulate.config import SimulationConfig
from carecast.simulate.identifiers import (
    CLINICAL,
    RESOURCE_IDS,
    WEARABLE,
    IdPool,
    dicom_uid,
    hex_serial,
    rng_for,
)
from carecast.simulate.latent import DIED, WARD, LatentParameters, softplus
from carecast.simulate.physiology import DECIMALS, LABS, finish, measure_labs, measure_vitals
from carecast.simulate.plan import DAY, HOUR, Admission, HospitalPlan, Planner
from carecast.simulate.wearables import WearableBatch, WearableDevice, worn_minutes

WEARABLES = "wearables"
RESOURCE_TYPES = ("Patient", "Encounter", "Condition", "Observation", "ImagingStudy", "DiagnosticReport")
# At equal times, a resource comes after those it refers to.
ORDER = {name: rank for rank, name in enumerate((*RESOURCE_TYPES, WEARABLES))}
FAHRENHEIT_SHARE = 0.03
POUNDS_SHARE = 0.15

Payload = dict[str, Any] | WearableBatch


class Event(NamedTuple):
    time: datetime
    resource_type: str  # a FHIR resource type, or WEARABLES for a batch of wearable readings
    resource: Payload


_Item = tuple[int, int, str, Payload]  # (minute, order, resource type, payload)
_Build = Callable[[], list[dict[str, Any]]]  # builds the resources of one moment, when it is reached
_Add = Callable[[int, str, _Build], None]
_Pending = tuple[int, int, int, str, _Build]


class Hospital:
    """A deterministic synthetic hospital. `plan` holds the latent truth; `events()` the observable feed."""

    def __init__(self, config: SimulationConfig, params: LatentParameters | None = None) -> None:
        self.config = config
        self.clock = Clock(config.start)
        self._planner = Planner(config, params)
        self._plan: HospitalPlan | None = None
        self._times: list[str] | None = None
        self._vars = catalogue()

    @property
    def plan(self) -> HospitalPlan:
        if self._plan is None:
            self._plan = self._planner.plan()
        return self._plan

    @property
    def window(self) -> int:
        return self.config.window_minutes

    def events(self) -> Iterator[Event]:
        """Every resource and wearable batch with a time before the end of the window, in time order.
        History (emergency visits before an index admission) comes first, with its own past times."""
        plan = self.plan
        heap = [(adm.first_minute, -1, adm.index, 0) for adm in plan.admissions]
        heapq.heapify(heap)
        streams: dict[int, Iterator[_Item]] = {}
        waiting: dict[int, _Item] = {}
        at = self.clock.at
        while heap:
            _, order, index, seq = heapq.heappop(heap)
            if order < 0:
                streams[index] = self._admission_stream(plan.admissions[index])
            else:
                item = waiting.pop(index)
                yield Event(at(item[0]), item[2], item[3])
            following = next(streams[index], None)
            if following is None:
                del streams[index]
                continue
            waiting[index] = following
            heapq.heappush(heap, (following[0], following[1], index, seq + 1))

    # --- one admission --------------------------------------------------------------------------
    def _admission_stream(self, adm: Admission) -> Iterator[_Item]:
        clinical = self._clinical_items(adm)
        if not adm.wearable:
            yield from clinical
            return
        yield from heapq.merge(clinical, self._wearable_items(adm), key=lambda item: (item[0], item[1]))

    def _clinical_items(self, adm: Admission) -> Iterator[_Item]:
        cfg = self.config
        rng = rng_for(cfg.seed, CLINICAL, adm.index)
        ids = IdPool(rng_for(cfg.seed, RESOURCE_IDS, adm.index))
        iso = self.clock.iso
        window = self.window
        stop = float(window) if adm.end_exact is None else min(float(window), adm.end_exact)
        last_minute = math.ceil(stop) - 1  # the last whole minute at which the patient is still here
        pending: list[_Pending] = []
        seq = count()

        def add(minute: int, resource_type: str, build: _Build) -> None:
            if minute < window:
                pending.append((minute, ORDER[resource_type], next(seq), resource_type, build))

        patient = adm.patient
        stays = self._stays(adm, rng)
        if adm.previous is None:
            add(adm.first_minute, "Patient", partial(self._patient, adm, None))
            for start, end in adm.prior_ed_visits:
                add(end, "Encounter", partial(self._ed_visit, adm, ids, start, end, rng))
            for comorbidity, years in zip(patient.comorbidities, patient.onset_years_ago, strict=True):
                recorded = min(adm.start + int(rng.integers(5, 21)), last_minute)
                onset = self.clock.date(adm.start - round(years * 365.25 * DAY))
                add(recorded, "Condition", partial(self._condition, adm, ids, comorbidity.code,
                                                   comorbidity.display, "problem-list-item", onset,
                                                   iso(recorded)))
        change_minutes = sorted({s[2] for s in stays[1:]} | ({adm.end} if adm.end is not None else set()))
        for minute in [adm.start, *change_minutes]:
            add(minute, "Encounter", partial(self._encounter, adm, stays, minute))
        recorded = min(adm.start + int(rng.integers(30, 121)), last_minute)
        onset = iso(adm.start - int(rng.integers(2 * HOUR, 72 * HOUR)))
        add(recorded, "Condition", partial(self._condition, adm, ids, adm.diagnosis.code,
                                           adm.diagnosis.display, "encounter-diagnosis", onset,
                                           iso(recorded)))
        for at, kind in adm.events:
            if kind == "icu":
                moved = math.ceil(at)
                recorded = min(moved + 30, last_minute)
                organ = "cardiac" if adm.unit == T.CARDIOLOGY else adm.phenotype.dominant
                code, display = T.ICU_CONDITIONS[organ]
                add(recorded, "Condition", partial(self._condition, adm, ids, code, display,
                                                   "encounter-diagnosis", iso(moved), iso(recorded)))
        if adm.outcome == DIED and adm.end is not None:
            add(adm.end, "Patient", partial(self._patient, adm, adm.end))

        self._add_vitals(adm, rng, ids, add, last_minute)
        self._add_labs(adm, rng, ids, add, stop)
        self._add_imaging(adm, rng, ids, add, stop)

        pending.sort(key=lambda p: (p[0], p[1], p[2]))
        for minute, order, _, resource_type, build in pending:
            for resource in build():
                yield minute, order, resource_type, resource

    def _wearable_items(self, adm: Admission) -> Iterator[_Item]:
        rng = rng_for(self.config.seed, WEARABLE, adm.index)
        window = self.window
        intervals = []
        for n, (start, end) in enumerate(self._ward_spans(adm)):
            delay = int(rng.integers(30, 181)) if n == 0 else 30
            intervals.append((start + delay, min(end, window)))
        worn = worn_minutes(rng, intervals)
        if self._times is None:
            self._times = self.clock.spell_range(0, window)
        device = WearableDevice(
            device_id=f"WX-{hex_serial(rng, 8)}", patient_ref=adm.patient.reference,
            admission_start=adm.start, severity=adm.severity, baseline=adm.patient.baseline,
            phenotype=adm.phenotype, worn=worn, upload_offset=int(rng.integers(0, 60)), rng=rng,
            times=self._times, times_offset=0,
            first_minute_of_day=self.clock.minute_of_day(0),
        )
        order = ORDER[WEARABLES]
        for upload, batch in device.batches():
            if upload >= window:
                return
            yield upload, order, WEARABLES, batch

    def _ward_spans(self, adm: Admission) -> list[tuple[int, int]]:
        """(start, end) minutes of each stretch on a ward, cut at the window's end."""
        spans = []
        start: int | None = adm.start
        for at, kind in adm.events:
            minute = math.ceil(at)
            if kind == "icu" and start is not None:
                spans.append((start, minute))
                start = None
            elif kind == "stepdown":
                start = minute
            elif kind in ("death", "discharge") and start is not None:
                spans.append((start, minute))
                start = None
        if start is not None:
            spans.append((start, self.window))
        return [(a, min(b, self.window)) for a, b in spans if a < self.window]

    # --- resources ---------------------------------------------------------------------------------
    def _patient(self, adm: Admission, deceased: int | None) -> list[dict[str, Any]]:
        p = adm.patient
        return [R.patient(
            id=p.id, mrn=p.mrn, ssn=p.ssn, family=p.family, given=p.given, gender=p.gender,
            birth_date=p.birth_date.isoformat(), race=p.race, ethnicity=p.ethnicity, line=p.address_line,
            city=p.city, state=p.state, postal_code=p.postal_code, phone=p.phone, email=p.email,
            deceased=None if deceased is None else self.clock.iso(deceased),
        )]

    def _stays(self, adm: Admission, rng: np.random.Generator) -> list[list[Any]]:
        """[unit, bed, start minute, end minute or None] for every stretch of the encounter."""

        def bed(unit: str) -> str:
            return f"{T.BED_PREFIX[unit]}-{int(rng.integers(1, T.BEDS_PER_UNIT[unit] + 1)):02d}"

        stays: list[list[Any]] = [[adm.unit, bed(adm.unit), adm.start, None]]
        for at, kind in adm.events:
            minute = math.ceil(at)
            stays[-1][3] = minute  # every event ends the current stretch
            if kind == "icu":
                stays.append([T.ICU, bed(T.ICU), minute, None])
            elif kind == "stepdown":
                stays.append([adm.unit, bed(adm.unit), minute, None])
        return stays

    def _encounter(self, adm: Admission, stays: list[list[Any]], now: int) -> list[dict[str, Any]]:
        iso = self.clock.iso
        shown = [R.Stay(unit, bed, iso(start), iso(end) if end is not None and end <= now else None)
                 for unit, bed, start, end in stays if start <= now]
        ended = adm.end is not None and adm.end <= now
        return [R.encounter(
            id=adm.encounter_id, patient_ref=adm.patient.reference, encounter_class="IMP",
            priority=adm.priority, start=iso(adm.start),
            end=iso(adm.end) if ended and adm.end is not None else None, stays=shown,
            disposition=adm.disposition if ended else None,
        )]

    def _ed_visit(self, adm: Admission, ids: IdPool, start: int, end: int,
                  rng: np.random.Generator) -> list[dict[str, Any]]:
        iso = self.clock.iso
        bed = f"ED-{int(rng.integers(1, T.BEDS_PER_UNIT[T.EMERGENCY] + 1)):02d}"
        return [R.encounter(
            id=ids.next(), patient_ref=adm.patient.reference, encounter_class="EMER", priority="EM",
            start=iso(start), end=iso(end), stays=[R.Stay(T.EMERGENCY, bed, iso(start), iso(end))],
            disposition="home",
        )]

    def _condition(self, adm: Admission, ids: IdPool, code: str, display: str, category: str, onset: str,
                   recorded: str) -> list[dict[str, Any]]:
        return [R.condition(id=ids.next(), patient_ref=adm.patient.reference, encounter_ref=adm.reference,
                            code=code, display=display, category=category, onset=onset, recorded=recorded)]

    # --- vitals ----------------------------------------------------------------------------------------
    def _add_vitals(self, adm: Admission, rng: np.random.Generator, ids: IdPool, add: _Add,
                    last_minute: int) -> None:
        minutes = adm.vitals
        s = adm.severity[(minutes - adm.start) // HOUR]
        measured_values = measure_vitals(rng, s, adm.patient.baseline, adm.phenotype,
                                         confused=adm.patient.has("dementia"))
        values = {name: column.tolist() for name, column in measured_values.items()}
        fahrenheit = (rng.random(len(minutes)) < FAHRENHEIT_SHARE).tolist()
        for j, minute in enumerate(minutes.tolist()):
            add(minute, "Observation", partial(self._vitals_set, adm, ids, minute, values, j, fahrenheit[j]))
        measured = adm.start + int(rng.integers(15, 61))
        if measured <= last_minute:
            base = adm.patient.baseline
            weight = float(finish("body_weight", np.asarray(base["body_weight"] + rng.normal(0, 0.8))))
            height = float(finish("body_height", np.asarray(base["body_height"])))
            pounds = bool(rng.random() < POUNDS_SHARE)
            add(measured, "Observation", partial(self._body_size, adm, ids, measured, weight, height, pounds))

    def _vitals_set(self, adm: Admission, ids: IdPool, minute: int, values: dict[str, list[float]], j: int,
                    fahrenheit: bool) -> list[dict[str, Any]]:
        v = self._vars
        when = self.clock.iso(minute)
        p_ref, e_ref = adm.patient.reference, adm.reference
        temperature = values["temperature"][j]
        if fahrenheit:
            temp_value, temp_unit = round(temperature * 9.0 / 5.0 + 32.0, 1), "[degF]"
        else:
            temp_value, temp_unit = temperature, "Cel"

        def obs(name: str, value: float | int, unit: str | None = None) -> dict[str, Any]:
            var = v[name]
            return R.observation(id=ids.next(), variable=var, value=value, ucum=unit or var.unit,
                                 patient_ref=p_ref, encounter_ref=e_ref, effective=when)

        return [
            obs("heart_rate", int(values["heart_rate"][j])),
            obs("respiratory_rate", int(values["respiratory_rate"][j])),
            obs("spo2", int(values["spo2"][j])),
            R.blood_pressure(id=ids.next(), systolic=v["systolic_bp"], diastolic=v["diastolic_bp"],
                             systolic_value=int(values["systolic_bp"][j]),
                             diastolic_value=int(values["diastolic_bp"][j]),
                             patient_ref=p_ref, encounter_ref=e_ref, effective=when),
            obs("temperature", temp_value, temp_unit),
            obs("gcs_total", int(values["gcs_total"][j])),
            obs("oxygen_flow", values["oxygen_flow"][j]),
        ]

    def _body_size(self, adm: Admission, ids: IdPool, minute: int, weight: float, height: float,
                   pounds: bool) -> list[dict[str, Any]]:
        v = self._vars
        when = self.clock.iso(minute)
        weight_value, weight_unit = (round(weight / 0.45359237, 1), "[lb_av]") if pounds else (weight, "kg")
        return [
            R.observation(id=ids.next(), variable=v["body_weight"], value=weight_value, ucum=weight_unit,
                          patient_ref=adm.patient.reference, encounter_ref=adm.reference, effective=when),
            R.observation(id=ids.next(), variable=v["body_height"], value=int(height), ucum="cm",
                          patient_ref=adm.patient.reference, encounter_ref=adm.reference, effective=when),
        ]

    # --- labs -------------------------------------------------------------------------------------------
    def _add_labs(self, adm: Admission, rng: np.random.Generator, ids: IdPool, add: _Add,
                  stop: float) -> None:
        """An admission panel, a morning panel every day and an evening one when sick or in the ICU."""
        collected = [adm.start + int(rng.integers(20, 61))]
        midnight = adm.start - self.clock.minute_of_day(adm.start)
        while midnight < stop:
            for base_minute, spread, evening in ((5 * HOUR, 90, False), (17 * HOUR, 60, True)):
                at = midnight + base_minute + int(rng.integers(0, spread + 1))
                if at >= stop or at - collected[-1] < 6 * HOUR:
                    continue
                if evening:
                    hour = (at - adm.start) // HOUR
                    sick = adm.location[hour] != WARD or float(softplus(adm.severity[hour])) >= 1.8
                    if not sick:
                        continue
                collected.append(at)
            midnight += DAY
        collected = [c for c in collected if c < stop]
        if not collected:
            return
        times = np.array(collected)
        values = {k: col.tolist() for k, col in measure_labs(rng, adm.severity[(times - adm.start) // HOUR],
                                                             adm.patient.baseline, adm.phenotype).items()}
        turnaround = rng.integers(40, 121, size=len(collected)).tolist()
        for j, at in enumerate(collected):
            issued = at + turnaround[j]
            add(issued, "Observation", partial(self._lab_panel, adm, ids, at, issued, values, j))

    def _lab_panel(self, adm: Admission, ids: IdPool, collected: int, issued: int,
                   values: dict[str, list[float]], j: int) -> list[dict[str, Any]]:
        effective, issued_at = self.clock.iso(collected), self.clock.iso(issued)
        out = []
        for name in LABS:
            var = self._vars[name]
            value = values[name][j]
            out.append(R.observation(
                id=ids.next(), variable=var, value=int(value) if DECIMALS[name] == 0 else value,
                ucum=var.unit, patient_ref=adm.patient.reference, encounter_ref=adm.reference,
                effective=effective, issued=issued_at,
            ))
        return out

    # --- imaging ----------------------------------------------------------------------------------------
    def _add_imaging(self, adm: Admission, rng: np.random.Generator, ids: IdPool, add: _Add,
                     stop: float) -> None:
        """Chest imaging on arrival for some diagnoses, when breathing worsens on the ward, and on
        arrival in the ICU. Findings follow the respiratory load at the time of the study."""
        studies: list[tuple[int, bool]] = []  # (minute, is CT)
        if rng.random() < adm.diagnosis.imaging_at_admission:
            studies.append((adm.start + int(rng.integers(30, 241)), bool(rng.random() < 0.1)))
        load = softplus(adm.severity) * adm.phenotype.respiratory
        for k in np.flatnonzero((load >= 2.0) & (adm.location == WARD)).tolist():
            at = adm.start + k * HOUR + int(rng.integers(0, 60))
            recent = any(at - s < DAY for s, _ in studies if s <= at)
            if not recent and rng.random() < 0.08:
                studies.append((at, bool(rng.random() < 0.25)))
        for moved_at, kind in adm.events:
            if kind == "icu" and rng.random() < 0.6:
                studies.append((math.ceil(moved_at) + int(rng.integers(20, 91)), False))
        for at, is_ct in sorted(studies):
            if at >= stop:
                continue
            s = float(adm.severity[(at - adm.start) // HOUR])
            finding = self._finding(adm, float(softplus(s)) * adm.phenotype.respiratory, rng)
            issued = at + int(rng.integers(20, 181))
            study_id, report_id = ids.next(), ids.next()
            procedure = T.CHEST_CT if is_ct else T.CHEST_XRAY
            uids = [dicom_uid(rng) for _ in range(1 + len(procedure[4]))]
            accession = f"ACC{int(rng.integers(10**9, 10**10))}"
            add(at, "ImagingStudy", partial(self._study, adm, study_id, procedure, uids, accession, at))
            add(issued, "DiagnosticReport", partial(self._report, adm, report_id, study_id, procedure, at,
                                                    issued, finding))

    @staticmethod
    def _finding(adm: Admission, respiratory_load: float, rng: np.random.Generator) -> T.Finding:
        grade = int(np.searchsorted([0.8, 1.6, 3.0], respiratory_load, side="right"))
        if rng.random() < 0.15:  # reader variability
            grade = min(3, max(0, grade + (1 if rng.random() < 0.5 else -1)))
        code = adm.diagnosis.code
        if grade == 0:
            return T.NORMAL
        if code == T.COVID_CODE:
            return T.COVID_PNEUMONIA
        if code.startswith("I50") or (adm.patient.has("heart_failure") and grade == 1):
            return T.EDEMA
        if grade == 1:
            return T.ATELECTASIS
        if grade == 2:
            return T.CONSOLIDATION_EFFUSION if rng.random() < 0.3 else T.CONSOLIDATION
        return T.BILATERAL

    def _study(self, adm: Admission, study_id: str, procedure: tuple[Any, ...], uids: list[str],
               accession: str, at: int) -> list[dict[str, Any]]:
        _, _, modality, description, series = procedure
        return [R.imaging_study(
            id=study_id, study_uid=uids[0], accession=accession, patient_ref=adm.patient.reference,
            encounter_ref=adm.reference, started=self.clock.iso(at), modality=modality,
            description=description,
            series=[R.Series(uid, text, n) for uid, (text, n) in zip(uids[1:], series, strict=True)],
        )]

    def _report(self, adm: Admission, report_id: str, study_id: str, procedure: tuple[Any, ...], at: int,
                issued: int, finding: T.Finding) -> list[dict[str, Any]]:
        return [R.imaging_report(
            id=report_id, loinc=procedure[0], loinc_display=procedure[1], patient_ref=adm.patient.reference,
            encounter_ref=adm.reference, effective=self.clock.iso(at), issued=self.clock.iso(issued),
            study_id=study_id, finding=finding,
        )]
