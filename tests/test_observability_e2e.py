"""A real FL run with real Elasticsearch and Prometheus: every actor's telemetry arrives, with ids."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedops_common.net import free_port
from fedops_control.devstack import LocalStack
from tests.backends import (
    PROMETHEUS_YML,
    Elasticsearch,
    Prometheus,
    http_json,
    prometheus_config,
    wait_until,
)
from tests.test_e2e import create_task, start_clients, wait_finished

pytestmark = pytest.mark.e2e
ROUNDS = 2


@pytest.fixture(scope="module")
def observed_run(tmp_path_factory: pytest.TempPathFactory, digits_data: list[Path],
                 elasticsearch: Elasticsearch) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("observed")
    stack = LocalStack(root / "stack", elasticsearch_url=elasticsearch.url,
                       metrics_address=f"127.0.0.1:{free_port()}")
    prometheus = Prometheus(root / "prometheus")
    try:
        stack.start_control()
        prometheus.start(prometheus_config(stack.metrics_address))
        started = time.time()
        task_id = create_task(stack, ROUNDS)
        # A task whose app cannot be fetched: its run fails for real (for "errors by run").
        broken = stack.ctl_json("task", "create", "--title", "broken app", "--git-url", f"file://{root}/no-repo",
                                "--rounds", "1", "--min-clients", "1")
        clients = start_clients(stack, task_id, digits_data, "obs", first_also_in=[broken["id"]])
        run = stack.ctl_json("run", "start", task_id)
        finished = wait_finished(stack, run["id"])
        assert finished["outcome"] == "RUN_OUTCOME_COMPLETED", finished.get("reason")
        stack.ctl("task", "select", broken["id"], clients[0])
        failed = wait_finished(stack, stack.ctl_json("run", "start", broken["id"])["id"], 60)
        assert failed["outcome"] == "RUN_OUTCOME_FAILED"
        time.sleep(3)  # a few more scrapes of the finished state
        yield {"stack": stack, "task_id": task_id, "clients": clients, "run_id": run["id"], "es": elasticsearch,
               "prometheus": prometheus, "started": started, "finished": time.time()}
    finally:
        stack.stop()
        prometheus.stop()


def term(field: str, value: Any) -> dict[str, Any]:
    return {"term": {field: value}}


def terms_of(es: Elasticsearch, index: str, field: str, query: dict[str, Any]) -> set[Any]:
    answer = es.search(index, query, size=0, aggs={"values": {"terms": {"field": field, "size": 100}}})
    return {bucket["key"] for bucket in answer["aggregations"]["values"]["buckets"]}


def test_logs_of_every_actor_carry_their_ids(observed_run: dict[str, Any]) -> None:
    es, run_id, clients = observed_run["es"], observed_run["run_id"], observed_run["clients"]
    run_query = term("fedops.run.id", run_id)
    services = wait_until(lambda: (s := terms_of(es, "fedops-logs", "service.name", run_query)) >= {
        "fedops-control", "fedops-agent", "fedops-serverapp", "fedops-clientapp"} and s, 60,
        "logs of control, agents, ServerApp and ClientApps with the run id")
    assert services >= {"fedops-control", "fedops-agent", "fedops-serverapp", "fedops-clientapp"}
    client_logs = {"bool": {"filter": [run_query, term("service.name", "fedops-clientapp")]}}
    assert terms_of(es, "fedops-logs", "fedops.client.id", client_logs) == set(clients)
    assert terms_of(es, "fedops-logs", "fedops.round", client_logs) >= set(range(1, ROUNDS + 1))
    assert len(terms_of(es, "fedops-logs", "fedops.flower.node_id", client_logs)) == len(clients)
    for service in ("fedops-control", "fedops-serverapp", "fedops-clientapp"):  # and the task, everywhere
        with_service = {"bool": {"filter": [run_query, term("service.name", service)]}}
        assert terms_of(es, "fedops-logs", "fedops.task.id", with_service) == {observed_run["task_id"]}, service
    server_rounds = terms_of(es, "fedops-logs", "fedops.round",
                             {"bool": {"filter": [run_query, term("service.name", "fedops-serverapp")]}})
    assert server_rounds >= set(range(1, ROUNDS + 1))
    agent_clients = terms_of(es, "fedops-logs", "fedops.client.id", term("service.name", "fedops-agent"))
    assert agent_clients >= set(clients)
    # The documents keep ECS names: one sample document has them all.
    sample = es.search("fedops-logs", client_logs, size=1)["hits"]["hits"][0]["_source"]
    assert {"@timestamp", "log.level", "message", "event.id", "ecs.version"} <= set(sample)


def test_data_status_of_every_client_every_round(observed_run: dict[str, Any]) -> None:
    es, run_id, clients = observed_run["es"], observed_run["run_id"], observed_run["clients"]
    for client in clients:
        query = {"bool": {"filter": [term("fedops.client.id", client), term("fedops.run.id", run_id)]}}
        rounds = wait_until(lambda q=query: (r := terms_of(es, "fedops-data-status", "fedops.round", q))
                            >= set(range(1, ROUNDS + 1)) and r, 30, f"data status of {client} for every round")
        assert rounds >= set(range(1, ROUNDS + 1))
        doc = es.search("fedops-data-status", query, size=1)["hits"]["hits"][0]["_source"]
        data = doc["data"]
        assert data["sample_count"] > 0 and data["feature_count"] == 64
        assert sum(data["label_histogram"].values()) == data["sample_count"]
        assert len(data["schema_hash"]) == 16 and data["freshness_s"] >= 0
        assert "x_train" not in json.dumps(doc)  # aggregates only: no arrays, no rows
    enrolment = terms_of(es, "fedops-data-status", "fedops.client.id", term("fedops.round", 0))
    assert enrolment >= set(clients)
    # The control service holds the same reports: per run through the API and CLI.
    reports = observed_run["stack"].ctl_json("clients", "data-status", "--run", run_id, "--latest")["reports"]
    assert {r["client_id"] for r in reports} == set(clients)
    assert all(r["summary"]["sample_count"] > 0 for r in reports)


def test_resource_samples_tagged_with_run_round_and_model_version(observed_run: dict[str, Any]) -> None:
    es, run_id, clients = observed_run["es"], observed_run["run_id"], observed_run["clients"]
    run_query = term("fedops.run.id", run_id)
    assert terms_of(es, "fedops-resources", "fedops.client.id", run_query) == set(clients)
    versions = terms_of(es, "fedops-resources", "fedops.model.version", run_query)
    assert versions >= set(range(0, ROUNDS))  # round r trains from the version stored after round r-1
    stats = es.search(
        "fedops-resources",
        run_query,
        size=0,
        aggs={"cpu": {"max": {"field": "host.cpu.usage"}}, "rss": {"min": {"field": "process.memory.rss"}}},
    )
    assert stats["aggregations"]["cpu"]["value"] > 0
    assert stats["aggregations"]["rss"]["value"] > 10 * 1024 * 1024


def test_round_metrics_and_run_events(observed_run: dict[str, Any]) -> None:
    es, run_id, clients = observed_run["es"], observed_run["run_id"], observed_run["clients"]
    run_query = term("fedops.run.id", run_id)
    central = es.search("fedops-round-metrics", {"bool": {"filter": [run_query, term("metric.scope", "central")]}},
                        sort=[{"fedops.round": "asc"}])["hits"]["hits"]
    assert [h["_source"]["fedops.round"] for h in central] == list(range(0, ROUNDS + 1))
    assert all("accuracy" in h["_source"]["metrics"] for h in central)
    client_docs = {"bool": {"filter": [run_query, term("metric.scope", "client"), term("fedops.phase", "train")]}}
    assert terms_of(es, "fedops-round-metrics", "fedops.client.id", client_docs) == set(clients)
    transfer = es.search("fedops-round-metrics", client_docs, size=0,
                         aggs={"sent": {"min": {"field": "fedops.bytes_sent"}}})
    assert transfer["aggregations"]["sent"]["value"] > 1000  # the model went to every client
    # `run_finished` is written after the run's processes are stopped, so it may still be on its way.
    expected = {"run_created", "round_phase", "round_finished", "model_stored", "run_finished"}
    actions = wait_until(lambda: (a := terms_of(es, "fedops-run-events", "event.action", run_query)) >= expected
                         and a, 30, "every kind of run event in Elasticsearch")
    assert expected <= actions


def test_prometheus_scrapes_control_and_every_agent(observed_run: dict[str, Any]) -> None:
    prometheus, clients, task_id = observed_run["prometheus"], observed_run["clients"], observed_run["task_id"]
    agent_targets = wait_until(
        lambda: (t := [t for t in prometheus.targets() if t["labels"].get("job") == "fedops-agents"
                       and t["health"] == "up"]) and len(t) == len(clients) and t, 30,
        "Prometheus to discover and scrape every agent through /sd/agents")
    assert {t["labels"]["client_id"] for t in agent_targets} == set(clients)
    rounds = wait_until(lambda: prometheus.query(f'fedops_rounds_completed_total{{task_id="{task_id}"}}'), 30,
                        "fedops_rounds_completed_total")
    assert float(rounds[0]["value"][1]) == ROUNDS
    cpu = prometheus.query("fedops_agent_cpu_usage_ratio")
    assert {s["metric"]["client_id"] for s in cpu} == set(clients)
    sent = prometheus.query('sum by (client_id) (fedops_client_transfer_bytes_total{direction="sent"})')
    assert {s["metric"]["client_id"] for s in sent} == set(clients) and all(float(s["value"][1]) > 0 for s in sent)
    phases = prometheus.query("sum by (phase) (fedops_round_phase_duration_seconds_count)")
    assert {s["metric"]["phase"]: float(s["value"][1]) for s in phases} == {"train": ROUNDS, "evaluate": ROUNDS}
    finished = prometheus.query('fedops_runs{state="finished",outcome="completed"}')
    assert float(finished[0]["value"][1]) >= 1
    ages = prometheus.query("fedops_client_heartbeat_age_seconds")
    assert {s["metric"]["client_id"] for s in ages} >= set(clients)


GRAFANA = Path(__file__).resolve().parents[1] / "observability" / "grafana"
RULES = PROMETHEUS_YML.parent / "rules" / "fedops.rules.yml"
# Grafana's built-in variables and our template variables, as Grafana would expand them for "All".
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "2s", "$__range": "10m", "$client": ".*",
                     "$model_version": ".*"}


def expand(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def as_signal(expr: str) -> str:
    """An alert expression with every comparison made a `bool` one: it then returns the signal it
    compares (0/1 per series) instead of nothing while the alert does not fire."""
    return re.sub(r"\s(>=|<=|==|!=|>|<)\s+(?!bool\b)", r" \1 bool ", expr)


def grafana_targets() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for board in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(board.read_text())["panels"]:
            for target in panel["targets"]:
                name = f"{board.stem}: {panel['title']} {target['refId']}"
                found.append((name, target["datasource"]["type"], target))
    return found


def test_rules_load_and_every_rule_expression_returns_data(observed_run: dict[str, Any]) -> None:
    prometheus = observed_run["prometheus"]
    groups = http_json(f"{prometheus.url}/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert {r.get("record") or r["alert"] for r in rules} == set(loaded)
    assert all(rule["health"] == "ok" for rule in loaded.values()), [r for r in loaded.values() if r["health"] != "ok"]
    start, end = observed_run["started"], observed_run["finished"]
    for rule in rules:
        expr = rule["expr"] if "record" in rule else as_signal(rule["expr"])
        result = prometheus.query_range(expr, start, end)
        assert result, f"{rule.get('record') or rule['alert']}: no data for {expr}"


def test_every_grafana_panel_query_returns_data(observed_run: dict[str, Any]) -> None:
    prometheus, es = observed_run["prometheus"], observed_run["es"]
    start, end = observed_run["started"], observed_run["finished"]
    targets = grafana_targets()
    assert len(targets) >= 20
    for name, kind, target in targets:
        if kind == "prometheus":
            assert prometheus.query_range(expand(target["expr"]), start, end), f"{name}: no data for {target['expr']}"
        else:
            hits = es.search("fedops-logs", {"query_string": {"query": target["query"]}}, size=1)
            assert hits["hits"]["total"]["value"] > 0, f"{name}: no documents for {target['query']}"
    variables = [v for board in (GRAFANA / "dashboards").glob("*.json")
                 for v in json.loads(board.read_text())["templating"]["list"]]
    for variable in variables:  # label_values(metric, label) as Grafana resolves it
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"]).groups()
        values = http_json(f"{prometheus.url}/api/v1/label/{label}/values?match[]={metric}")["data"]
        assert values, variable["name"]


KIBANA_OBJECTS = Path(__file__).resolve().parents[1] / "observability" / "elk" / "kibana" / "saved_objects.ndjson"


def mapped_fields(es: Elasticsearch, index: str) -> set[str]:
    """Every field path of the real mapping behind an index or alias."""
    fields: set[str] = set()

    def walk(properties: dict[str, Any], prefix: str) -> None:
        for name, spec in properties.items():
            fields.add(prefix + name)
            walk(spec.get("properties", {}), f"{prefix}{name}.")

    for mapping in http_json(f"{es.url}/{index}/_mapping").values():
        walk(mapping["mappings"].get("properties", {}), "")
    return fields


def test_kibana_objects_use_real_fields_and_their_queries_find_documents(observed_run: dict[str, Any]) -> None:
    es = observed_run["es"]
    objects = {o["id"]: o for o in map(json.loads, KIBANA_OBJECTS.read_text().splitlines())}
    patterns = {o["id"]: o["attributes"] for o in objects.values() if o["type"] == "index-pattern"}
    for attributes in patterns.values():
        assert attributes["timeFieldName"] in mapped_fields(es, attributes["title"])
    searches = [o for o in objects.values() if o["type"] == "search"]
    assert len(searches) >= 3
    for search in searches:
        index = patterns[search["references"][0]["id"]]["title"]
        fields = mapped_fields(es, index)
        source = json.loads(search["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        query = source["query"]["query"]
        used = set(search["attributes"]["columns"]) | {f for f, _ in search["attributes"]["sort"]} | set(
            re.findall(r"([\w.@]+):", query))
        assert used <= fields, f"{search['id']}: {sorted(used - fields)} not in the {index} mapping"
        hits = es.search(index, {"query_string": {"query": query}}, size=1)["hits"]["total"]["value"]
        assert hits > 0, f"{search['id']}: no documents for {query}"
