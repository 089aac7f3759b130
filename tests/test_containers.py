"""FedOps in real containers, on a real Docker engine (tests/containers.py): the images build offline,
run as non-root and pass their health checks; docker/docker-compose.yml runs a real FL run with the
control service, the dashboard and three agents in containers (the third-party servers of its `servers`
profile replaced by the harness's Elasticsearch and Prometheus); agent and control containers are
killed and restarted mid-run; docker/agent-compose.yml joins a control service outside Docker as a
client site, monitoring itself with its own Elasticsearch and a shipping policy.

The numpy-only Flower app tests/apps/legacy_workflow runs in the containers (no torch in the images).
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedops_common.net import free_port
from tests.backends import Elasticsearch, Prometheus, prometheus_config, wait_until
from tests.containers import IMAGES, ROOT, Compose, Engine, docker_engine  # noqa: F401 - the fixture

# Not yet part of `make test` (see README, Docker): `make test-containers` runs them.
pytestmark = [pytest.mark.e2e, pytest.mark.containers]
DOCKER_DIR = ROOT / "docker"
APP = ROOT / "tests" / "apps" / "legacy_workflow"
AGENTS = ("agent-1", "agent-2", "agent-3")
MAX_IMAGE_BYTES = {"control": 600_000_000, "agent": 600_000_000, "dashboard": 900_000_000}


def writable_app(tmp: Path) -> Path:
    """A copy of the test app the containers' uid 10001 can read (and Flower can build in)."""
    target = tmp / "apps" / APP.name
    shutil.copytree(APP, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [tmp / "apps", *target.rglob("*"), target]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return target


def host_network_copy(tmp: Path) -> Path:
    """docker/docker-compose.yml as it is but for its published ports (a container on the host's network
    publishes none: Docker refuses both at once) and with its relative paths made absolute."""
    config = yaml.safe_load((DOCKER_DIR / "docker-compose.yml").read_text(encoding="utf-8"))
    for service in config["services"].values():
        service.pop("ports", None)
        if "build" in service:
            service["build"]["context"] = str(ROOT)
        service["volumes"] = [str(DOCKER_DIR / v) if v.startswith("../") else v for v in service.get("volumes", [])]
        if not service["volumes"]:
            del service["volumes"]
    copy = tmp / "docker-compose.yml"
    copy.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return copy


def run_show(compose: Compose, run_id: str) -> dict[str, Any]:
    return compose.json("control", "fedopsctl", "-o", "json", "run", "show", run_id)


def wait_finished(compose: Compose, run_id: str, timeout_s: float = 900) -> dict[str, Any]:
    return wait_until(lambda: (r := run_show(compose, run_id)).get("state") == "RUN_STATE_FINISHED" and r,
                      timeout_s, f"run {run_id} to finish", interval_s=2)


# ------------------------------------------------------------------------------------------- images
def test_images_build_offline_run_as_non_root_and_pass_their_health_checks(docker_engine: Engine) -> None:  # noqa: F811 - the fixture imported above
    """Each image, started through testcontainers on the harness's engine: uid 10001, healthy, small,
    built on the local base image (no registry)."""
    from testcontainers.core.container import DockerContainer

    for image in IMAGES:
        config = docker_engine.inspect(f"fedops-{image}:latest")["Config"]
        assert config["User"] == "10001" and config["Healthcheck"]["Test"], image
        assert docker_engine.image_sizes[image] < MAX_IMAGE_BYTES[image], (image, docker_engine.image_sizes)
        print(f"fedops-{image}:latest {docker_engine.image_sizes[image] / 1e6:.0f} MB")
    history = docker_engine.docker("history", "--no-trunc", "fedops-agent:latest").stdout
    assert "torch" not in docker_engine.docker("run", "--rm", "--entrypoint", "pip", "fedops-agent:latest",
                                               "list").stdout
    assert history  # built here, from fedops-base (imported from the debootstrap root filesystem)
    port, dash_port, metrics_port = free_port(), free_port(), free_port()
    control = (DockerContainer("fedops-control:latest")
               .with_command(["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{free_port()}",
                              "--superlink-bind", "127.0.0.1", "--no-auth"])
               .with_env("FEDOPS_CONTROL", f"127.0.0.1:{port}")
               .with_kwargs(network_mode="host", init=True))
    dashboard = (DockerContainer("fedops-dashboard:latest")
                 .with_command(["--address", "127.0.0.1", "--port", str(dash_port), "--control", f"127.0.0.1:{port}"])
                 .with_env("FEDOPS_DASH_PORT", str(dash_port)).with_kwargs(network_mode="host"))
    agent = (DockerContainer("fedops-agent:latest")
             .with_command(["--control", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"])
             .with_env("FEDOPS_METRICS_PORT", str(metrics_port)).with_kwargs(network_mode="host", init=True))
    started = []
    try:
        for container in (control, dashboard, agent):
            started.append(container.start())
        for container in started:
            name = container.get_wrapped_container().name
            assert container.exec(["id", "-u"]).output.decode().strip() == "10001"
            docker_engine.wait_healthy(name, 120)
        assert "python" in control.exec(["python", "-c", "import numpy, flwr; print('python')"]).output.decode()
    finally:
        for container in started:
            container.stop()


# --------------------------------------------------------------------------- the full compose stack
@pytest.fixture(scope="module")
def stack(docker_engine: Engine, elasticsearch: Elasticsearch,  # noqa: F811 - the fixture imported above
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """docker/docker-compose.yml without its `servers` profile: the control service, the dashboard and
    three agents in containers, on the host's network, with the harness's Elasticsearch and Prometheus."""
    tmp = tmp_path_factory.mktemp("compose")
    app = writable_app(tmp)
    port, metrics, dash = free_port(), free_port(), free_port()
    agent_ports = {name: free_port() for name in AGENTS}
    prometheus = Prometheus(tmp / "prometheus")
    prometheus.start(prometheus_config(f"127.0.0.1:{metrics}"))
    host = {"network_mode": "host", "restart": "no"}
    override: dict[str, Any] = {"services": {
        "telemetry-setup": {"network_mode": "host"},
        "control": {**host, "command": ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}",
                                        "--superlink-bind", "127.0.0.1", "--superlink-host", "127.0.0.1"],
                    "environment": {"FEDOPS_CONTROL": f"127.0.0.1:{port}"},
                    "volumes": [f"{app.parent}:/apps:ro"]},
        "dashboard": {**host, "command": ["--address", "127.0.0.1", "--port", str(dash)],
                      "environment": {"FEDOPS_CONTROL": f"127.0.0.1:{port}", "FEDOPS_DASH_PORT": str(dash)}},
        # The digits partitions need scikit-learn, which these images leave out: the numpy app makes its
        # own data, and each agent's volume gets a small file of its own.
        "digits-data": {"network_mode": "none", "entrypoint": [
            "python", "-c", "from pathlib import Path\nfor i in (1, 2, 3): "
            "Path(f'/data/agent-{i}/rows.csv').write_text('x,y\\n' + f'{i},0\\n' * (10 * i))"]},
        **{name: {**host, "command": ["--control", f"127.0.0.1:{port}", "--data-path", "/data", "--device-id",
                                      f"compose-{name}", "--metrics-listen", f"127.0.0.1:{agent_ports[name]}",
                                      "--metrics-advertise", f"127.0.0.1:{agent_ports[name]}"],
                  "environment": {"FEDOPS_METRICS_PORT": str(agent_ports[name])}} for name in AGENTS},
    }}
    override_file = tmp / "compose.host.yml"
    override_file.write_text(yaml.safe_dump(override), encoding="utf-8")
    compose = Compose(docker_engine, f"fedops{secrets.token_hex(3)}", [host_network_copy(tmp), override_file],
                      env={"FEDOPS_ADMIN_TOKEN": secrets.token_hex(24), "FEDOPS_ELASTICSEARCH_URL": elasticsearch.url,
                           "FEDOPS_PROMETHEUS_URL": prometheus.url})
    try:
        compose("up", "-d", "--no-build", "control", "dashboard", timeout_s=400)
        docker_engine.wait_healthy(compose.container("control"), 120)
        # The README's recipe: a task, then one one-time enrolment token per agent.
        task = compose.json("control", "fedopsctl", "-o", "json", "task", "create", "--title", "containers",
                            "--app", f"/apps/{app.name}", "--rounds", "3", "--min-clients", "2",
                            # 300 s: the first round's ClientApps import torch in three containers at
                            # once; on the 2-core VM under load 8-12 that took over 60 s, and in a
                            # fresh-machine run under load 20 over 120 s. A round that completes ends at
                            # once, so only a failing run waits this long.
                            "--round-timeout", "300", "--client-config", "partition-id=${client.index}",
                            "--client-max-restarts", "0")
        tokens = {f"FEDOPS_ENROLMENT_TOKEN_{i}": compose.json("control", "fedopsctl", "-o", "json", "task",
                                                              "enrol-token", task["id"])["token"]
                  for i in (1, 2, 3)}
        compose.env.update(tokens)
        compose("up", "-d", "--no-build", *AGENTS, timeout_s=400)
        clients = wait_until(lambda: len(c := [x for x in compose.json("control", "fedopsctl", "-o", "json", "clients",
                                                                        "list")["clients"]
                                               if x["state"] == "CLIENT_STATE_ONLINE"]) == 3 and c, 90,
                             "three agent containers online")
        by_device = {c["device"]["device_id"]: c["id"] for c in clients}
        compose("exec", "-T", "control", "fedopsctl", "task", "select", task["id"], *by_device.values())
        yield {"compose": compose, "task": task["id"], "clients": by_device, "es": elasticsearch,
               "prometheus": prometheus, "engine": docker_engine, "dashboard": dash, "agent_ports": agent_ports}
    finally:
        compose.down()
        prometheus.stop()


def test_compose_stack_runs_a_real_fl_run_observed_in_elasticsearch_and_prometheus(stack: dict[str, Any]) -> None:
    compose: Compose = stack["compose"]
    engine: Engine = stack["engine"]
    for service in ("control", "dashboard", *AGENTS):
        engine.wait_healthy(compose.container(service), 120)
        assert engine.inspect(compose.container(service))["Config"]["User"] == "10001"
    assert engine.inspect(compose.container("telemetry-setup"))["State"]["ExitCode"] == 0
    run = compose.json("control", "fedopsctl", "-o", "json", "run", "start", stack["task"])
    final = wait_finished(compose, run["id"])
    assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
    assert final["completed_rounds"] == 3
    rounds = [r for r in final["rounds"] if int(r.get("number", 0)) > 0]
    assert all(sorted(r["responded_client_ids"]) == sorted(stack["clients"].values()) for r in rounds)
    # Logs and data status of the agent containers, run events of the control container, in Elasticsearch.
    es: Elasticsearch = stack["es"]
    for client_id in stack["clients"].values():
        wait_until(lambda c=client_id: es.count("fedops-logs", {"term": {"fedops.client.id": c}}) > 0, 60,
                   f"logs of {client_id}")
        wait_until(lambda c=client_id: es.count("fedops-data-status", {"term": {"fedops.client.id": c}}) > 0, 60,
                   f"data status of {client_id}")
    wait_until(lambda: es.count("fedops-round-metrics", {"term": {"fedops.run.id": run["id"]}}) >= 3, 60,
               "round metrics of the run")
    # Prometheus scrapes the control container and discovers the three agent containers.
    prometheus: Prometheus = stack["prometheus"]
    wait_until(lambda: (r := prometheus.query(f'fedops_rounds_completed_total{{task_id="{stack["task"]}"}}'))
               and float(r[0]["value"][1]) >= 3, 60, "rounds completed in Prometheus")
    agent_targets = {f"127.0.0.1:{p}" for p in stack["agent_ports"].values()}
    wait_until(lambda: agent_targets <= {t["labels"]["instance"] for t in prometheus.targets()
                                         if t["health"] == "up"}, 60, "the agent containers scraped")
    # The dashboard container serves and reaches the control service.
    with urllib.request.urlopen(f"http://127.0.0.1:{stack['dashboard']}/_stcore/health", timeout=10) as answer:
        assert answer.status == 200


def test_agent_container_killed_mid_round_then_started_joins_the_next_run(stack: dict[str, Any]) -> None:
    compose: Compose = stack["compose"]
    engine: Engine = stack["engine"]
    client = engine.client().client  # testcontainers' Docker client, on the harness's engine
    victim = stack["clients"]["compose-agent-3"]
    # Training that lasts seconds (11 us an epoch): with warm apps a round of this app takes about a
    # second, shorter than one poll through `docker exec`, and the run could end before the kill.
    run = compose.json("control", "fedopsctl", "-o", "json", "run", "start", stack["task"],
                       "--hp", "local-epochs=500000")
    wait_until(lambda: any(r.get("phase") == "train" and int(r.get("number", 0)) >= 1
                           for r in run_show(compose, run["id"]).get("rounds", [])), 300, "round 1 training", 0.5)
    client.containers.get(compose.container("agent-3")).kill()
    final = wait_finished(compose, run["id"])
    assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")  # quorum 2 of 3
    assert any(victim in r.get("failed_client_ids", []) for r in final["rounds"]), final["rounds"]
    listed = compose.json("control", "fedopsctl", "-o", "json", "clients", "list")["clients"]
    states = {c["id"]: c["state"] for c in listed}
    assert states[victim] in ("CLIENT_STATE_FAILED", "CLIENT_STATE_OFFLINE"), states

    client.containers.get(compose.container("agent-3")).start()
    engine.wait_healthy(compose.container("agent-3"), 120)
    wait_until(lambda: {c["id"]: c["state"] for c in compose.json("control", "fedopsctl", "-o", "json", "clients",
                                                                   "list")["clients"]}[victim] == "CLIENT_STATE_ONLINE",
               90, "agent-3 online again")
    started = compose.json("control", "fedopsctl", "-o", "json", "run", "start", stack["task"])
    again = wait_finished(compose, started["id"])
    if again["outcome"] != "RUN_OUTCOME_COMPLETED":
        print(compose("logs", "--no-color", "--tail", "150", *AGENTS, check=False).stdout[-20000:])
    assert again["outcome"] == "RUN_OUTCOME_COMPLETED", again.get("reason")
    assert all(victim in r["responded_client_ids"] for r in again["rounds"] if int(r.get("number", 0)) > 0)


def test_control_container_restarted_mid_run_the_run_completes(stack: dict[str, Any]) -> None:
    """The run's SuperLink and ServerApp live in the control container, so its restart takes them down:
    the restarted service launches the run again from its latest model, and the agents rejoin."""
    compose: Compose = stack["compose"]
    engine: Engine = stack["engine"]
    run = compose.json("control", "fedopsctl", "-o", "json", "run", "start", stack["task"])
    wait_until(lambda: any(r.get("phase") == "done" for r in run_show(compose, run["id"]).get("rounds", [])),
               600, "round 1 done", 0.5)
    engine.client().client.containers.get(compose.container("control")).restart(timeout=20)
    engine.wait_healthy(compose.container("control"), 120)
    final = wait_finished(compose, run["id"])
    assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
    assert final["completed_rounds"] == 3
    assert [n for r in final["rounds"] if (n := int(r.get("number", 0))) > 0] == [1, 2, 3]
    watch = compose("exec", "-T", "control", "fedopsctl", "-o", "json", "run", "watch", run["id"]).stdout
    assert "relaunched" in [json.loads(line)["kind"] for line in watch.splitlines()]


# ------------------------------------------------------------------------- a client site joins
def test_client_site_agent_compose_joins_a_control_service_outside_docker_and_monitors_itself(
        docker_engine: Engine, elasticsearch: Elasticsearch, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    """docker/agent-compose.yml with its `site` profile, as a hospital runs it: the agent container joins
    a control service running outside Docker with a one-time token; the site's own Elasticsearch (the
    harness's) gets all of the agent's telemetry, and the federation's (a second real one) only what the
    site's policy (`aggregates`) allows: data status and resources, no logs."""
    from tests.conftest import control_stack

    federation = Elasticsearch(Path(tempfile.mkdtemp(prefix="fedops-es-federation-"))).start()
    data = tmp_path / "hospital-data"
    data.mkdir()
    (data / "rows.csv").write_text("x,y\n" + "1,0\n" * 25)
    data.chmod(0o755)
    app = writable_app(tmp_path)  # the one site of this federation: the app's FedAvg must not wait for two
    server_app = app / "legacy_workflow_app" / "server_app.py"
    server_app.write_text(server_app.read_text().replace("_clients=2", "_clients=1"))
    compose = None
    try:
        with control_stack(tmp_path / "federation", elasticsearch_url=federation.url) as stack:
            task = stack.ctl_json("task", "create", "--title", "hospital", "--app", str(app), "--rounds", "2",
                                  "--min-clients", "1", "--round-timeout", "60",
                                  "--client-config", "partition-id=${client.index}")["id"]
            metrics = free_port()
            compose = Compose(docker_engine, f"site{secrets.token_hex(3)}", [DOCKER_DIR / "agent-compose.yml"], env={
                "FEDOPS_CONTROL": stack.control_address, "FEDOPS_ENROLMENT_TOKEN": stack.enrolment_token(task),
                "FEDOPS_DATA_DIR": str(data), "FEDOPS_TLS_DIR": str(tmp_path),
                "FEDOPS_METRICS_LISTEN": f"127.0.0.1:{metrics}", "FEDOPS_METRICS_ADVERTISE": f"127.0.0.1:{metrics}",
                "FEDOPS_METRICS_PORT": str(metrics),
                "FEDOPS_ELASTICSEARCH_URL": elasticsearch.url,            # the site's own
                "FEDOPS_FEDERATION_ELASTICSEARCH_URL": federation.url, "FEDOPS_SITE_SHIPPING": "aggregates"})
            # The site's Elasticsearch and Kibana images cannot be pulled here: the harness's server stands in.
            compose("--profile", "site", "up", "-d", "--no-build", "--no-deps", "site-telemetry-setup", "agent",
                    "federation-shipper", timeout_s=300)
            docker_engine.wait_healthy(compose.container("agent"), 120)
            client = wait_until(lambda: [c["id"] for c in stack.ctl_json("clients", "list")["clients"]
                                         if c["state"] == "CLIENT_STATE_ONLINE"], 90, "the site's agent online")[0]
            stack.ctl("task", "select", task, client)
            run = stack.ctl_json("run", "start", task)
            final = wait_until(lambda: (r := stack.ctl_json("run", "show", run["id"]))["state"] == "RUN_STATE_FINISHED"
                               and r, 300, "the run to finish", 2)
            assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
            mine = {"term": {"fedops.client.id": client}}
            for family in ("logs", "data-status", "resources"):   # the site sees everything
                wait_until(lambda f=family: elasticsearch.count(f"fedops-{f}", mine) > 0, 60, f"site {family}")
            for family in ("data-status", "resources"):          # the federation: aggregates and metrics
                wait_until(lambda f=family: federation.count(f"fedops-{f}", mine) > 0, 60, f"federation {family}")
            time.sleep(3)
            # But not the site's own logs (the federation's control service logs its own events about
            # the client, which are the federation's).
            site_logs = {"bool": {"filter": [mine], "must_not": [{"term": {"service.name": "fedops-control"}}]}}
            assert elasticsearch.count("fedops-logs", site_logs) > 0
            assert federation.count("fedops-logs", site_logs) == 0
    finally:
        if compose is not None:
            compose.down()
        federation.stop()
        shutil.rmtree(federation.root, ignore_errors=True)
