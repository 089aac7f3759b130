"""Grafana boards and provisioning, Kibana saved objects: strict structural checks (the queries
themselves run against real Prometheus/Elasticsearch in test_observability_e2e.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedops_common.telemetry.kibana import (
    SAVED_OBJECTS,
    KibanaError,
    import_saved_objects,
)

pytestmark = pytest.mark.integration  # real servers or processes, no FL run

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "observability" / "grafana"
BOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PANEL_TYPES = {"timeseries", "stat", "logs", "table", "gauge", "bargauge"}


def datasource_uids() -> dict[str, str]:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "fedops.yml").read_text())
    return {d["uid"]: d["type"] for d in provisioned["datasources"]}


def saved_objects() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAVED_OBJECTS.read_text().splitlines() if line.strip()]


def test_three_boards_for_lifecycle_resources_and_control_plane() -> None:
    assert {json.loads(b.read_text())["uid"] for b in BOARDS} == {
        "fedops-fl-lifecycle", "fedops-client-resources", "fedops-control-plane"}
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "fedops.yml").read_text())
    assert provider["apiVersion"] == 1 and provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("board_path", BOARDS, ids=lambda p: p.stem)
def test_grafana_board_is_well_formed(board_path: Path) -> None:
    board = json.loads(board_path.read_text())
    sources = datasource_uids()
    assert board["title"].startswith("FedOps") and board["schemaVersion"] >= 36 and board["panels"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES and panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        assert sources.get(panel["datasource"]["uid"]) == panel["datasource"]["type"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert (target.get("expr") if panel["datasource"]["type"] == "prometheus" else target.get("query"))
    used = {name for panel in board["panels"] for t in panel["targets"] for name in ("client", "model_version")
            if f"${name}" in t.get("expr", "")}
    assert used <= {v["name"] for v in board["templating"]["list"]}


def test_kibana_saved_objects_are_consistent() -> None:
    objects = saved_objects()
    by_key = {(o["type"], o["id"]): o for o in objects}
    assert len(by_key) == len(objects)
    assert {o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"} == {
        f"fedops-{f}" for f in ("logs", "data-status", "resources", "round-metrics", "run-events")}
    assert {o["id"] for o in objects if o["type"] == "search"} >= {
        "fedops-client-logs", "fedops-errors-by-run", "fedops-data-status-by-client"}
    for obj in objects:
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in by_key, f"{obj['id']} references missing {ref}"
        if obj["type"] == "search":
            source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
            assert source["query"]["language"] == "lucene"
            assert source["indexRefName"] in {r["name"] for r in obj["references"]}
        if obj["type"] == "dashboard":
            panels = json.loads(obj["attributes"]["panelsJSON"])
            assert {p["panelRefName"] for p in panels} == {r["name"] for r in obj["references"]}


class _FakeKibana(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        ok = b"saved_objects.ndjson" in body
        answer = json.dumps({"success": ok, "successCount": body.count(b'{"id":') if ok else 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        return


def test_kibana_import_posts_the_ndjson_to_the_saved_objects_api() -> None:
    """Kibana cannot run here: a stand-in HTTP server checks what the import sends."""
    server = HTTPServer(("127.0.0.1", 0), _FakeKibana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answer = import_saved_objects(f"http://127.0.0.1:{server.server_port}")
        path, headers, body = _FakeKibana.received[-1]
        assert path == "/api/saved_objects/_import?overwrite=true" and headers["kbn-xsrf"]
        assert headers["content-type"].startswith("multipart/form-data; boundary=")
        assert SAVED_OBJECTS.read_bytes() in body and answer["successCount"] == len(saved_objects())
    finally:
        server.shutdown()
    with pytest.raises(KibanaError):
        import_saved_objects(f"http://127.0.0.1:{server.server_port}", timeout_s=2)


def test_prometheus_rules_pass_check_and_unit_tests() -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        raise AssertionError("promtool is not installed: run scripts/install_backends.sh")
    rules_dir = ROOT / "observability" / "prometheus"
    checked = subprocess.run([promtool, "check", "rules", "rules/fedops.rules.yml"], cwd=rules_dir,
                             capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 13 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "fedops.rules_test.yml"], cwd=rules_dir / "tests",
                            capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in yaml.safe_load((rules_dir / "rules" / "fedops.rules.yml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    unit_tested = set()
    for case in yaml.safe_load((rules_dir / "tests" / "fedops.rules_test.yml").read_text())["tests"]:
        unit_tested |= {t["alertname"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    assert alerts == unit_tested, f"alerts without a firing unit test: {alerts - unit_tested}"
