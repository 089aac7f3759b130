"""Flower apps of every API style, written as Flower's docs write them (tests/apps/), run unmodified
through FedOps with real processes, Elasticsearch and Prometheus, and fully observed."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedops_control.devstack import LocalStack
from tests.backends import Elasticsearch, Prometheus, prometheus_config, wait_until
from tests.test_e2e import wait_finished

pytestmark = pytest.mark.e2e
APPS = Path(__file__).parent / "apps"
STYLES = ("legacy_workflow", "legacy_serverfn", "legacy_analytics", "message_lists", "no_message")
CLIENTS = 3


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, elasticsearch: Elasticsearch) -> Iterator[dict[str, Any]]:
    """Control service, Prometheus and 3 agents enrolled in one task per test app."""
    root = tmp_path_factory.mktemp("styles")
    stack = LocalStack(root / "stack", elasticsearch_url=elasticsearch.url)
    prometheus = Prometheus(root / "prometheus")
    # The missing-dependency app without its declaration: preflight passes, the clients fail at run time.
    undeclared = root / "undeclared_dependency"
    shutil.copytree(APPS / "missing_dependency", undeclared, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = undeclared / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"fedops-no-such-package>=1.0", ', "")
                         .replace(', "fedops-no-such-package>=1.0"', ""))
    assert "fedops-no-such-package" not in pyproject.read_text()
    try:
        stack.start_control()
        prometheus.start(prometheus_config(stack.metrics_address))
        tasks = {}
        for name, app in [*((s, APPS / s) for s in STYLES), ("missing_dependency", APPS / "missing_dependency"),
                          ("undeclared_dependency", undeclared), ("one_client", APPS / "legacy_workflow")]:
            tasks[name] = stack.ctl_json(
                "task",
                "create",
                "--title",
                name,
                "--app",
                str(app),
                "--rounds",
                "2",
                "--min-clients",
                "1" if name == "one_client" else "2",
                "--round-timeout",
                "600" if name == "one_client" else "60",  # one_client: fails long before its round timeout
                "--client-config",
                "partition-id=${client.index}",
                "--client-max-restarts",
                "0",
            )["id"]
        for i in range(CLIENTS):
            data = root / f"data{i}"
            data.mkdir()
            stack.start_agent(f"styles{i}", list(tasks.values()), data)
        clients = [stack.client_id(f"styles{i}") for i in range(CLIENTS)]
        wait_until(
            lambda: all(c["state"] == "CLIENT_STATE_ONLINE" for c in stack.ctl_json("clients", "list")["clients"]),
            30,
            "agents online",
        )
        for task_id in tasks.values():
            stack.ctl("task", "select", task_id, *clients)
        yield {"stack": stack, "tasks": tasks, "clients": clients, "es": elasticsearch, "prometheus": prometheus}
    finally:
        stack.stop()
        prometheus.stop()


def run_to_end(fleet: dict[str, Any], style: str, *args: str) -> dict[str, Any]:
    stack = fleet["stack"]
    run = stack.ctl_json("run", "start", fleet["tasks"][style], *args)
    return wait_finished(stack, run["id"], 240)


def rounds_by_number(run: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(r.get("number", 0)): r for r in run.get("rounds", [])}


def client_rows(round_: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    return [c for c in round_.get("client_results", []) if c["phase"] == phase]


def models_of(fleet: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    return sorted(fleet["stack"].ctl_json("models", "list", "--run", run_id).get("models", []),
                  key=lambda m: m["round"])


def prometheus_value(fleet: dict[str, Any], promql: str, minimum: float) -> float:
    """Wait for a series to reach ``minimum`` (Prometheus scrapes every second)."""
    prometheus: Prometheus = fleet["prometheus"]
    found = wait_until(lambda: (r := prometheus.query(promql)) and float(r[0]["value"][1]) >= minimum and r, 30,
                       f"{promql} >= {minimum}")
    return float(found[0]["value"][1])


def es_hits(fleet: dict[str, Any], index: str, filters: dict[str, Any], minimum: int = 1) -> list[dict[str, Any]]:
    es: Elasticsearch = fleet["es"]
    query = {"bool": {"filter": [{"term": {k: v}} for k, v in filters.items()]}}
    return wait_until(lambda: len(h := es.search(index, query, size=200)["hits"]["hits"]) >= minimum and h, 60,
                      f"{minimum} documents in {index} matching {filters}")


def assert_model_rounds(run: dict[str, Any], style: str, rounds: int) -> None:
    assert run["outcome"] == "RUN_OUTCOME_COMPLETED", run.get("reason")
    assert run.get("api_style") == style
    assert run.get("completed_rounds") == rounds
    numbered = rounds_by_number(run)
    for number in range(1, rounds + 1):
        assert numbered[number]["phase"] == "done"
        assert set(numbered[number]["responded_client_ids"]) == set(run["client_ids"])


def test_legacy_workflow_numpyclient_fedavg(fleet: dict[str, Any]) -> None:
    """NumPyClient + LegacyContext/DefaultWorkflow FedAvg, no initial parameters: round 0 is the
    get_parameters exchange; clients' metrics dicts, aggregated and central metrics, models, resume."""
    run = run_to_end(fleet, "legacy_workflow")
    assert_model_rounds(run, "API_STYLE_LEGACY_WORKFLOW", 2)
    numbered = rounds_by_number(run)
    assert [c["phase"] for c in numbered[0]["client_results"]] == ["get_parameters"]  # one client asked, round 0
    assert "accuracy" in run["initial_central_metrics"] and "loss" in run["initial_central_metrics"]
    for number in (1, 2):
        r = numbered[number]
        assert {"loss", "accuracy"} <= set(r["central_metrics"])
        assert "accuracy" in r["train_metrics"]
        assert {"loss", "accuracy"} <= set(r["evaluate_metrics"])
        train = client_rows(r, "train")
        assert len(train) == CLIENTS and all("accuracy" in c["metrics"] for c in train)  # the legacy metrics dict
        assert all({"loss", "accuracy"} <= set(c["metrics"]) for c in client_rows(r, "evaluate"))
    assert numbered[2]["central_metrics"]["accuracy"] > run["initial_central_metrics"]["accuracy"]
    models = models_of(fleet, run["id"])
    assert [m["round"] for m in models] == [1, 2]
    assert models[1]["parent_id"] == models[0]["id"] and "central.accuracy" in models[1]["metrics"]
    assert "client.train.accuracy" in models[1]["metrics"]
    task_id = fleet["tasks"]["legacy_workflow"]
    assert prometheus_value(fleet, f'fedops_rounds_completed_total{{task_id="{task_id}"}}', 2) >= 2
    assert prometheus_value(fleet, f'fedops_round_duration_seconds_count{{task_id="{task_id}"}}', 2) >= 2
    central = es_hits(fleet, "fedops-round-metrics", {"fedops.run.id": run["id"], "metric.scope": "central"}, 3)
    assert {h["_source"]["fedops.round"] for h in central} >= {0, 1, 2}
    client = es_hits(fleet, "fedops-round-metrics", {"fedops.run.id": run["id"], "metric.scope": "client",
                                                     "fedops.phase": "train"}, 2 * CLIENTS)
    assert all("accuracy" in h["_source"]["metrics"] for h in client)

    # Resume from the stored version: no get_parameters exchange, lineage continues.
    resumed = run_to_end(fleet, "legacy_workflow", "--resume-from", models[1]["id"], "--hp", "num-server-rounds=1")
    assert_model_rounds(resumed, "API_STYLE_LEGACY_WORKFLOW", 1)
    assert resumed["resumed_from_model_id"] == models[1]["id"]
    assert 0 not in rounds_by_number(resumed) or not client_rows(rounds_by_number(resumed)[0], "get_parameters")
    assert resumed["initial_central_metrics"]["accuracy"] == pytest.approx(
        numbered[2]["central_metrics"]["accuracy"], abs=1e-6)
    assert models_of(fleet, resumed["id"])[0]["parent_id"] == models[1]["id"]


def test_legacy_cooperative_stop_during_initialisation_finishes_round_one(fleet: dict[str, Any]) -> None:
    stack = fleet["stack"]
    run = stack.ctl_json("run", "start", fleet["tasks"]["legacy_workflow"], "--hp", "num-server-rounds=3")
    # Once Flower runs the app (a stop while the run is still starting stops it hard), before round 1.
    wait_until(lambda: stack.ctl_json("run", "show", run["id"])["state"] == "RUN_STATE_RUNNING", 60, "run running")
    assert stack.ctl_json("run", "show", run["id"]).get("completed_rounds", 0) == 0
    stack.ctl("run", "stop", run["id"])
    finished = wait_finished(stack, run["id"], 240)
    assert finished["outcome"] == "RUN_OUTCOME_STOPPED", finished.get("reason")
    assert finished["completed_rounds"] == 1
    assert rounds_by_number(finished)[1]["phase"] == "done"
    assert [m["round"] for m in models_of(fleet, run["id"])] == [1]
    assert "after 1 of 3 rounds" in finished["reason"]


def test_legacy_server_fn_app(fleet: dict[str, Any]) -> None:
    """ServerApp(server_fn=...) run by Flower's legacy Server: each client's message is sent from its
    own thread, and still reported as one phase per round."""
    run = run_to_end(fleet, "legacy_serverfn")
    assert_model_rounds(run, "API_STYLE_LEGACY_SERVER", 2)
    numbered = rounds_by_number(run)
    assert 0 not in numbered  # the strategy gives initial parameters: no exchange
    for number in (1, 2):
        assert len(numbered[number]["selected_client_ids"]) == CLIENTS
        assert "accuracy" in numbered[number]["central_metrics"] and "accuracy" in numbered[number]["train_metrics"]
        assert all("accuracy" in c["metrics"] for c in client_rows(numbered[number], "train"))
    models = models_of(fleet, run["id"])
    assert [m["round"] for m in models] == [1, 2] and models[1]["parent_id"] == models[0]["id"]


def test_legacy_custom_strategy_without_a_model(fleet: dict[str, Any]) -> None:
    """Federated analytics with a custom flwr.server.strategy.Strategy: rounds and metrics, no model,
    and the run says why the registry holds nothing."""
    run = run_to_end(fleet, "legacy_analytics")
    assert_model_rounds(run, "API_STYLE_LEGACY_SERVER", 2)
    numbered = rounds_by_number(run)
    for number in (1, 2):
        assert {"global_mean", "clients"} <= set(numbered[number]["train_metrics"])
        assert all({"mean", "count"} <= set(c["metrics"]) for c in client_rows(numbered[number], "train"))
        assert not numbered[number].get("model_version_id")
    assert models_of(fleet, run["id"]) == []
    assert "federated analytics" in run["model_note"]
    task_id = fleet["tasks"]["legacy_analytics"]
    assert prometheus_value(fleet, f'fedops_rounds_completed_total{{task_id="{task_id}"}}', 2) >= 2


def test_message_api_list_metrics_and_printed_output(fleet: dict[str, Any]) -> None:
    run = run_to_end(fleet, "message_lists")
    assert_model_rounds(run, "API_STYLE_MESSAGE_STRATEGY", 2)
    r1 = rounds_by_number(run)[1]
    assert len(r1["train_metric_lists"]["class_accuracy"]["values"]) == 2
    assert len(r1["central_metric_lists"]["class_accuracy"]["values"]) == 2
    assert all(len(c["metric_lists"]["class_accuracy"]["values"]) == 2 for c in client_rows(r1, "train"))
    models = models_of(fleet, run["id"])
    assert [m["round"] for m in models] == [1, 2]
    assert len(models[0]["metric_lists"]["central.class_accuracy"]["values"]) == 2
    task_id = fleet["tasks"]["message_lists"]
    series = fleet["prometheus"].query(
        f'last_over_time(fedops_round_metric{{run_id="{run["id"]}",scope="central",name="accuracy"}}[10m])')
    assert series and 0 < float(series[0]["value"][1]) <= 1
    assert prometheus_value(fleet, f'fedops_rounds_completed_total{{task_id="{task_id}"}}', 2) >= 2
    lists = es_hits(fleet, "fedops-round-metrics", {"fedops.run.id": run["id"], "metric.scope": "client",
                                                    "fedops.phase": "train"}, 2 * CLIENTS)
    assert all(len(h["_source"]["metrics"]["class_accuracy"]) == 2 for h in lists)
    # What the apps print reaches the run's logs, with run, round and client ids.
    printed = es_hits(fleet, "fedops-logs", {"fedops.run.id": run["id"], "log.logger": "app"}, 2 * CLIENTS + 1)
    messages = {h["_source"]["message"] for h in printed}
    assert "server: starting 2 rounds" in messages
    client_lines = [h["_source"] for h in printed if h["_source"]["message"].startswith("client ")]
    assert {line["fedops.client.id"] for line in client_lines} == set(run["client_ids"])
    assert {line["fedops.round"] for line in client_lines} == {1, 2}


def test_serverapp_that_sends_no_message(fleet: dict[str, Any]) -> None:
    run = run_to_end(fleet, "no_message")
    assert run["outcome"] == "RUN_OUTCOME_COMPLETED", run.get("reason")
    assert run.get("completed_rounds", 0) == 0 and not run.get("rounds")
    assert "no rounds ran" in run["reason"]
    assert run["model_note"] and models_of(fleet, run["id"]) == []


def test_declared_dependency_missing_fails_at_start(fleet: dict[str, Any]) -> None:
    stack = fleet["stack"]
    result = stack.ctl("run", "start", fleet["tasks"]["missing_dependency"], check=False)
    assert result.returncode == 2, result.stderr
    assert "preflight failed" in result.stderr and "fedops-no-such-package>=1.0 (not installed)" in result.stderr
    assert any(client in result.stderr for client in fleet["clients"])


def test_client_failure_reason_leads_with_the_root_cause(fleet: dict[str, Any]) -> None:
    """Every client fails to import a module: the run's reason names the error and the client, with
    the step's real requirement; one record per client failure; `run watch` exits non-zero."""
    stack = fleet["stack"]
    run = stack.ctl_json("run", "start", fleet["tasks"]["undeclared_dependency"])
    watch = stack.ctl("run", "watch", run["id"], check=False, timeout_s=240)
    assert watch.returncode == 4, watch.stderr
    finished = wait_finished(stack, run["id"], 60)
    reason = finished["reason"]
    assert reason.startswith("ModuleNotFoundError: No module named 'fedops_no_such_package' on client-"), reason
    assert f"(and {CLIENTS - 1} more)" in reason and "0 of 3 replies succeeded, 2 needed" in reason
    assert finished.get("completed_rounds", 0) == 0
    failures = client_rows(rounds_by_number(finished)[1], "train")
    assert sorted(c["client_id"] for c in failures) == sorted(finished["client_ids"])  # one row per client
    assert all(c["error"].startswith("ModuleNotFoundError") for c in failures)
    diagnosis = stack.ctl_json("run", "diagnose", run["id"])
    assert "after 0 rounds: ModuleNotFoundError" in diagnosis["summary"]


def test_legacy_strategy_wanting_more_clients_than_the_run_has_fails_at_once(fleet: dict[str, Any]) -> None:
    """The app's FedAvg hard-codes min_available_clients=2; a run with one client fails before round 1
    with the reason, instead of Flower's silent day-long wait for a second client."""
    stack = fleet["stack"]
    started = time.monotonic()
    run = stack.ctl_json("run", "start", fleet["tasks"]["one_client"], "--client", fleet["clients"][0])
    finished = wait_finished(stack, run["id"], 120)
    # Well before the round timeout (600 s): the run can never have 2 clients. (Under a loaded CI
    # machine starting the run alone took over 60 s, so the margin is wide.)
    assert time.monotonic() - started < 300
    assert finished["outcome"] == "RUN_OUTCOME_FAILED"
    assert "the app's FedAvg waits for 2 clients, but the run has 1 selected" in finished["reason"], finished["reason"]
