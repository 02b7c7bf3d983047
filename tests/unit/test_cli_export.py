"""The `export`, `keys rotate` and `backup` commands through Click's CliRunner (SQLite, key file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from carecast.cli import main
from carecast.config import Settings
from carecast.crypto import load_keyring
from carecast.store import Store
from tests import factories as F
from tests.unit.security.test_deid_figure12 import seed_every_identifier


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_ENV": "test"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CARECAST_DATA_KEY", raising=False)
    monkeypatch.delenv("CARECAST_DATABASE_URL", raising=False)
    store = Store.open(Settings.from_env(values))
    seed_every_identifier(store, tmp_path, in_clear_text_columns=False)
    store.close()
    (tmp_path / "pass.txt").write_text("correct horse battery staple\n")
    return values


def test_export_rotate_backup_restore(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["export", str(tmp_path / "x")]).exit_code == 2  # --deidentify is required
    res = runner.invoke(main, ["export", "--deidentify", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "observations: 4 rows" in res.output
    blob = b"".join(p.read_bytes() for p in (tmp_path / "out").iterdir())
    assert F.SECRET_IDENTIFIERS["mrn"].encode() not in blob
    pw = ["--passphrase-file", str(tmp_path / "pass.txt")]
    res = runner.invoke(main, ["backup", "create", str(tmp_path / "b.tar"), *pw])
    assert res.exit_code == 0, res.output
    before = load_keyring(Settings.from_env(env), create=False).active_id
    res = runner.invoke(main, ["keys", "rotate", "--backup", str(tmp_path / "pre.tar"), *pw])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert report["retired_keys"] == [before] and report["reencrypted_total"] > 10
    res = runner.invoke(main, ["backup", "restore", str(tmp_path / "pre.tar"), "--yes", *pw])
    assert res.exit_code == 0, res.output
    assert "hashes equal to the backup's" in res.output
    assert load_keyring(Settings.from_env(env), create=False).active_id == before
    res = runner.invoke(main, ["backup", "restore", str(tmp_path / "pre.tar"), "--yes", "--passphrase-file",
                               str(tmp_path / "out" / "manifest.json")])
    assert res.exit_code != 0 and "passphrase" in res.output
