"""Whatever shape a field arrives in, the FHIR decoder either decodes the resource or names the field:
it never raises anything else (a crash would lose the good records of a file)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests import factories as F

from carecast.ingest.common import FieldProblem
from carecast.ingest.fhir import Refs, decode_bundle, decode_resource

ODD_VALUES: list[Any] = [None, 0, -1.5, True, "", "x", [], ["a"], [{"code": ["MR"]}], {}, {"code": {}},
                         {"reference": 3}, [[1]], "2026-13-45", "Patient/"]
RESOURCES = [F.patient("p1"), F.encounter(units=(("Ward A", "2026-01-05T08:00:00Z"), ("ICU", "2026-01-06T00:00:00Z")),
                                          disposition="exp", end="2026-01-07T00:00:00Z"),
             F.vital("o1", "8867-4", 80, "/min"), F.blood_pressure("bp", 120, 80), F.condition("c1")]


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _replaced(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(obj)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


CASES = [(i, path, j) for i, res in enumerate(RESOURCES) for path in _paths(res) for j in range(len(ODD_VALUES))
         if path != ("resourceType",)]


@pytest.mark.parametrize("case", range(0, len(CASES), 7))
def test_every_field_in_every_odd_shape(case: int) -> None:
    for i, path, j in CASES[case : case + 7]:
        resource = _replaced(RESOURCES[i], path, ODD_VALUES[j])
        with contextlib.suppress(FieldProblem):
            decode_resource(resource, Refs())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["resourceType", "type", "entry", "id"]), json_values, max_size=4))
def test_bundles_of_anything_never_crash(doc: dict[str, Any]) -> None:
    doc["resourceType"] = "Bundle"
    unit = decode_bundle(doc, "b.json")
    for r in unit.rejections:
        assert r.reason
