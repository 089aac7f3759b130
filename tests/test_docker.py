"""docker/: Dockerfiles pass hadolint, compose files pass `docker-compose config`, and everything
they reference (paths, images, console scripts, CLI flags) exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
AGENT_ENV = {"FEDOPS_CONTROL": "control.example.org:50051", "FEDOPS_ENROLMENT_TOKEN": "foe_x",
             "FEDOPS_TLS_DIR": str(ROOT), "FEDOPS_DATA_DIR": str(ROOT / "examples")}
STACK_ENV = {"FEDOPS_ADMIN_TOKEN": "a-test-admin-token"}
COMPOSE_FILES = {"docker-compose.yml": STACK_ENV, "agent-compose.yml": AGENT_ENV}
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise AssertionError(f"{name} is not installed: run scripts/install_backends.sh and `make test`")
    return found


def compose_config(name: str, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run([tool("docker-compose"), "-f", str(DOCKER / name), "config"], capture_output=True,
                            text=True, env={**os.environ, **env}, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    result = subprocess.run([tool("hadolint"), "--failure-threshold", "info", str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_small_non_root_with_healthcheck_and_real_sources(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    # The public base by default; scripts/build_images.sh passes the local one (no registry here).
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert "--no-deps" in text and "COPY docker/wheels /tmp/wheels" in text  # offline: PIP_NO_INDEX=1
    assert re.search(r"^USER 10001$", text, re.M) and "HEALTHCHECK" in text
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repo"
    # Installed code lives in site-packages: it finds the templates and Kibana objects through this.
    # The index templates and Kibana objects ship inside the installed package: nothing to copy or name.
    assert "FEDOPS_OBSERVABILITY_DIR" not in text and "COPY observability" not in text
    # The image installs every package the project declares (a new package must be copied in too).
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (fedops_\w+) ", text, re.M))
    assert {p.rstrip("*") for p in packages} <= copied, f"{dockerfile.name} does not copy {sorted(packages)}"
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"', text, re.M)
    assert entry and entry.group(1) in SCRIPTS


def test_compose_files_pass_config_and_reference_what_exists() -> None:
    for name, env in COMPOSE_FILES.items():
        config = compose_config(name, env)
        for service_name, service in config["services"].items():
            build = service.get("build")
            if build:
                assert (Path(build["context"]) / build["dockerfile"]).is_file(), service_name
            else:
                image = service["image"]
                assert ":" in image and not image.endswith(":latest"), f"{service_name}: pin {image}"
            for volume in service.get("volumes", []):
                source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":")[0]
                if source.startswith("/"):
                    assert Path(source).exists(), f"{service_name} mounts {source}, which does not exist"


def test_compose_commands_use_flags_the_clis_accept() -> None:
    config = compose_config("docker-compose.yml", STACK_ENV)
    helps = {script: subprocess.run([tool(script), "--help"], capture_output=True, text=True,
                                    env={**os.environ, "COLUMNS": "300"}).stdout
             for script in ("fedops-agent", "fedops-control", "fedops-telemetry")}
    for name, service in config["services"].items():
        image = service.get("image", "")
        script = "fedops-agent" if "fedops-agent" in image else "fedops-control" if "fedops-control" in image else None
        if script is None:
            continue
        entry = service.get("entrypoint") or []
        if entry and entry[0] in helps:
            script = entry[0]
        if script == "fedops-telemetry":  # flags belong to its subcommand
            helps[script] = subprocess.run([tool(script), entry[1], "--help"], capture_output=True, text=True,
                                           env={**os.environ, "COLUMNS": "300"}).stdout
        for flag in [a for a in [*(service.get("command") or []), *entry] if str(a).startswith("--")]:
            assert flag in helps[script], f"{name}: {script} has no {flag}"


def test_agent_compose_refuses_missing_settings() -> None:
    result = subprocess.run([tool("docker-compose"), "-f", str(DOCKER / "agent-compose.yml"), "config"],
                            capture_output=True, text=True, cwd=ROOT,
                            env={k: v for k, v in os.environ.items() if not k.startswith("FEDOPS_")})
    assert result.returncode != 0 and "FEDOPS_CONTROL" in result.stderr + result.stdout


def test_stack_refuses_to_start_without_an_admin_token() -> None:
    """No well-known admin token: without FEDOPS_ADMIN_TOKEN the stack does not start, and says how."""
    result = subprocess.run([tool("docker-compose"), "-f", str(DOCKER / "docker-compose.yml"), "config"],
                            capture_output=True, text=True, cwd=ROOT,
                            env={k: v for k, v in os.environ.items() if not k.startswith("FEDOPS_")})
    assert result.returncode != 0 and "set FEDOPS_ADMIN_TOKEN" in result.stderr + result.stdout
    assert "change-me" not in (DOCKER / "docker-compose.yml").read_text()


def test_third_party_servers_are_in_profiles() -> None:
    """Images that cannot be built here are in a profile (tests replace them with the host's servers)."""
    for name, env in COMPOSE_FILES.items():
        for service_name, service in compose_config(name, env)["services"].items():
            if "build" not in service and not service["image"].startswith("fedops-"):
                assert service.get("profiles"), f"{name}: {service_name} has no profile"


def test_prometheus_config_and_grafana_datasources_are_valid() -> None:
    config = ROOT / "observability/prometheus/prometheus.yml"
    result = subprocess.run([tool("promtool"), "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    sources = yaml.safe_load((ROOT / "observability/grafana/provisioning/datasources/fedops.yml").read_text())
    assert {s["type"] for s in sources["datasources"]} == {"prometheus", "elasticsearch"}
    assert {s["jsonData"]["index"] for s in sources["datasources"] if s["type"] == "elasticsearch"} <= {
        p.stem for p in (ROOT / "observability/elk/index-templates").glob("fedops-*.json")}


def test_observability_dir_is_found_outside_the_source_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedops_common.telemetry.documents import observability_dir

    (tmp_path / "observability").mkdir()
    monkeypatch.setenv("FEDOPS_OBSERVABILITY_DIR", str(tmp_path / "observability"))
    assert observability_dir() == tmp_path / "observability"
    monkeypatch.delenv("FEDOPS_OBSERVABILITY_DIR")
    assert (observability_dir() / "elk" / "index-templates" / "fedops-logs.json").is_file()
