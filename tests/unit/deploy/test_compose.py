"""compose.yaml: the stack's services, their images, commands, settings, secrets, health checks and the
Prometheus and Grafana files it mounts, held against the Dockerfile, the CLI, config.py and the app."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from carecast.config import Settings
from carecast.crypto import load_keyring
from tests.unit.deploy import (
    ROOT,
    SECRET_SETTINGS,
    SETTING_NAMES,
    app_routes,
    dockerfile_port,
    load_yaml,
    option_value,
    parse_cli,
)

COMPOSE = ROOT / "compose.yaml"
CARECAST_SERVICES = ("migrate", "app", "worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def generated_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The secrets as deploy/compose/make-env.sh writes them, in a scratch folder."""
    folder = tmp_path_factory.mktemp("compose-env")
    subprocess.run([str(ROOT / "deploy" / "compose" / "make-env.sh"), str(folder)], check=True,
                   capture_output=True)
    return folder


def read_env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


def test_the_stack_has_every_service(services: dict[str, Any]) -> None:
    assert set(services) == {"migrate", "app", "worker", "postgres", "redis", "prometheus", "grafana"}


def test_app_worker_and_migrations_run_the_one_image_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    images = {services[name]["image"] for name in CARECAST_SERVICES}
    assert len(images) == 1
    for name in CARECAST_SERVICES:
        build = services[name]["build"]
        assert build["context"] == "."
        assert (ROOT / build["context"] / "Dockerfile").exists()
        assert build["args"]["BASE_IMAGE"].startswith("python:3.11")


def test_commands_are_real_carecast_commands(services: dict[str, Any]) -> None:
    assert parse_cli(services["app"]["command"]).name == "serve"
    assert parse_cli(services["worker"]["command"]).name == "worker"
    assert parse_cli(services["migrate"]["command"]).name == "upgrade"


def test_ports_agree_between_dockerfile_command_publish_and_health_check(services: dict[str, Any]) -> None:
    app = services["app"]
    port = int(option_value(app["command"], "--port"))
    assert option_value(app["command"], "--host") == "0.0.0.0"  # reachable from the other containers
    assert port == dockerfile_port()
    published = [p for p in app["ports"] if p.endswith(f":{port}")]
    assert published and all(p.startswith("127.0.0.1:") for p in app["ports"])  # TLS proxy in front
    assert f"127.0.0.1:{port}/" in " ".join(app["healthcheck"]["test"])


def test_health_checked_dependencies(services: dict[str, Any], tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    check = " ".join(services["app"]["healthcheck"]["test"])
    path = "/" + check.split(":8000/", 1)[1].split("'", 1)[0]
    assert path in routes and path == "/readyz"
    app_deps = services["app"]["depends_on"]
    assert app_deps["migrate"]["condition"] == "service_completed_successfully"
    assert app_deps["postgres"]["condition"] == app_deps["redis"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"], name
    # The image's HTTP health check means nothing in a container that serves no HTTP.
    assert services["worker"]["healthcheck"] == {"disable": True}
    assert services["migrate"]["healthcheck"] == {"disable": True} and services["migrate"]["restart"] == "no"


def test_settings_are_real_and_secrets_only_come_from_env_files(services: dict[str, Any]) -> None:
    for name in CARECAST_SERVICES:
        service = services[name]
        environment = service["environment"]
        assert set(environment) <= SETTING_NAMES, set(environment) - SETTING_NAMES
        assert not set(environment) & SECRET_SETTINGS, "a secret setting has a value in compose.yaml"
        assert "CARECAST_DATABASE_URL" not in environment and "CARECAST_QUEUE_URL" not in environment
        Settings.from_env({k: str(v) for k, v in environment.items()})  # every value parses
        assert environment["CARECAST_ENV"] == "production"
        for env_file in service["env_file"]:
            assert env_file.startswith("deploy/compose/") and env_file.endswith(".env")


def test_env_files_are_git_ignored() -> None:
    for name in ("carecast.env", "postgres.env", "secrets/prometheus.token"):
        out = subprocess.run(["git", "check-ignore", "-q", f"deploy/compose/{name}"], cwd=ROOT)
        assert out.returncode == 0, f"deploy/compose/{name} is not git-ignored"


def test_generated_env_files_start_the_app_against_the_stack(generated_env: Path, services: dict[str, Any]) -> None:
    env = read_env_file(generated_env / "carecast.env")
    assert set(env) <= SETTING_NAMES
    for path in generated_env.glob("*.env"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    settings = Settings.from_env({**{k: str(v) for k, v in services["app"]["environment"].items()}, **env})
    assert settings.is_production
    assert len(load_keyring(settings).data_keys) == 1  # production accepts the generated key
    # The URLs name the stack's own services, users and passwords.
    database = urlsplit(settings.database_url)
    postgres = {**services["postgres"]["environment"], **read_env_file(generated_env / "postgres.env")}
    assert (database.hostname, database.port, database.username, database.password, database.path) == (
        "postgres", 5432, postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], "/" + postgres["POSTGRES_DB"])
    redis_password = read_env_file(generated_env / "redis.env")["REDIS_PASSWORD"]
    for url in (settings.queue_url, settings.events_url):
        parts = urlsplit(url or "")
        assert (parts.scheme, parts.hostname, parts.port, parts.password) == ("redis", "redis", 6379, redis_password)
    assert "$$REDIS_PASSWORD" in " ".join(services["redis"]["command"])


def test_make_env_never_overwrites_a_secret(generated_env: Path) -> None:
    before = (generated_env / "carecast.env").read_text()
    out = subprocess.run([str(ROOT / "deploy" / "compose" / "make-env.sh"), str(generated_env)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "not overwriting" in out.stderr
    assert (generated_env / "carecast.env").read_text() == before


def test_prometheus_scrapes_the_app_metrics_with_a_token(services: dict[str, Any], tmp_path: Path) -> None:
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"] if v.startswith("./")}
    config_path = ROOT / mounts["/etc/prometheus/prometheus.yml"]
    assert config_path == ROOT / "deploy" / "prometheus" / "prometheus.yml"
    config = load_yaml(config_path)
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "carecast-api")
    port = int(option_value(services["app"]["command"], "--port"))
    assert job["static_configs"][0]["targets"] == [f"app:{port}"]
    assert job["metrics_path"] in app_routes(tmp_path)
    token_file = job["authorization"]["credentials_file"]
    assert os.path.dirname(token_file) in mounts  # the token's folder is mounted from deploy/compose/secrets


def test_grafana_is_provisioned_with_the_prometheus_datasource(services: dict[str, Any]) -> None:
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"] if v.startswith("./")}
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    datasources = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert [d["type"] for d in datasources] == ["prometheus"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]
