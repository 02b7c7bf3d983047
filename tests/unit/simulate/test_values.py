"""Every value is plausible after unit normalisation, and the wearable lines follow the documented format."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path

import orjson

from carecast.domain.variables import by_loinc, catalogue, conversion
from carecast.simulate import SimulationSummary
from carecast.simulate.wearables import READING_TYPES, WearableBatch

from .conftest import read_ndjson


def _check(code: str, value: float, unit: str) -> str:
    variable = by_loinc()[code]
    conv = conversion(variable, unit)
    assert conv is not None, (variable.name, unit)
    canonical = conv.apply(value)
    assert variable.min_plausible <= canonical <= variable.max_plausible, (variable.name, canonical)
    return variable.name


def test_observation_values_are_plausible_after_conversion(small_run: tuple[Path, SimulationSummary]) -> None:
    root, _ = small_run
    units: Counter[tuple[str, str]] = Counter()
    for obj in read_ndjson(root / "Observation.ndjson"):
        quantities = [c for c in obj.get("component", [])] or [obj]
        for part in quantities:
            q = part["valueQuantity"]
            name = _check(part["code"]["coding"][0]["code"], q["value"], q["code"])
            units[(name, q["code"])] += 1
    names = {name for name, _ in units}
    assert names >= {"heart_rate", "respiratory_rate", "spo2", "systolic_bp", "diastolic_bp", "temperature",
                     "gcs_total", "oxygen_flow", "body_weight", "body_height", "lactate", "creatinine", "wbc",
                     "hemoglobin", "platelets", "sodium", "potassium", "bilirubin", "crp", "glucose",
                     "urea_nitrogen"}
    # A small share of temperatures in Fahrenheit and weights in pounds exercises unit normalisation.
    temps = units[("temperature", "Cel")] + units[("temperature", "[degF]")]
    assert 0 < units[("temperature", "[degF]")] < 0.1 * temps
    assert units[("body_weight", "[lb_av]")] > 0 or units[("body_weight", "kg")] > 0


def test_weights_appear_in_both_units(medium_run: tuple[Path, SimulationSummary]) -> None:
    root, _ = medium_run
    weights = Counter(o["valueQuantity"]["code"] for o in read_ndjson(root / "Observation.ndjson")
                      if o["code"]["coding"][0]["code"] == "29463-7")
    assert weights["kg"] > weights["[lb_av]"] > 0


def test_wearable_lines_follow_the_documented_format(small_run: tuple[Path, SimulationSummary]) -> None:
    root, summary = small_run
    units = {kind: unit for kind, unit, _ in READING_TYPES}
    patients = {f"Patient/{p['id']}" for p in read_ndjson(root / "Patient.ndjson")}
    variables = catalogue()
    lines = (root / "wearables.jsonl").read_bytes().splitlines()
    assert len(lines) == summary.counts["wearables"] > 0
    times_by_device: dict[str, list[str]] = {}
    for raw in lines:
        reading = orjson.loads(raw)
        assert list(reading) == ["device_id", "patient", "type", "value", "unit", "time"]
        assert reading["device_id"].startswith("WX-")
        assert reading["patient"] in patients
        assert reading["unit"] == units[reading["type"]]
        assert isinstance(reading["value"], int)
        assert reading["time"].endswith(":00Z")
        variable = variables[reading["type"]]
        assert variable.min_plausible <= reading["value"] <= variable.max_plausible
        assert orjson.dumps(reading) == raw  # compact, exactly as orjson would write it
        times_by_device.setdefault(reading["device_id"], []).append(reading["time"])
    # Some exact duplicates and some late (out-of-order) lines, to exercise deduplication.
    duplicates = len(lines) - len(set(lines))
    assert 0 < duplicates < 0.02 * len(lines)
    late = sum(1 for times in times_by_device.values() for a, b in pairwise(times) if b < a)
    assert late > 0


def test_minute_rate_per_device(small_run: tuple[Path, SimulationSummary]) -> None:
    root, _ = small_run
    per: Counter[tuple[str, str]] = Counter()
    minutes: dict[str, set[str]] = {}
    for raw in set((root / "wearables.jsonl").read_bytes().splitlines()):
        reading = orjson.loads(raw)
        per[(reading["device_id"], reading["type"])] += 1
        minutes.setdefault(reading["device_id"], set()).add(reading["time"])
    for device, seen in minutes.items():
        # One reading per minute and type; a few late lines may still be waiting for their upload at the
        # end of the window.
        for kind in ("heart_rate", "spo2", "steps"):
            assert 0.97 * len(seen) <= per[(device, kind)] <= len(seen)
        fifth = sum(1 for t in seen if int(t[14:16]) % 5 == 0)
        assert 0.97 * fifth <= per[(device, "respiratory_rate")] <= fifth


def test_wearable_batch_readings_round_trip() -> None:
    payload = b'{"device_id":"WX-1","patient":"Patient/p","type":"spo2","value":97,"unit":"%",' \
              b'"time":"2026-01-05T00:00:00Z"}\n'
    batch = WearableBatch("WX-1", "Patient/p", payload, 1)
    assert batch.readings() == [{"device_id": "WX-1", "patient": "Patient/p", "type": "spo2", "value": 97,
                                 "unit": "%", "time": "2026-01-05T00:00:00Z"}]
