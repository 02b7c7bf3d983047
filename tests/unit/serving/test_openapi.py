"""The OpenAPI document covers every api_v1 route and nothing else, is structurally valid OpenAPI 3.1,
and names each operation's permission; the docs page lists them without outside assets."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from carecast.serving.auth import permission_of
from carecast.serving.openapi import Param, openapi_path, validate

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.json is not None
    return dict(response.json)


def _routes(app: Flask) -> set[tuple[str, str]]:
    return {(openapi_path(r.rule), m.lower()) for r in app.url_map.iter_rules() if r.endpoint.startswith("api_v1.")
            for m in (r.methods or set()) - {"HEAD", "OPTIONS"}}


def test_every_route_is_described_and_every_description_is_a_route(app: Flask, client: FlaskClient) -> None:
    spec = _spec(client)
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert described == _routes(app)


def test_document_structure(app: Flask, client: FlaskClient) -> None:
    spec = _spec(client)
    assert spec["openapi"].startswith("3.1.")
    assert spec["info"]["title"] and spec["info"]["version"]
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["bearerAuth"]
        ["description"]}
    seen_ids: set[str] = set()
    for path, ops in spec["paths"].items():
        assert path.startswith("/api/v1/")
        template_params = set(re.findall(r"{([^}]+)}", path))
        for method, op in ops.items():
            assert method in METHODS
            assert op["operationId"] not in seen_ids
            seen_ids.add(op["operationId"])
            assert op["summary"] and op["tags"]
            params = op.get("parameters", [])
            assert {p["name"] for p in params if p["in"] == "path"} == template_params
            assert all(p["in"] in {"path", "query"} and "schema" in p for p in params)
            assert all(p["required"] for p in params if p["in"] == "path")
            assert op["responses"], f"{method} {path} has no responses"
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status)
                assert response["description"]
                for media in response.get("content", {}).values():
                    schema = media["schema"]
                    ref = schema.get("$ref")
                    if ref:
                        assert ref.startswith("#/components/schemas/")
                        assert ref.rsplit("/", 1)[1] in spec["components"]["schemas"]
            if "requestBody" in op:
                assert op["requestBody"]["content"]


def test_permissions_in_the_document_are_the_declared_ones(app: Flask, client: FlaskClient) -> None:
    spec = _spec(client)
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("api_v1."):
            continue
        view = app.view_functions[rule.endpoint]
        method = next(iter((rule.methods or set()) - {"HEAD", "OPTIONS"})).lower()
        op = spec["paths"][openapi_path(rule.rule)][method]
        permission = permission_of(view)
        if permission is None:
            assert op["security"] == [] and "x-permission" not in op
        else:
            assert op["x-permission"] == str(permission)
            assert {"401", "403"} <= set(op["responses"])


def test_docs_page_lists_every_operation_without_outside_assets(client: FlaskClient) -> None:
    spec = _spec(client)
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for path in spec["paths"]:
        assert f"<code>{path}</code>" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


_ROW = {"type": "object", "additionalProperties": {"type": ["number", "string", "boolean", "null"]}}


@pytest.mark.parametrize(("schema", "value", "expected"), [
    ({"type": "object", "required": ["a"]}, {}, [("a", "required field is missing")]),
    ({"type": "string", "maxLength": 3}, "secret-value", [("(body)", "longer than 3 characters")]),
    ({"type": "array", "items": {"type": "integer"}}, [1, "x"], [("[1]", "expected an integer")]),
    ({"type": "object", "additionalProperties": False}, {"bad key!": 1}, [("(key)", "unknown field")]),
    ({"type": "number", "minimum": 0}, float("nan"), [("(body)", "expected a number")]),
    ({"type": ["string", "null"]}, None, []),
    # a feature row: one scalar schema for every member (the validator's fast path) must still name each bad one
    (_ROW, {"a": 1, "b": 2.5, "c": "x", "d": True, "e": None}, []),
    (_ROW, {"a": 1, "b": [1]}, [("b", "expected a number or a string or true or false or null")]),
    (_ROW, {"a": float("inf"), "b": {"x": 1}}, [("a", "expected a number or a string or true or false or null"),
                                               ("b", "expected a number or a string or true or false or null")]),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, {"a": 1, "b": 1.5, "c": True},
     [("b", "expected an integer"), ("c", "expected an integer")]),
])
def test_validator_names_fields_never_values(schema: dict[str, Any], value: Any,
                                             expected: list[tuple[str, str]]) -> None:
    problems = validate(schema, value)
    assert [(p.field, p.reason) for p in problems] == expected
    assert all("secret" not in p.reason for p in problems)


@pytest.mark.parametrize("text", [b'{"a": 1e400}', b'{"a": -1e999}', b'{"a": NaN}', b'{"a": Infinity}'])
def test_parsed_bodies_skip_the_infinity_check_because_the_parser_refuses_infinity(text: bytes) -> None:
    # json_body validates with parsed=True, which trusts that orjson never yields a non-finite number
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    row = {"a": 1.5, "b": None, "c": "x"}
    assert validate(_ROW, row, parsed=True) == validate(_ROW, row) == []
    # the default still names what parsed=True trusts the parser to have refused
    assert [p.field for p in validate(_ROW, {"a": float("inf")})] == ["a"]
    assert validate(_ROW, {"a": float("inf")}, parsed=True) == []


def test_param_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Param("x", {}).name = "y"  # type: ignore[misc]
