"""Shared pieces of every decoder: time parsing, unit normalisation, plausibility checks.

A decoder problem is raised as FieldProblem(field, reason) and turned into a Rejection that names
the record and the field, never the value.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any

from carecast.domain import variables as V
from carecast.domain.records import ObservationRecord, Rejection, Source


class FieldProblem(Exception):
    """A problem with one field of one record. `reason` must not contain the field's value."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def rejection(self, where: str, resource_type: str | None, raw: bytes | None = None) -> Rejection:
        return Rejection(where=where, reason=self.reason, field=self.field,
                         resource_type=resource_type, raw=raw)


def require(obj: dict[str, Any], key: str, path: str) -> Any:
    value = obj.get(key)
    if value is None or value == "" or value == [] or value == {}:
        raise FieldProblem(path, "required field is missing")
    return value


def as_dict(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldProblem(path, "expected a JSON object")
    return value


def as_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise FieldProblem(path, "expected a JSON array")
    return value


def as_str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FieldProblem(path, "expected a non-empty string")
    return value.strip()


def parse_datetime(value: Any, path: str) -> datetime:
    """A FHIR dateTime/instant as aware UTC. A date alone means its midnight UTC; a time without
    an offset is refused (FHIR requires one when a time is given)."""
    if not isinstance(value, str) or not value:
        raise FieldProblem(path, "expected a date-time string")
    text = value.strip()
    try:
        if len(text) == 4:
            parsed = datetime(int(text), 1, 1, tzinfo=UTC)
        elif len(text) == 7:
            parsed = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        elif len(text) == 10:
            parsed = datetime.fromisoformat(text).replace(tzinfo=UTC)
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FieldProblem(path, "not a valid date-time") from None
    if parsed.tzinfo is None:
        raise FieldProblem(path, "date-time has no time-zone offset")
    if not 1900 <= parsed.year <= 2200:
        raise FieldProblem(path, "date-time outside the years 1900-2200")
    return parsed.astimezone(UTC)


def parse_date(value: Any, path: str) -> date:
    if not isinstance(value, str):
        raise FieldProblem(path, "expected a date string")
    try:
        if len(value) == 4:
            parsed = date(int(value), 1, 1)
        elif len(value) == 7:
            parsed = date(int(value[:4]), int(value[5:7]), 1)
        else:
            parsed = date.fromisoformat(value[:10])
    except ValueError:
        raise FieldProblem(path, "not a valid date") from None
    if not 1880 <= parsed.year <= 2200:
        raise FieldProblem(path, "date outside the years 1880-2200")
    return parsed


def as_number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise FieldProblem(path, "expected a number") from None
        else:
            raise FieldProblem(path, "expected a number")
    else:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range (the stdlib JSON reader keeps big integers)
            raise FieldProblem(path, "expected a finite number") from None
    if not math.isfinite(number):
        raise FieldProblem(path, "expected a finite number")
    return number


def normalise(variable: V.Variable, value: float, unit: str | None, value_path: str,
              unit_path: str) -> float:
    """Bring a value to the variable's canonical unit and check it is plausible."""
    if unit is None or unit == "":
        raise FieldProblem(unit_path, f"unit is missing (expected {variable.unit})")
    conv = V.conversion(variable, unit)
    if conv is None:
        shown = repr(unit) if len(unit) <= 16 and unit.isprintable() else "given"
        raise FieldProblem(unit_path, f"unit {shown} cannot be converted to {variable.unit} "
                                      f"for {variable.name}")
    canonical = conv.apply(value)
    if not variable.min_plausible <= canonical <= variable.max_plausible:
        raise FieldProblem(value_path, f"{variable.name} outside the plausible range "
                                       f"{variable.min_plausible:g}-{variable.max_plausible:g} {variable.unit}")
    return canonical


def observation(*, natural_key: str, patient_ref: str, variable: V.Variable, code_system: str,
                code: str, value: float, unit: str | None, effective_at: datetime, source: Source,
                encounter_ref: str | None = None, device_serial: str | None = None,
                value_path: str = "value", unit_path: str = "unit") -> ObservationRecord:
    """Build a normalised ObservationRecord or raise FieldProblem."""
    canonical = normalise(variable, value, unit, value_path, unit_path)
    return ObservationRecord(
        natural_key=natural_key, patient_ref=patient_ref, variable=variable.name,
        code_system=code_system, code=code, value=canonical, unit=variable.unit,
        effective_at=effective_at, source=source, category=variable.category,
        encounter_ref=encounter_ref, device_serial=device_serial,
    )
