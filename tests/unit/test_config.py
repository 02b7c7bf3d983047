from __future__ import annotations

from pathlib import Path

import pytest

from carecast.config import ALL_VARIABLES, Settings
from carecast.errors import ConfigError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.data_dir == Path("var")
    assert s.database_url == "sqlite:///var/carecast.db"
    assert s.key_file == Path("var/keys/keyring.json")
    assert s.env == "development"


@pytest.mark.parametrize(("name", "value"), [
    ("CARECAST_ENV", "staging"),
    ("CARECAST_INGEST_CHUNK", "-3"),
    ("CARECAST_INGEST_CHUNK", "many"),
    ("CARECAST_DATABASE_URL", "mysql://x"),
    ("CARECAST_LOG_LEVEL", "loud"),
])
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_secret_values_are_not_echoed() -> None:
    secret = next(v for v in ALL_VARIABLES if v.secret)
    assert secret.name == "CARECAST_DATA_KEY"


def test_every_variable_is_documented() -> None:
    for var in ALL_VARIABLES:
        assert var.name.startswith("CARECAST_")
        assert len(var.doc) > 10
