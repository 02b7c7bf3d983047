"""Checks of the deployment files (compose.yaml, Dockerfile, deploy/): parsed, validated offline and held
against the code they run (the CLI's commands, the settings, the app's URL map)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click
import yaml

from carecast.config import ALL_VARIABLES

ROOT = Path(__file__).resolve().parents[3]
SETTING_NAMES = frozenset(v.name for v in ALL_VARIABLES)
SECRET_SETTINGS = frozenset(v.name for v in ALL_VARIABLES if v.secret)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def parse_cli(args: Sequence[str]) -> click.Command:
    """The `carecast` command that ARGS name, with its options parsed as the CLI would (an unknown command
    or option raises click.UsageError); nothing is run."""
    from carecast.cli import main

    command: click.Command = main
    rest = list(args)
    while isinstance(command, click.Group):
        assert rest, f"{' '.join(args)}: a command group needs a sub-command"
        name, rest = rest[0], rest[1:]
        assert name in command.commands, f"carecast has no command {name!r}"
        command = command.commands[name]
    command.make_context(command.name or "", rest)
    return command


def option_value(args: Sequence[str], option: str) -> str:
    i = list(args).index(option)
    return str(args[i + 1])


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def dockerfile_port() -> int:
    match = re.search(r"^EXPOSE (\d+)$", dockerfile(), re.MULTILINE)
    assert match, "the Dockerfile exposes no port"
    return int(match.group(1))


def app_routes(tmp_path: Path) -> set[str]:
    """Every URL rule of the app as `create_app` builds it (test settings, an empty SQLite store)."""
    from carecast.config import Settings
    from carecast.serving import create_app
    from carecast.serving.app import shutdown
    from carecast.serving.context import EXTENSION

    app = create_app(Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path), "CARECAST_ENV": "test"}))
    try:
        return {rule.rule for rule in app.url_map.iter_rules()}
    finally:
        shutdown(app)
        app.extensions[EXTENSION].store.close()


def env_names(items: Iterable[str]) -> set[str]:
    return {item.split("=", 1)[0] for item in items}
