"""The command line: --help everywhere, settings errors, ingest exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

from carecast.cli import main
from carecast.errors import ExitCode
from tests import factories as F


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _all_commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("path", _all_commands(main), ids=lambda p: " ".join(p) or "carecast")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert len(result.output.splitlines()) > 3


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return {"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_DATABASE_URL": database_url}


def test_bad_setting_names_variable(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["db", "current"], env={"CARECAST_INGEST_CHUNK": "zero"})
    assert result.exit_code == ExitCode.CONFIG
    assert "CARECAST_INGEST_CHUNK" in result.output


def test_keys_generate_prints_a_fresh_key() -> None:
    a = CliRunner().invoke(main, ["keys", "generate"]).output.strip()
    b = CliRunner().invoke(main, ["keys", "generate"]).output.strip()
    assert a != b and len(a) == 44


def test_db_upgrade(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    from carecast.store.db import make_engine
    from carecast.store.migrate import head_revision

    assert f"revision {head_revision(make_engine(env['CARECAST_DATABASE_URL']))}" in result.output


def test_ingest_exit_codes_and_report(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "Patient.ndjson"
    good.write_bytes(orjson.dumps(F.patient("p1")) + b"\n")
    result = runner.invoke(main, ["ingest", str(good)], env=env)
    assert result.exit_code == ExitCode.OK, result.output
    assert "1 new" in result.output

    mixed = tmp_path / "Observation.ndjson"
    mixed.write_bytes(orjson.dumps(F.vital("o1", "8867-4", 80, "/min", eid=None)) + b"\n"
                      + orjson.dumps(F.vital("o2", "8867-4", 400, "/min", eid=None)) + b"\n")
    result = runner.invoke(main, ["ingest", "--json", str(mixed)], env=env)
    assert result.exit_code == ExitCode.PARTIAL, result.output
    summary = json.loads(result.output)
    assert summary["inserted"] == 1 and summary["rejected"] == 1

    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    result = runner.invoke(main, ["ingest", str(bad)], env=env)
    assert result.exit_code == ExitCode.NOTHING_STORED

    result = runner.invoke(main, ["ingest", "--report"], env=env)
    assert result.exit_code == 0
    assert "Observation.ndjson:line 2" in result.output and "valueQuantity.value" in result.output
    assert "400" not in result.output  # the bad value itself is never shown
    assert F.SECRET_IDENTIFIERS["family"] not in result.output


def test_users_tokens_and_audit_commands(env: dict[str, str]) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["users", "create", "nurse.x", "--role", "nurse", "--unit", "Ward A",
                                  "--password", "a long enough password"], env=env)
    assert result.exit_code == 0, result.output
    assert "nurse.x" in runner.invoke(main, ["users", "list"], env=env).output
    token = runner.invoke(main, ["tokens", "issue", "nurse.x", "--name", "tablet"], env=env).output.strip()
    assert token.startswith("cc_")
    listing = runner.invoke(main, ["tokens", "list"], env=env).output
    assert "tablet" in listing and token not in listing
    result = runner.invoke(main, ["audit", "verify"], env=env)
    assert result.exit_code == 0 and "intact" in result.output
