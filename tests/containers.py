"""A real Docker engine for the container tests, and FedOps' images built on it.

`scripts/install_docker.sh` (run by `make test` through scripts/install_backends.sh) installs Debian's
docker.io and makes the base root filesystem; `scripts/docker_engine.sh` starts dockerd on its own socket
and data root (cached under ~/.cache/fedops-docker, never a host engine's); `scripts/build_images.sh`
builds the images offline (cached: a second session rebuilds nothing). The session fixture stops the
engine afterwards, its containers removed first. A missing piece fails the test with a message; it
never skips.

Containers use the host's network: they reach the harness's Elasticsearch and Prometheus on loopback,
and the engine makes no bridge, no NAT and no iptables rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
DOCKER = "/usr/bin/docker"          # Debian's client, the engine's own version
COMPOSE = "/usr/bin/docker-compose"  # Debian's docker-compose (v1)
IMAGES = ("control", "agent", "dashboard")


def _missing(what: str) -> AssertionError:
    return AssertionError(f"{what} is not installed: run scripts/install_backends.sh (make test does)")


@dataclass
class Engine:
    """The harness's Docker engine (``host`` is its DOCKER_HOST)."""

    host: str
    build_log: str = ""
    image_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}

    def docker(self, *args: str, check: bool = True, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=self.env, timeout=timeout_s)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr[-3000:]}")
        return result

    def inspect(self, container: str) -> dict[str, Any]:
        return json.loads(self.docker("inspect", container).stdout)[0]

    def health(self, container: str) -> str:
        state = self.inspect(container)["State"]
        return state.get("Health", {}).get("Status", state["Status"])

    def wait_healthy(self, container: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while (status := self.health(container)) != "healthy":
            if status in ("exited", "dead") or time.monotonic() > deadline:
                logs = self.docker("logs", "--tail", "60", container, check=False)
                raise AssertionError(f"{container} is {status}, not healthy:\n{logs.stdout}{logs.stderr}")
            time.sleep(1)

    def client(self) -> Any:
        """testcontainers' Docker client, on this engine."""
        from testcontainers.core.docker_client import DockerClient

        return DockerClient()

    def remove_all_containers(self) -> None:
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids, check=False)


@dataclass
class Compose:
    """One docker-compose project (Debian's docker-compose) on the harness's engine."""

    engine: Engine
    project: str
    files: list[Path]
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self, *args: str, check: bool = True, timeout_s: float = 300,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        command = [COMPOSE, "-p", self.project]
        for path in self.files:
            command += ["-f", str(path)]
        result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
                                env={**self.engine.env, **self.env, **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-2000:]}{result.stderr[-4000:]}")
        return result

    def container(self, service: str) -> str:
        """The container name of ``service`` (compose v1: PROJECT_SERVICE_1)."""
        return f"{self.project}_{service}_1"

    def json(self, service: str, *args: str) -> Any:
        """`exec` a command printing JSON in ``service`` and parse it."""
        return json.loads(self("exec", "-T", service, *args).stdout)

    def down(self) -> None:
        self("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout_s=180)


def start_engine() -> Engine:
    """Start the engine and build the images (both cached); AssertionError when a piece is missing."""
    for path, what in (("/usr/sbin/dockerd", "Docker engine (Debian docker.io)"), (DOCKER, "docker client"),
                       (COMPOSE, "docker-compose")):
        if not Path(path).exists():
            raise _missing(f"{what} ({path})")
    try:
        import testcontainers  # noqa: F401 - only: is it installed?
    except ImportError:
        raise AssertionError("testcontainers is not installed: pip install -e '.[dev]'") from None
    started = subprocess.run([str(SCRIPTS / "docker_engine.sh"), "start"], capture_output=True, text=True,
                             timeout=120)
    if started.returncode != 0:
        raise AssertionError(f"the Docker engine did not start:\n{started.stderr}")
    engine = Engine(host=started.stdout.strip().splitlines()[-1])
    os.environ["DOCKER_HOST"] = engine.host          # testcontainers' client reads it
    os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"  # Ryuk's image cannot be pulled; the fixture cleans up
    built = subprocess.run([str(SCRIPTS / "build_images.sh")], capture_output=True, text=True, env=engine.env,
                           timeout=2400)
    engine.build_log = built.stdout + built.stderr
    if built.returncode != 0:
        stop_engine(engine)
        raise AssertionError(f"scripts/build_images.sh failed:\n{engine.build_log[-5000:]}")
    for image in IMAGES:
        engine.image_sizes[image] = int(engine.docker("image", "inspect", "-f", "{{.Size}}",
                                                      f"fedops-{image}:latest").stdout)
    return engine


def stop_engine(engine: Engine) -> None:
    """Remove every container, then stop the engine by its pidfile."""
    engine.remove_all_containers()
    subprocess.run([str(SCRIPTS / "docker_engine.sh"), "stop"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """The harness's Docker engine with FedOps' images built, for the whole session."""
    engine = start_engine()
    try:
        yield engine
    finally:
        stop_engine(engine)
