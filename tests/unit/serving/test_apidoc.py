"""The API reference in docs/serving.md is the app's OpenAPI document in Markdown: out of date, this fails
(run `make docs`). The renderer shows every operation, parameter, body field and error status it is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from carecast.serving import apidoc
from carecast.serving.apidoc import END, START, markdown_reference, replace_section, section

SERVING_MD = Path(__file__).resolve().parents[3] / "docs" / "serving.md"


def test_serving_md_is_up_to_date_with_the_apps_spec(client: FlaskClient) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.json is not None
    served = dict(response.json)
    # `make docs` builds the document without a database; it must be the very one the app serves
    assert apidoc.api_spec() == served
    current = section(SERVING_MD.read_text(encoding="utf-8"))
    assert current == markdown_reference(served), "docs/serving.md's API reference is out of date: run `make docs`"
    for path, methods in served["paths"].items():
        for method in methods:
            assert f"#### {method.upper()} {path}\n" in current


SMALL_SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Test API", "version": "9.9"},
    "tags": [{"name": "things"}],
    "paths": {
        "/api/v1/things/{uid}": {
            "post": {
                "operationId": "update_thing", "summary": "Change a thing", "tags": ["things"],
                "x-permission": "thing:write",
                "description": "Changes it once.\n\nRequires permission `thing:write`.",
                "parameters": [
                    {"name": "uid", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}},
                    {"name": "limit", "in": "query", "required": False, "description": "Page | size",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 50}},
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["kind"], "additionalProperties": False,
                    "properties": {
                        "kind": {"type": "string", "enum": ["a", "b"]},
                        "items": {"type": "array", "maxItems": 3, "items": {
                            "type": "object", "properties": {"at": {"type": ["string", "null"],
                                                                    "format": "date-time"}}}},
                    }}}}},
                "responses": {
                    "200": {"description": "Success", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"resourceType": {"const": "Bundle"}}}}}},
                    "404": {"description": "Unknown thing",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                },
            },
        },
        "/api/v1/ping": {"get": {"operationId": "ping", "summary": "Ping", "tags": ["meta"], "security": [],
                                 "responses": {"200": {"description": "Success", "content": {
                                     "text/plain": {"schema": {"type": "string"}}}}}}},
    },
    "components": {"schemas": {"Error": {"type": "object", "required": ["message"],
                                         "properties": {"message": {"type": "string"}}}},
                   "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
}


def test_an_operation_is_rendered_with_its_permission_parameters_body_response_and_errors() -> None:
    text = markdown_reference(SMALL_SPEC)
    lines = text.splitlines()
    assert "Test API 9.9 (OpenAPI 3.1.0)" in lines[0]
    assert "| [`POST /api/v1/things/{uid}`](#post-apiv1thingsuid) | `thing:write` | Change a thing |" in lines
    assert "| [`GET /api/v1/ping`](#get-apiv1ping) | `public` | Ping |" in lines
    # tags in the document's order, then the ones only operations name
    assert text.index("### Things") < text.index("### Meta")
    assert "#### POST /api/v1/things/{uid}" in lines and "Changes it once." in lines
    assert "- Permission: `thing:write`" in lines and "- Permission: none (public)" in lines
    assert not any("Requires permission" in line for line in lines)  # shown once, as the permission line
    assert "| `uid` | path | string | yes | max length 64 |  |" in lines
    assert "| `limit` | query | integer |  | min 1; max 5,000; default `50` | Page \\| size |" in lines
    assert "A JSON object (no other fields):" in lines
    assert "| `kind` | string | yes | one of `a`, `b` |" in lines
    assert "| `items` | array of object |  | max items 3 |" in lines
    assert "| `items[].at` | string or null (date-time) |  |  |" in lines
    assert "| `resourceType` | string |  | always `Bundle` |" in lines
    assert "Response **200** (`text/plain`):" in lines and "Type: string." in lines
    assert "Error statuses: 404." in lines
    assert "| 404 | Unknown thing |" in lines
    assert "| `message` | string | yes |  |" in lines


def test_replace_section_keeps_everything_outside_the_markers() -> None:
    text = f"# Title\n\nbefore\n\n{START}\nold text\n{END}\n\nafter\n"
    updated = replace_section(text, "new text\n")
    assert updated == f"# Title\n\nbefore\n\n{START}\n\nnew text\n\n{END}\n\nafter\n"
    assert replace_section(updated, "new text") == updated
    assert section(updated) == "new text"


@pytest.mark.parametrize("text", ["no markers", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"])
def test_replace_section_refuses_missing_or_misplaced_markers(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        replace_section(text, "x")


def test_main_checks_then_rewrites_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "serving.md"
    stale = f"# Serving\n\n{START}\nstale\n{END}\n"
    page.write_text(stale, encoding="utf-8")
    assert apidoc.main([str(page), "--check"]) == 1
    assert page.read_text(encoding="utf-8") == stale
    assert "out of date" in capsys.readouterr().err
    assert apidoc.main([str(page)]) == 0
    assert section(page.read_text(encoding="utf-8")) == markdown_reference(apidoc.api_spec())
    assert apidoc.main([str(page), "--check"]) == 0
