"""OpenAPI-driven fuzzing of API v1: schemathesis generates requests from `/api/v1/openapi.json` (valid ones
and, just as many, invalid ones) and sends them to the app built as the other serving tests build it.

For every operation, every response must be no server error (5xx), carry a declared status code and content
type, and match the declared response schema. Each operation is called with a token of a role that holds
its declared permission (`x-permission`); the path parameters `uid` and `task` are often replaced by a seeded
patient (visible or not) or a known task, so the fuzzer reaches past the 404s into the answers themselves.
`GET /api/v1/stream` is excluded: it is an endless Server-Sent Events response.

CARECAST_FUZZ_EXAMPLES sets the examples per operation (default 60, kept short for CI); the runs are
derandomized, so a failure is reproduced by running the test again. A run does not stop at the first
failure: it reports every distinct one (by check, status and, for a 500, the server's logged stack frames)
with a curl command reproducing it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from pydicom.data import get_testdata_file
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from carecast.config import Settings
from carecast.models.tasks import TASKS
from carecast.security.permissions import ROLE_PERMISSIONS, ROLES
from carecast.serving.api_v1 import API_TITLE, API_VERSION
from carecast.serving.api_v1 import bp as api_v1
from carecast.serving.openapi import build_spec
from tests import factories as F
from tests.unit.serving.conftest import FakePredictor, Hospital

SPEC_PATH = "/api/v1/openapi.json"
EXCLUDED_PATHS = frozenset({"/api/v1/stream"})  # an endless SSE response: no request to it ever finishes
EXAMPLES = max(1, int(os.environ.get("CARECAST_FUZZ_EXAMPLES", "60")))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_REPORTED = 5  # distinct failures shown per operation


# -- bodies schemathesis cannot derive from a schema (NDJSON and DICOM are declared as binary) --------------------

_JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=20)
_JSON = st.recursive(_JSON_LEAF, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=8)
_FEATURE_VALUE = st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
_GARBAGE_LINE = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" "))


def _ndjson(lines: SearchStrategy[Any]) -> SearchStrategy[bytes]:
    """Lines of JSON (plausible, broken or arbitrary) and the odd line that is not JSON at all."""
    line = st.one_of(lines, _JSON).map(lambda v: json.dumps(v).encode()) | _GARBAGE_LINE
    return st.lists(line, min_size=0, max_size=6).map(lambda ls: b"\n".join(ls) + b"\n")


def _patched(base: dict[str, Any]) -> SearchStrategy[dict[str, Any]]:
    """`base` with some of its fields replaced by arbitrary JSON or dropped."""
    keys = sorted(base)
    return st.tuples(st.dictionaries(st.sampled_from(keys), _JSON, max_size=2),
                     st.sets(st.sampled_from(keys), max_size=2)).map(
        lambda ch: {k: v for k, v in {**base, **ch[0]}.items() if k not in ch[1]})


_FHIR_RESOURCES = st.sampled_from([
    F.patient("a1"), F.patient("fz1"), F.encounter("efz", "a1", units=(("Ward A", "2026-01-05T08:00:00Z"),)),
    F.vital("ofz1", "8867-4", 88, "/min", pid="a1", eid="ea1"), F.vital("ofz2", "9279-1", 30, "/min", pid="b1"),
    F.blood_pressure("ofz3", 120, 80, pid="a2"), F.condition("cfz", pid="a1"),
]).flatmap(_patched)
_READING = {"device_id": "W-FZ", "patient": "Patient/a1", "type": "heart_rate", "value": 90, "unit": "/min",
            "time": "2026-01-05T10:01:00Z"}
_READINGS = _patched(_READING) | st.fixed_dictionaries({
    "device_id": st.text(max_size=12), "patient": st.sampled_from(["Patient/a1", "Patient/b1", "Patient/none", ""]),
    "type": st.sampled_from(["heart_rate", "8867-4", "spo2", "steps", "respiratory_rate"]),
    "value": st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=5),
    "unit": st.sampled_from(["/min", "%", "bpm", ""]), "time": st.text(max_size=25) | st.datetimes().map(str)})


def _mutated(seed: bytes) -> SearchStrategy[bytes]:
    """A DICOM file cut short and with a few bytes overwritten."""
    flips = st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), max_size=6)

    def mutate(cut: int, changes: list[tuple[int, int]]) -> bytes:
        data = bytearray(seed)
        for at, value in changes:
            data[at] = value
        return bytes(data[:cut])

    return st.builds(mutate, st.integers(0, len(seed)), flips)


def _dicom_seed(name: str) -> bytes:
    """A file pydicom ships, its PatientID set to the MRN of seeded patient a1 (so it can be stored)."""
    found = get_testdata_file(name, download=False)
    assert isinstance(found, str), name
    dataset = pydicom.dcmread(found)
    dataset.PatientID = f"{F.SECRET_IDENTIFIERS['mrn']}-a1"
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


_DICOM_SEEDS = [_dicom_seed(n) for n in ("MR_small.dcm", "rtplan.dcm", "test-SR.dcm")]
_DICOM = st.one_of(st.sampled_from(_DICOM_SEEDS), *(_mutated(s) for s in _DICOM_SEEDS), st.binary(max_size=512),
                   st.binary(max_size=512).map(lambda b: b"\0" * 128 + b"DICM" + b))
schemathesis.openapi.media_type("application/dicom", _DICOM)
# One strategy per media type: FHIR NDJSON and wearable readings share application/x-ndjson, so their lines mix
# (a decoder meeting the other's lines is one more kind of bad input).
schemathesis.openapi.media_type("application/x-ndjson", _ndjson(_FHIR_RESOURCES | _READINGS),
                                aliases=("application/fhir+ndjson",))


def _declared_operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every operation of the OpenAPI document, read from the route declarations."""
    bare = Flask("carecast-fuzz-collect")
    bare.register_blueprint(api_v1)
    spec = build_spec(bare, api_v1.name, title=API_TITLE, version=API_VERSION)
    return sorted((method.upper(), path) for path, methods in spec["paths"].items() for method in methods
                  if path not in EXCLUDED_PATHS)


OPERATIONS = _declared_operations()


def _role_for(permission: str | None) -> str | None:
    """The first role granting `permission` (None for a public operation)."""
    if permission is None:
        return None
    return next(role for role in ROLES if permission in ROLE_PERMISSIONS[role])


@pytest.fixture
def backend() -> str:
    """SQLite only: the fuzzer exercises the HTTP layer; the store's two backends are tested elsewhere."""
    return "sqlite"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A rate limit no run reaches, so every case gets to the operation (429 is declared, and tested in
    test_ratelimit)."""
    return Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_ENV": "test",
                              "CARECAST_RATE_LIMIT": str(10**9)})


@pytest.fixture
def predictor() -> FakePredictor:
    """A model for every task: in a healthy deployment any 5xx is a bug (the 503 of a task without a model
    is tested in test_predict)."""
    return FakePredictor(tasks=tuple(sorted(TASKS)))


def _server_frames(records: list[logging.LogRecord]) -> str:
    """The app's own log of an unexpected error: the stack frames and exception type it logs (never a value),
    which tell one 500 from another."""
    logged = [r.getMessage() for r in records if r.name == "carecast.serving" and r.levelno >= logging.ERROR]
    return "\n".join(logged[-1].splitlines()[-3:]) if logged else "(nothing logged)"


def _steer(case: Any, data: st.DataObject, uids: list[str], features: tuple[str, ...]) -> None:
    """Often swap generated values for ones the server knows (a seeded patient, a task, the model's features),
    so cases get past "no such patient" and "unknown feature" to the answers themselves."""
    known = {"uid": [None, *uids], "task": [None, *sorted(TASKS)]}
    for name in known.keys() & (case.path_parameters or {}).keys():
        chosen = data.draw(st.sampled_from(known[name]), label=f"known {name}")
        if chosen is not None:
            case.path_parameters[name] = chosen
    if not isinstance(case.body, dict):
        return
    row = st.dictionaries(st.sampled_from(features), _FEATURE_VALUE, max_size=len(features))
    swaps = {"task": st.sampled_from(known["task"]), "features": st.none() | row,
             "rows": st.none() | st.lists(row, min_size=1, max_size=3)}
    if case.body.get("resourceType") == "Bundle":
        swaps["type"] = st.sampled_from(["transaction", "batch", "collection", "searchset", "document"])
        swaps["entry"] = st.none() | st.lists(_FHIR_RESOURCES.map(lambda r: {"resource": r}), min_size=1, max_size=4)
    for name in sorted(swaps.keys() & case.body.keys()):
        chosen = data.draw(swaps[name], label=f"known {name}")
        if chosen is not None:
            case.body[name] = chosen


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_survives_fuzzing(method: str, path: str, app: Flask, tokens: dict[str, str],
                                    hospital: Hospital, predictor: FakePredictor,
                                    caplog: pytest.LogCaptureFixture) -> None:
    schema = schemathesis.openapi.from_wsgi(SPEC_PATH, app)
    operation = schema[path][method]
    role = _role_for(operation.definition.raw.get("x-permission"))
    headers = {"Authorization": f"Bearer {tokens[role]}"} if role else {}
    uids = sorted(hospital.uids.values())
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    statuses: Counter[int] = Counter()
    positive: Counter[int] = Counter()
    failures: dict[str, str] = {}

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(case=cases, data=st.data())
    def fuzz(case: Any, data: st.DataObject) -> None:
        _steer(case, data, uids, predictor.features)
        caplog.clear()
        response = case.call(headers=headers)
        statuses[response.status_code] += 1
        if case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE:
            positive[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as exc:
            where = _server_frames(caplog.records) if response.status_code >= 500 else ""
            for failure in exc.exceptions:
                key = f"{type(failure).__name__} {response.status_code}: {failure.title} {where}"
                logged = f"\nServer log (stack frames, no values):\n{where}" if where else ""
                failures.setdefault(key, f"{exc}{logged}")

    started = time.perf_counter()
    fuzz()
    elapsed = time.perf_counter() - started
    print(f"fuzz {method} {path}: {sum(statuses.values())} cases, {len(failures)} distinct failures, "
          f"{elapsed:.1f} s, statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(list(failures.values())[:MAX_REPORTED])
    # Every valid case reached the operation: none was turned away for want of a token or by the rate limit
    # (invalid cases may drop the token on purpose: their 401 is checked like any other response).
    assert positive, f"no valid case was generated for {method} {path}"
    assert not positive.keys() & {401, 429}, f"fuzzing did not reach {method} {path}: {dict(positive)}"


def test_every_operation_but_the_stream_is_fuzzed(app: Flask) -> None:
    """The operations fuzzed (listed when the tests are collected) are those of the document the app serves."""
    with app.test_client() as client:
        spec = client.get(SPEC_PATH).get_json()
    served = {(method.upper(), path) for path, methods in spec["paths"].items() for method in methods}
    assert {("GET", p) for p in EXCLUDED_PATHS} <= served
    assert set(OPERATIONS) == {(m, p) for m, p in served if p not in EXCLUDED_PATHS}
