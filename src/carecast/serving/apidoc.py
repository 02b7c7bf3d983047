"""The API reference of docs/serving.md, written from the OpenAPI document so the two cannot drift.

`markdown_reference(spec)` turns an OpenAPI 3.1 document (as `/api/v1/openapi.json` serves it) into Markdown:
one section per operation with its permission, parameters, request body, response fields and error statuses.
`python -m carecast.serving.apidoc [FILE]` (what `make docs` runs) rewrites the part of FILE (default
docs/serving.md) between the markers below; `--check` only says whether it is up to date (exit 1 if not).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

START = "<!-- api-reference:start -->"
END = "<!-- api-reference:end -->"
DEFAULT_FILE = Path("docs/serving.md")
MAX_DEPTH = 3  # nested fields shown down to a.b.c; deeper structure is summarised by its type
_METHOD_ORDER = {"get": 0, "post": 1, "put": 2, "patch": 3, "delete": 4}
_CONSTRAINTS = (("minLength", "min length"), ("maxLength", "max length"), ("minimum", "min"), ("maximum", "max"),
                ("minItems", "min items"), ("maxItems", "max items"), ("maxProperties", "max members"))
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null", list: "array",
               dict: "object"}


def api_spec() -> dict[str, Any]:
    """The OpenAPI document the app serves at /api/v1/openapi.json, built without a database or settings:
    it depends only on the declarations of the API v1 blueprint."""
    from flask import Flask

    import carecast.serving.app  # noqa: F401  (nests the live-stream blueprint inside API v1)
    from carecast.serving.api_v1 import API_TITLE, API_VERSION, bp
    from carecast.serving.openapi import build_spec

    app = Flask("carecast.apidoc")
    app.register_blueprint(bp)
    return build_spec(app, bp.name, title=API_TITLE, version=API_VERSION)


# -- schemas as text ---------------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def type_text(schema: Mapping[str, Any]) -> str:
    """A short type name: `string`, `integer or null`, `array of object`, `string (date-time)`, `Error`."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.rsplit("/", 1)[-1]
    if "const" in schema and "type" not in schema:
        return _JSON_TYPES.get(type(schema["const"]), "any")
    kinds = schema.get("type")
    names = [kinds] if isinstance(kinds, str) else list(kinds or ())
    shown: list[str] = []
    for kind in names:
        if kind == "array" and isinstance(schema.get("items"), Mapping):
            shown.append(f"array of {type_text(schema['items'])}")
        elif kind == "object" and isinstance(schema.get("additionalProperties"), Mapping) \
                and not schema.get("properties"):
            shown.append(f"map of {type_text(schema['additionalProperties'])}")
        else:
            shown.append(str(kind))
    text = " or ".join(shown) if shown else "any"
    if "format" in schema:
        text += f" ({schema['format']})"
    return text


def rules_text(schema: Mapping[str, Any]) -> str:
    """Allowed values, bounds and default of a schema, e.g. "one of `a`, `b`; max length 64; default 50"."""
    parts: list[str] = []
    if "const" in schema:
        parts.append(f"always `{schema['const']}`")
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    parts += [f"{label} {schema[key]:,}" if isinstance(schema[key], int) else f"{label} {schema[key]}"
              for key, label in _CONSTRAINTS if key in schema]
    if schema.get("additionalProperties") is False:
        parts.append("no other fields")
    if "default" in schema:
        parts.append(f"default `{schema['default']}`")
    return "; ".join(parts)


def schema_fields(schema: Mapping[str, Any], prefix: str = "", depth: int = 1) -> Iterator[tuple[str, Mapping[str, Any],
                                                                                                  bool]]:
    """(dotted name, schema, required) of every named field of an object schema, nested fields after their
    parent (`rejections[].where`), down to MAX_DEPTH levels."""
    props: Mapping[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    for name, sub in props.items():
        path = f"{prefix}{name}"
        yield path, sub, name in required
        if depth >= MAX_DEPTH or not isinstance(sub, Mapping):
            continue
        if sub.get("properties"):
            yield from schema_fields(sub, f"{path}.", depth + 1)
        items = sub.get("items")
        if isinstance(items, Mapping) and items.get("properties"):
            yield from schema_fields(items, f"{path}[].", depth + 1)
        extra = sub.get("additionalProperties")
        if isinstance(extra, Mapping) and extra.get("properties") and not sub.get("properties"):
            yield from schema_fields(extra, f"{path}.<key>.", depth + 1)


def _fields_table(schema: Mapping[str, Any]) -> list[str]:
    rows = list(schema_fields(schema))
    if not rows:
        return []
    out = ["| field | type | required | rules |", "|---|---|---|---|"]
    out += [f"| `{name}` | {_cell(type_text(sub))} | {'yes' if req else ''} | {_cell(rules_text(sub))} |"
            for name, sub, req in rows]
    return out


def _schema_block(schema: Mapping[str, Any]) -> list[str]:
    """A body's description: its fields as a table, or its type in one line when it has no named fields."""
    table = _fields_table(schema)
    if table:
        lead = f"A JSON {type_text(schema)}"
        rules = rules_text(schema)
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            lead += f"; other members: {type_text(extra)}"
        return [lead + (f" ({rules})" if rules else "") + ":", "", *table]
    rules = rules_text(schema)
    return [f"Type: {type_text(schema)}" + (f" ({rules})" if rules else "") + "."]


# -- operations -------------------------------------------------------------------------------------------------

def _operations(spec: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(method, path, operation) of every operation, by path, then GET before POST."""
    items = [(path, method, op) for path, methods in spec.get("paths", {}).items() for method, op in methods.items()]
    items.sort(key=lambda t: (t[0], _METHOD_ORDER.get(t[1], 9)))
    for path, method, op in items:
        yield method, path, op


def _tag_order(spec: Mapping[str, Any]) -> list[str]:
    tags = [t["name"] for t in spec.get("tags", [])]
    for _method, _path, op in _operations(spec):
        for tag in op.get("tags") or ["other"]:
            if tag not in tags:
                tags.append(tag)
    return tags


def anchor(method: str, path: str) -> str:
    """The GitHub anchor of an operation's heading (`#### GET /api/v1/patients/{uid}`)."""
    text = f"{method} {path}".lower()
    return "".join(c for c in text.replace(" ", "-") if c.isalnum() or c in "-_")


def _description(op: Mapping[str, Any]) -> str:
    """The operation's description without the generated "Requires permission" sentence (shown apart)."""
    text = str(op.get("description", ""))
    kept = [p for p in text.split("\n\n") if p.strip() and not p.startswith("Requires permission `")]
    return "\n\n".join(kept)


def _operation_section(method: str, path: str, op: Mapping[str, Any]) -> list[str]:
    out = [f"#### {method.upper()} {path}", "", _cell(str(op.get("summary", ""))) + "."]
    description = _description(op)
    if description:
        out += ["", description]
    permission = op.get("x-permission")
    out += ["", f"- Permission: `{permission}`" if permission else "- Permission: none (public)",
            f"- Operation id: `{op.get('operationId', '')}`"]
    params = op.get("parameters") or []
    if params:
        out += ["", "| parameter | in | type | required | rules | description |", "|---|---|---|---|---|---|"]
        out += [f"| `{p['name']}` | {p['in']} | {_cell(type_text(p.get('schema', {})))} | "
                f"{'yes' if p.get('required') else ''} | {_cell(rules_text(p.get('schema', {})))} | "
                f"{_cell(str(p.get('description', '')))} |" for p in params]
    body = op.get("requestBody")
    if body:
        content: Mapping[str, Any] = body.get("content", {})
        out += ["", "Request body (" + ", ".join(f"`{ct}`" for ct in content) + ")"
                + (f": {_cell(str(body['description']))}" if body.get("description") else "") + ":"]
        seen: list[Mapping[str, Any]] = []
        for media in content.values():
            schema = media.get("schema", {})
            if schema in seen:
                continue
            seen.append(schema)
            out += ["", *_schema_block(schema)]
    responses: Mapping[str, Any] = op.get("responses", {})
    ok = sorted(s for s in responses if s.startswith("2"))
    for status in ok:
        content = responses[status].get("content", {})
        for ctype, media in content.items():
            out += ["", f"Response **{status}** (`{ctype}`):", "", *_schema_block(media.get("schema", {}))]
    errors = sorted(s for s in responses if not s.startswith("2"))
    if errors:
        out += ["", "Error statuses: " + ", ".join(errors) + "."]
    return out


def _error_statuses(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(status, description) of every non-success response of the document, each distinct pair once."""
    found: dict[tuple[str, str], None] = {}
    for _method, _path, op in _operations(spec):
        for status, response in op.get("responses", {}).items():
            if not status.startswith("2"):
                found[(status, _cell(str(response.get("description", ""))))] = None
    return sorted(found)


def markdown_reference(spec: Mapping[str, Any]) -> str:
    """The API reference of an OpenAPI document as Markdown (no trailing blank line)."""
    info = spec.get("info", {})
    ops = list(_operations(spec))
    out = [f"Generated from the OpenAPI document of {info.get('title', 'the API')} {info.get('version', '')} "
           f"(OpenAPI {spec.get('openapi', '?')}) by `make docs`; do not edit by hand.",
           "", "| operation | permission | summary |", "|---|---|---|"]
    by_tag: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {t: [] for t in _tag_order(spec)}
    for method, path, op in ops:
        by_tag[(op.get("tags") or ["other"])[0]].append((method, path, op))
    for tag_ops in by_tag.values():
        out += [f"| [`{m.upper()} {p}`](#{anchor(m, p)}) | `{o.get('x-permission', 'public')}` | "
                f"{_cell(str(o.get('summary', '')))} |" for m, p, o in tag_ops]
    schemes = spec.get("components", {}).get("securitySchemes", {})
    for name, scheme in schemes.items():
        described = f" ({_cell(str(scheme['description']))})" if scheme.get("description") else ""
        out += ["", f"Authentication (`{name}`): HTTP `{scheme.get('scheme', scheme.get('type', ''))}`{described}; "
                "operations marked `public` need none."]
    statuses = _error_statuses(spec)
    if statuses:
        out += ["", "| error status | meaning |", "|---|---|", *(f"| {s} | {d} |" for s, d in statuses)]
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        out += ["", f"Schema `{name}` (the body of every error status):", "", *_fields_table(schema)]
    for tag, tag_ops in by_tag.items():
        if not tag_ops:
            continue
        out += ["", f"### {tag.capitalize()}"]
        for method, path, op in tag_ops:
            out += ["", *_operation_section(method, path, op)]
    return "\n".join(out)


# -- the file --------------------------------------------------------------------------------------------------

def replace_section(text: str, reference: str) -> str:
    """`text` with everything between the START and END markers replaced by `reference`."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"expected one {START} followed by one {END}")
    return text[: start + len(START)] + "\n\n" + reference.strip("\n") + "\n\n" + text[end:]


def section(text: str) -> str:
    """What stands between the markers now (without the blank lines around it)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"expected {START} followed by {END}")
    return text[start + len(START): end].strip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carecast.serving.apidoc", description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE, help="Markdown file with the markers")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date, change nothing")
    args = parser.parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    updated = replace_section(text, markdown_reference(api_spec()))
    if args.check:
        if updated != text:
            print(f"{args.file}: the API reference is out of date; run `make docs`", file=sys.stderr)
            return 1
        print(f"{args.file}: the API reference is up to date")
        return 0
    if updated != text:
        args.file.write_text(updated, encoding="utf-8")
        print(f"{args.file}: API reference rewritten")
    else:
        print(f"{args.file}: API reference already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
