"""The API described where it is declared: each view carries an `Operation` (method, path, permission,
query parameters, request and response schemas), from which the OpenAPI 3.1 document, the docs page,
query-string parsing and request-body validation are all derived. Nothing is maintained twice.

The validator covers the small part of JSON Schema the declarations use (type, enum, required,
properties, additionalProperties, items, min/max lengths, sizes and values). Its reasons name the
field, never the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from flask import Blueprint, Flask, current_app, request
from markupsafe import escape

from carecast.serving.auth import permission_of
from carecast.serving.errors import (
    ApiError,
    BadRequest,
    FieldError,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)

F = TypeVar("F", bound=Callable[..., Any])

OPERATION_ATTR = "_carecast_operation"
JSON = "application/json"
DEFAULT_JSON_BODY_BYTES = 1 * 1024 * 1024
_SAFE_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_RULE_PARAM = re.compile(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
_PATH_PARAM_SCHEMA = {"uid": {"type": "string", "maxLength": 64}, "task": {"type": "string", "maxLength": 64}}


@dataclass(frozen=True)
class Param:
    """A query-string parameter."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Body:
    """A request body: accepted content types, its JSON schema (None for NDJSON or binary) and size limit."""

    content_types: tuple[str, ...] = (JSON,)
    schema: dict[str, Any] | None = None
    max_bytes: int = DEFAULT_JSON_BODY_BYTES
    description: str = ""


@dataclass(frozen=True)
class Operation:
    method: str
    rule: str
    operation_id: str
    summary: str
    tag: str
    description: str = ""
    query: tuple[Param, ...] = ()
    body: Body | None = None
    response: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    status: int = 200
    response_type: str = JSON
    errors: tuple[int, ...] = ()


class Operations:
    """Declares the operations of one blueprint: `@ops.get(...)` registers the route and its description."""

    def __init__(self, blueprint: Blueprint) -> None:
        self.blueprint = blueprint

    def operation(self, method: str, rule: str, *, summary: str, tag: str, description: str = "",
                  query: tuple[Param, ...] = (), body: Body | None = None, response: dict[str, Any] | None = None,
                  status: int = 200, response_type: str = JSON, errors: tuple[int, ...] = ()) -> Callable[[F], F]:
        def decorate(view: F) -> F:
            op = Operation(method=method.upper(), rule=rule, operation_id=view.__name__, summary=summary, tag=tag,
                           description=description, query=query, body=body,
                           response=response or {"type": "object"}, status=status, response_type=response_type,
                           errors=errors)
            setattr(view, OPERATION_ATTR, op)
            self.blueprint.add_url_rule(rule, endpoint=view.__name__, view_func=view, methods=[op.method])
            return view

        return decorate

    def get(self, rule: str, **kw: Any) -> Callable[[F], F]:
        return self.operation("GET", rule, **kw)

    def post(self, rule: str, **kw: Any) -> Callable[[F], F]:
        return self.operation("POST", rule, **kw)


def operation_of(view: Callable[..., Any]) -> Operation | None:
    found: Operation | None = getattr(view, OPERATION_ATTR, None)
    return found


def current_operation() -> Operation:
    endpoint = request.endpoint
    op = operation_of(current_app.view_functions[endpoint]) if endpoint else None
    if op is None:
        raise RuntimeError("the current view has no declared operation")
    return op


# -- validation ---------------------------------------------------------------------------------------------------

def _key(name: object) -> str:
    """A client-chosen key as it may appear in an error: a safe identifier, else a placeholder."""
    return name if isinstance(name, str) and _SAFE_KEY.fullmatch(name) else "(key)"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_TYPE_NAMES = {"object": "a JSON object", "array": "a JSON array", "string": "a string", "number": "a number",
               "integer": "an integer", "boolean": "true or false", "null": "null"}


def _is_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and value == value \
            and value not in (float("inf"), float("-inf"))
    raise ValueError(f"unsupported schema type {kind}")


_SCALAR_KINDS = frozenset({"string", "number", "integer", "boolean", "null"})
_scalar_checks: dict[int, tuple[Mapping[str, Any], Callable[[Collection[Any], bool], bool] | None]] = {}


def _scalar_check(schema: Mapping[str, Any]) -> Callable[[Collection[Any], bool], bool] | None:
    """For a schema that only names scalar types (e.g. a feature value: number, string, boolean or null),
    one fast predicate "every one of these values matches"; None for any other schema. A feature row has
    hundreds of members, each checked against the same schema, so the walk of `validate` per member is
    worth skipping (cached per schema): the values' exact types are gathered in one pass, and floats are
    looked at one by one (for infinity) only if they did not come from a JSON parser (the predicate's second
    argument), which has no infinity. False sends the caller to `validate`, which names the member."""
    cached = _scalar_checks.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    kinds = schema.get("type")
    kinds_list = [kinds] if isinstance(kinds, str) else list(kinds or ())
    check: Callable[[Collection[Any], bool], bool] | None = None
    if set(schema) == {"type"} and kinds_list and set(kinds_list) <= _SCALAR_KINDS:
        exact: set[type] = set()
        finite_numbers = "number" in kinds_list
        if "string" in kinds_list:
            exact.add(str)
        if "boolean" in kinds_list:
            exact.add(bool)
        if "null" in kinds_list:
            exact.add(type(None))
        if "integer" in kinds_list or finite_numbers:
            exact.add(int)
        frozen = frozenset(exact)
        with_floats = frozen | {float} if finite_numbers else frozen

        def all_scalar(values: Collection[Any], parsed: bool) -> bool:
            found = set(map(type, values))
            if found <= frozen:
                return True
            if found <= with_floats:
                return parsed or all(map(math.isfinite, [v for v in values if type(v) is float]))
            # subclasses of the allowed types: the general rule decides, value by value
            return all(any(_is_type(v, k) for k in kinds_list) for v in values)

        check = all_scalar
    _scalar_checks[id(schema)] = (schema, check)
    return check


def validate(schema: Mapping[str, Any], value: Any, path: str = "", where: str = "body", *,
             parsed: bool = False) -> list[FieldError]:
    """Problems of `value` against `schema`, each naming the field and the reason (never the value).
    `parsed`: `value` is what orjson parsed, whose numbers are never infinite or NaN (it refuses them), so
    they need no check for it."""
    problems: list[FieldError] = []
    shown = path or "(body)"
    kinds = schema.get("type")
    if kinds is not None:
        kinds_list = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is_type(value, k) for k in kinds_list):
            return [FieldError(where, shown, "expected " + " or ".join(_TYPE_NAMES[k] for k in kinds_list))]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(FieldError(where, shown, "must be one of " + ", ".join(map(str, schema["enum"]))))
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append(FieldError(where, shown, f"shorter than {schema['minLength']} characters"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(FieldError(where, shown, f"longer than {schema['maxLength']} characters"))
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(FieldError(where, shown, f"below the minimum {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(FieldError(where, shown, f"above the maximum {schema['maximum']}"))
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append(FieldError(where, shown, f"needs at least {schema['minItems']} item(s)"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(FieldError(where, shown, f"has more than {schema['maxItems']} items"))
            return problems
        if "items" in schema:
            for i, item in enumerate(value):
                problems += validate(schema["items"], item, f"{path}[{i}]", where, parsed=parsed)
                if len(problems) >= 100:
                    return problems
    if isinstance(value, dict):
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            problems.append(FieldError(where, shown, f"has more than {schema['maxProperties']} members"))
            return problems
        for name in schema.get("required", ()):
            if name not in value:
                problems.append(FieldError(where, _join(path, name), "required field is missing"))
        props: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        fast = _scalar_check(extra) if isinstance(extra, dict) and not props else None
        if fast is not None and fast(value.values(), parsed):
            return problems  # every member is of an allowed scalar type: nothing more to check
        for name, item in value.items():
            if name in props:
                problems += validate(props[name], item, _join(path, name), where, parsed=parsed)
            elif extra is False:
                problems.append(FieldError(where, _join(path, _key(name)), "unknown field"))
            elif isinstance(extra, dict):
                problems += validate(extra, item, _join(path, _key(name)), where, parsed=parsed)
            if len(problems) >= 100:
                break
    return problems


# -- reading requests ---------------------------------------------------------------------------------------------

def _parse_param(param: Param, raw: str) -> Any:
    schema = param.schema
    kind = schema.get("type", "string")
    if kind == "integer":
        try:
            value: Any = int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
    elif schema.get("format") == "date-time":
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("expected an ISO 8601 date-time") from None
        if value.tzinfo is None:
            raise ValueError("date-time needs a time-zone offset")
        return value.astimezone(UTC)
    else:
        value = raw
    problems = validate(schema, value, param.name, "query")
    if problems:
        raise ValueError(problems[0].reason)
    return value


def query_args() -> dict[str, Any]:
    """The declared query parameters of the current operation, parsed and checked (400 on a bad one)."""
    op = current_operation()
    out: dict[str, Any] = {}
    problems: list[FieldError] = []
    for param in op.query:
        raw = request.args.get(param.name)
        if raw is None or raw == "":
            if param.required:
                problems.append(FieldError("query", param.name, "required parameter is missing"))
            out[param.name] = param.schema.get("default")
            continue
        try:
            out[param.name] = _parse_param(param, raw)
        except ValueError as exc:
            problems.append(FieldError("query", param.name, str(exc)))
    if problems:
        raise BadRequest("invalid query parameters", fields=problems)
    return out


def raw_body() -> bytes:
    """The request body of the current operation: its content type checked (415), its size limited (413).

    Read straight from the WSGI input: a body with a Content-Length, that many bytes (the WSGI contract;
    400 if fewer arrive); a chunked one (no length, the server terminates the input), up to one byte past
    the limit, so that a body over it is a 413 rather than cut short (werkzeug's `get_data` stops at the
    limit and returns what it read). `get_data` also wraps the input in a limiting stream read in chunks:
    a tenth of a predict request's own work for the same bytes."""
    op = current_operation()
    body = op.body
    if body is None:
        raise RuntimeError("the current operation declares no body")
    if request.mimetype not in body.content_types:
        raise UnsupportedMediaType("expected content type " + " or ".join(body.content_types),
                                   fields=[FieldError("header", "Content-Type", "not an accepted content type")])
    limit = min(body.max_bytes, current_app.config.get("MAX_CONTENT_LENGTH") or body.max_bytes)
    length = request.content_length
    stream = request.environ["wsgi.input"]
    if length is None:
        if not request.environ.get("wsgi.input_terminated"):
            return b""  # neither a length nor an end the server vouches for: nothing is safe to read
        chunked: bytes = stream.read(limit + 1)
        if len(chunked) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        return chunked
    if length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    data: bytes = stream.read(length) if length else b""
    if len(data) != length:
        raise BadRequest("the body is shorter than its Content-Length",
                         fields=[FieldError("header", "Content-Length", "more than the body's bytes")])
    return data


def json_body(schema: Mapping[str, Any] | None = None, *, mismatch: type[ApiError] = Unprocessable,
              message: str = "the body does not match the request schema") -> Any:
    """The JSON body of the current operation, parsed (400) and validated against `schema` (default: the
    operation's body schema); a mismatch raises `mismatch` (422 by default) naming each failing field."""
    data = raw_body()
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON",
                         fields=[FieldError("body", "(body)", "not valid JSON")]) from None
    if schema is None:
        schema = current_operation().body.schema  # type: ignore[union-attr]
    if schema is not None:
        problems = validate(schema, value, parsed=True)
        if problems:
            raise mismatch(message, fields=problems)
    return value


# -- the OpenAPI document -----------------------------------------------------------------------------------------

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message", "request_id", "fields"],
        "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "request_id": {"type": ["string", "null"]}, "error_id": {"type": "string"},
            "fields": {"type": "array", "items": {
                "type": "object", "required": ["where", "field", "reason"],
                "properties": {"where": {"type": "string"}, "field": {"type": ["string", "null"]},
                               "reason": {"type": "string"}}}},
        }}},
}
_ERROR_TEXT = {
    400: "Malformed request (bad query parameter or JSON)", 401: "Missing, unknown, expired or revoked token",
    403: "The caller lacks the permission or may not see this patient", 404: "Unknown patient or resource",
    413: "Body too large", 415: "Wrong content type", 422: "Input failed validation; `fields` says where",
    429: "Over the caller's rate limit; retry after Retry-After",
    500: "Unexpected error; quote the error id", 503: "Database or model unavailable; retry after Retry-After",
}


def openapi_path(rule: str) -> str:
    return _RULE_PARAM.sub(r"{\1}", rule)


def _operation_doc(op: Operation, view: Callable[..., Any], rule: str) -> dict[str, Any]:
    permission = permission_of(view)
    doc: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    description = op.description
    if permission is not None:
        description = (description + "\n\n" if description else "") + f"Requires permission `{permission}`."
        doc["x-permission"] = str(permission)
    else:
        doc["security"] = []
    if description:
        doc["description"] = description
    params = [{"name": name, "in": "path", "required": True, "schema": _PATH_PARAM_SCHEMA.get(name, {"type": "string"})}
              for name in _RULE_PARAM.findall(rule)]
    params += [{"name": p.name, "in": "query", "required": p.required, "schema": p.schema,
                **({"description": p.description} if p.description else {})} for p in op.query]
    if params:
        doc["parameters"] = params
    if op.body is not None:
        content = {ct: ({"schema": op.body.schema} if op.body.schema is not None and "json" in ct and "ndjson" not in ct
                        else {"schema": {"type": "string", "format": "binary"}}) for ct in op.body.content_types}
        doc["requestBody"] = {"required": True, "content": content,
                              **({"description": op.body.description} if op.body.description else {})}
    ok_content = {op.response_type: {"schema": op.response}}
    responses: dict[str, Any] = {str(op.status): {"description": "Success", "content": ok_content}}
    statuses = {500, 503, *op.errors}
    if permission is not None:
        statuses |= {401, 403, 429}  # every authenticated request, and every failed one, is rate limited
    if op.query:
        statuses.add(400)
    if op.body is not None:
        statuses |= {400, 413, 415, 422}
    if "<" in rule:
        statuses.add(404)
    for status in sorted(statuses):
        responses[str(status)] = {"description": _ERROR_TEXT.get(status, "Error"),
                                  "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    doc["responses"] = responses
    return doc


def build_spec(app: Flask, blueprint: str, *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared operation of `blueprint`."""
    paths: dict[str, dict[str, Any]] = {}
    tags: list[str] = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.endpoint.startswith(blueprint + "."):
            continue
        view = app.view_functions[rule.endpoint]
        op = operation_of(view)
        if op is None:
            continue
        if op.tag not in tags:
            tags.append(op.tag)
        paths.setdefault(openapi_path(rule.rule), {})[op.method.lower()] = _operation_doc(op, view, rule.rule)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "CareCast API v1. Authenticate with `Authorization: Bearer <token>`; every "
                                "operation needs the permission it names. Errors share one JSON shape."},
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "An API token from `carecast tokens issue`"}},
            "schemas": {"Error": ERROR_SCHEMA},
        },
        "security": [{"bearerAuth": []}],
    }


def docs_page(spec: Mapping[str, Any]) -> str:
    """A self-contained HTML page listing the operations of `spec` (no external assets)."""
    rows: list[str] = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            permission = op.get("x-permission", "public")
            rows.append(f"<tr><td class=m>{escape(method.upper())}</td><td><code>{escape(path)}</code></td>"
                        f"<td>{escape(op.get('summary', ''))}</td><td><code>{escape(permission)}</code></td></tr>")
    title = escape(spec["info"]["title"])
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{title}</title><style>body{{font:15px system-ui,sans-serif;margin:2em;max-width:70em}}"
        "table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4em;text-align:left}"
        ".m{font-weight:bold}code{font-size:90%}</style></head><body>"
        f"<h1>{title} <small>{escape(spec['info']['version'])}</small></h1>"
        f"<p>{escape(spec['info']['description'])}</p>"
        "<p>Machine-readable description: <a href=openapi.json>openapi.json</a> (OpenAPI 3.1).</p>"
        "<table><thead><tr><th>Method</th><th>Path</th><th>What it does</th><th>Permission</th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></body></html>")


def dumps(spec: Mapping[str, Any]) -> bytes:
    return orjson.dumps(spec, option=orjson.OPT_INDENT_2)
