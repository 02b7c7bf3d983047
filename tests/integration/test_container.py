"""The container image, built and run on this machine: `make container-test` (CARECAST_CONTAINER_TEST=1).

No Docker engine runs here, so the image is built with podman (deploy/container/build.sh, the same script
as `make container`) and run with `buildah from` + `buildah run --isolation=chroot`, which shares the
host's network: a server inside listening on 127.0.0.1 is reachable from the test. Inside the image, as
its non-root user and with the key given as a mounted file, the image's own `carecast` simulates a small
hospital, ingests it, trains deterioration_24h and issues a token; then `carecast serve` runs in the
background until `/readyz` answers 200 and `POST /api/v1/predict` returns a risk from that model.
The build and the whole test are timed and printed (not asserted).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from carecast.crypto import Keyring, write_key_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("CARECAST_CONTAINER_TEST") != "1",
                       reason="builds and runs the container image: set CARECAST_CONTAINER_TEST=1 "
                              "(make container-test)"),
]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/carecast:container-test"
TASK = "deterioration_24h"
UID = 10001  # the image's carecast user (Dockerfile CARECAST_UID)
SECRETS_IN_CONTAINER = "/run/carecast-secrets"
DATA_DIR = "/var/lib/carecast"  # the image's CARECAST_DATA_DIR
READY_TIMEOUT_S = 120.0
BUILD_TIMEOUT_S = 1800


@dataclass
class Container:
    name: str
    secrets_dir: Path
    session_key: str

    def run(self, *cmd: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(self.command(*cmd, env=env), capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n"
                                 f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        return out

    def command(self, *cmd: str, env: dict[str, str] | None = None) -> list[str]:
        # The data key as a mounted file (mode 0600, owned by the image's user); the web UI's session key
        # (required in production) as a variable: a throwaway value made for this test.
        if env is None:
            env = {"CARECAST_KEY_FILE": f"{SECRETS_IN_CONTAINER}/keyring.json",
                   "CARECAST_SECRET_KEY": self.session_key}
        args = ["buildah", "run", "--isolation=chroot",
                "--volume", f"{self.secrets_dir}:{SECRETS_IN_CONTAINER}:ro"]
        for name, value in env.items():
            args += ["--env", f"{name}={value}"]
        return [*args, self.name, "--", *cmd]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        conn.close()


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to `buildah run` and the server it started (their own process group), SIGKILL if they linger."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


@pytest.fixture(scope="module")
def image() -> Iterator[dict[str, Any]]:
    if shutil.which("podman") is None and os.geteuid() != 0:
        pytest.skip("podman is missing and only root can install it")
    started = time.perf_counter()
    subprocess.run([str(ROOT / "deploy" / "container" / "build.sh"), IMAGE], check=True, timeout=BUILD_TIMEOUT_S)
    print(f"\nimage {IMAGE} built in {time.perf_counter() - started:.0f} s")
    inspected = subprocess.run(["podman", "image", "inspect", IMAGE], check=True, capture_output=True, text=True)
    yield json.loads(inspected.stdout)[0]


@pytest.fixture(scope="module")
def container(image: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    secrets_dir = tmp_path_factory.mktemp("container-secrets")
    write_key_file(secrets_dir / "keyring.json", Keyring.generate())
    for path in (secrets_dir, secrets_dir / "keyring.json"):
        os.chown(path, UID, UID)  # the image's user must read its key; mode stays 0600/0700
    name = f"carecast-test-{secrets.token_hex(4)}"
    subprocess.run(["buildah", "from", "--pull-never", "--name", name, IMAGE], check=True, capture_output=True)
    try:
        yield Container(name, secrets_dir, secrets.token_urlsafe(48))
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True)


def test_image_is_slim_non_root_and_has_no_secret(image: dict[str, Any]) -> None:
    config = image["Config"]
    assert config["User"].split(":")[0] == str(UID)
    assert config["Entrypoint"] == ["carecast"] and config["Cmd"][0] == "serve"
    assert "8000/tcp" in config["ExposedPorts"]
    healthcheck = image.get("Healthcheck") or config.get("Healthcheck") or {}  # where podman puts it varies
    assert any("/livez" in part for part in healthcheck.get("Test", []))
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["CARECAST_ENV"] == "production"
    assert not {"CARECAST_DATA_KEY", "CARECAST_DATABASE_URL", "PIP_CERT"} & set(env)


def test_production_image_refuses_to_start_without_a_key(container: Container) -> None:
    out = container.run("carecast", "tokens", "list", env={}, check=False)
    assert out.returncode == 5, out.stderr  # ExitCode.CONFIG: no key given, and production never makes one
    assert "no data key" in out.stderr


def test_serves_readyz_and_a_prediction(container: Container, tmp_path: Path) -> None:
    started = time.perf_counter()
    sim = f"{DATA_DIR}/sim"
    container.run("carecast", "simulate", "--patients", "150", "--days", "5", "--wearable-share", "0",
                  "--out", sim)
    container.run("carecast", "ingest", sim)
    container.run("carecast", "train", "--task", TASK, "--bootstrap", "20")
    container.run("carecast", "users", "create", "scientist", "--role", "data_scientist",
                  "--password", "container-test-password")
    token = container.run("carecast", "tokens", "issue", "scientist", "--name", "container test",
                          "--hours", "1").stdout.strip()
    card = json.loads(container.run("carecast", "models", "show", TASK).stdout)
    columns = card["feature_schema"]["columns"]
    print(f"set-up inside the container (simulate, ingest, train, user, token) in "
          f"{time.perf_counter() - started:.0f} s")

    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            container.command("carecast", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        status, body = 0, None
        while time.monotonic() < deadline:
            assert server.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                status, body = _request(port, "GET", "/readyz")
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, body
        assert body == {"status": "ready", "checks": {"database": "ok", "model": "ok"}}
        print(f"/readyz answered 200 {time.perf_counter() - started:.0f} s after the set-up began")

        row = {"age": 82, "heart_rate_last_4h": 128, "respiratory_rate_last_4h": 27, "spo2_last_4h": 88}
        assert set(row) <= set(columns)
        status, scored = _request(port, "POST", "/api/v1/predict", {"task": TASK, "features": row},
                                  {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        assert status == 200, scored
        assert scored["task"] == TASK and scored["model_version"] == card["version"]
        assert 0.0 <= scored["risk"] <= 1.0 and scored["factors"]

        status, refused = _request(port, "POST", "/api/v1/predict", {"task": TASK, "features": row},
                                   {"Authorization": "Bearer not-a-token", "Content-Type": "application/json"})
        assert status == 401, refused
    finally:
        _stop(server)
    print(f"container test done in {time.perf_counter() - started:.0f} s after the build")
