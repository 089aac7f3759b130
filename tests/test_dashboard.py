"""The Streamlit dashboard against a real control service with a finished run (Streamlit's AppTest),
plus one real-browser check in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from fedops_common.net import free_port
from fedops_common.proc import console_script, stop_process_group
from fedops_control.devstack import LocalStack
from tests.backends import Elasticsearch, Prometheus, prometheus_config, wait_until
from tests.test_e2e import create_task, start_clients, wait_finished

pytestmark = pytest.mark.e2e
PAGES = Path(__file__).resolve().parents[1] / "fedops_dash" / "pages"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, digits_data: list[Path],
                 elasticsearch: Elasticsearch) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("dash")
    stack = LocalStack(root / "stack", elasticsearch_url=elasticsearch.url, metrics_address=f"127.0.0.1:{free_port()}")
    prometheus = Prometheus(root / "prometheus")
    saved = dict(os.environ)
    try:
        stack.start_control()
        prometheus.start(prometheus_config(stack.metrics_address))
        task_id = create_task(stack, rounds=1)
        clients = start_clients(stack, task_id, digits_data[:2], "dash")
        run = stack.ctl_json("run", "start", task_id)
        finished = wait_finished(stack, run["id"])
        assert finished["outcome"] == "RUN_OUTCOME_COMPLETED", finished.get("reason")
        wait_until(lambda: elasticsearch.count("fedops-logs", {"term": {"fedops.run.id": run["id"]}}) > 0, 60,
                   "the run's logs in Elasticsearch")
        wait_until(lambda: prometheus.query("fedops_rounds_completed_total"), 30, "Prometheus to scrape the run")
        os.environ.update({"FEDOPS_CONTROL": stack.control_address, "FEDOPS_TOKEN": stack.admin_token,
                           "FEDOPS_ELASTICSEARCH_URL": elasticsearch.url,
                           "FEDOPS_PROMETHEUS_URL": prometheus.url})
        yield {"stack": stack, "task_id": task_id, "run_id": run["id"], "clients": clients, "es": elasticsearch}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stack.stop()
        prometheus.stop()


def page(name: str, **query: str) -> AppTest:
    app = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    for key, value in query.items():
        app.query_params[key] = value
    return app.run()


def texts(app: AppTest) -> str:
    parts = [m.value for m in app.markdown] + [c.value for c in app.caption] + [i.value for i in app.info]
    return "\n".join(str(p) for p in parts)


def no_errors(app: AppTest) -> None:
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]


def test_overview(finished_run: dict[str, Any]) -> None:
    app = page("overview")
    no_errors(app)
    values = {m.label: m.value for m in app.metric}
    assert int(values["Tasks"]) >= 1 and values["Active runs"] == "0"
    assert int(values["Clients online"]) + int(values["Clients training"]) >= 0
    assert int(values["Rounds completed"]) >= 1 and int(values["Scrape targets up"]) >= 1
    recent = next(df.value for df in app.dataframe if "outcome" in df.value.columns)
    assert finished_run["run_id"] in list(recent["run"])
    assert list(recent[recent["run"] == finished_run["run_id"]]["outcome"]) == ["completed"]


def test_run_page_shows_rounds_participation_metrics_and_diagnosis(finished_run: dict[str, Any]) -> None:
    app = page("run", run=finished_run["run_id"])
    no_errors(app)
    assert "finished" in texts(app) and "completed" in texts(app)
    global_rounds = app.dataframe[0].value
    assert list(global_rounds["round"]) == [0, 1] and global_rounds["central accuracy"].iloc[-1] > 0
    participation = app.dataframe[1].value
    assert set(participation["responded"].iloc[0].split(", ")) == set(finished_run["clients"])
    per_client = app.dataframe[2].value
    assert set(per_client["client"]) == set(finished_run["clients"])
    assert app.info and "completed after 1 rounds" in app.info[0].value
    assert len(app.get("arrow_line_chart")) >= 1 or len(app.get("vega_lite_chart")) >= 1


def test_clients_page_data_status_and_resources(finished_run: dict[str, Any]) -> None:
    app = page("clients", client=finished_run["clients"][0])
    no_errors(app)
    metrics = {m.label: m.value for m in app.metric}
    assert int(metrics["Samples"]) > 0 and metrics["Features"] == "64"
    assert "samples; model versions" in texts(app)


def test_models_page_lists_compares_and_downloads(finished_run: dict[str, Any]) -> None:
    app = page("models", task=finished_run["task_id"])
    no_errors(app)
    table = app.dataframe[0].value
    assert list(table["round"]) == [1] and list(table["run"]) == [finished_run["run_id"]]
    app.button[0].click().run()
    no_errors(app)
    assert len(app.get("download_button")) == 1


def test_logs_page_searches_elasticsearch(finished_run: dict[str, Any]) -> None:
    app = page("logs")
    no_errors(app)
    app.text_input[1].input(finished_run["run_id"])
    app.text_input[0].input(finished_run["clients"][0])
    app.button[0].click().run()
    no_errors(app)
    hits = app.dataframe[0].value
    assert len(hits) > 0 and set(hits["run"]) == {finished_run["run_id"]}
    assert set(hits["client"]) == {finished_run["clients"][0]}


def test_tasks_page_validates_edits_selects_starts_and_stops(finished_run: dict[str, Any]) -> None:
    stack: LocalStack = finished_run["stack"]
    app = page("tasks", task=finished_run["task_id"])
    no_errors(app)
    create = app.expander[0]
    create.text_input[0].input("")  # no title: refused by the control service, naming the field
    create.text_input[2].input(str(Path(__file__).resolve().parents[1] / "examples" / "digits"))
    app.button[0].click().run()
    assert app.error and "title" in app.error[0].value
    app.expander[0].text_input[0].input("from the dashboard")
    app.button[0].click().run()
    assert app.success and app.success[0].value.startswith("Created task-")
    app = page("tasks", task=finished_run["task_id"])
    form_title = [t for t in app.text_input if t.label == "Title"][-1]
    form_title.input("renamed in the dashboard")
    [b for b in app.button if b.label == "Save"][0].click().run()
    no_errors(app)
    assert stack.ctl_json("task", "show", finished_run["task_id"])["title"] == "renamed in the dashboard"
    selection = app.multiselect[0]
    selection.set_value(finished_run["clients"][:2])
    [b for b in app.button if b.label == "Save selection"][0].click().run()
    assert sorted(stack.ctl_json("task", "show", finished_run["task_id"])["selected_client_ids"]) == sorted(
        finished_run["clients"][:2])
    [b for b in app.button if b.label == "Start FL"][0].click().run()
    no_errors(app)
    started = app.success[-1].value
    run_id = started.split()[1]
    app = page("tasks", task=finished_run["task_id"])
    [b for b in app.button if b.label == "Stop now"][0].click().run()
    no_errors(app)
    stopped = stack.ctl_json("run", "show", run_id)
    assert stopped["state"] == "RUN_STATE_FINISHED" and stopped["outcome"] == "RUN_OUTCOME_STOPPED"


def test_pages_degrade_with_a_notice_when_backends_are_absent(finished_run: dict[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDOPS_ELASTICSEARCH_URL")
    app = page("logs")
    assert not app.exception and "Elasticsearch is not configured" in app.info[0].value
    monkeypatch.delenv("FEDOPS_PROMETHEUS_URL")
    app = page("overview")
    assert not app.exception and any("Prometheus is not configured" in i.value for i in app.info)
    monkeypatch.setenv("FEDOPS_CONTROL", f"127.0.0.1:{free_port()}")
    app = page("overview")
    assert not app.exception and app.error and "UNAVAILABLE" in app.error[0].value


def test_real_browser_clicks_through_a_run(finished_run: dict[str, Any], tmp_path: Path) -> None:
    """Headless Chromium (Debian) driven by chromedriver through Selenium: open the dashboard,
    go to the Run page of the finished run, see its rounds, save a screenshot."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        raise AssertionError("chromium and chromium-driver are not installed: run scripts/install_backends.sh")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port, metrics_port = free_port(), free_port()
    dash = subprocess.Popen([console_script("fedops-dash"), "--port", str(port), "--telemetry-dir",
                             str(tmp_path / "dash-telemetry"), "--metrics-listen", f"127.0.0.1:{metrics_port}"],
                            start_new_session=True,
                            stdout=open(tmp_path / "dash.log", "wb"), stderr=subprocess.STDOUT)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1600", f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    browser = None
    try:
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200,
                   60, "the dashboard to serve")
        browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
        wait = WebDriverWait(browser, 60)
        browser.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda b: "Overview" in b.find_element(By.TAG_NAME, "body").text)
        wait.until(lambda b: b.find_elements(By.XPATH, "//a[contains(@href, '/run')]"))
        browser.find_element(By.XPATH, "//a[contains(@href, '/run')]").click()
        wait.until(lambda b: finished_run["run_id"] in b.find_element(By.TAG_NAME, "body").text)
        wait.until(lambda b: "Participation per round" in b.find_element(By.TAG_NAME, "body").text
                   and "round 1 of 1" in b.find_element(By.TAG_NAME, "body").text)
        time.sleep(2)  # let the charts draw before the picture
        shot = tmp_path / "run-page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
        artifacts = Path(os.environ.get("FEDOPS_TEST_ARTIFACTS", tmp_path))
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, artifacts / "dashboard-run-page.png")
        # The dashboard is an actor like the others: ECS logs in its telemetry dir, and /metrics.
        lines = (tmp_path / "dash-telemetry" / "logs" / "fedops-dash.jsonl").read_text().splitlines()
        assert lines and all('"service.name": "fedops-dash"' in line for line in lines)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "process_cpu_seconds_total" in metrics
    finally:
        if browser is not None:
            browser.quit()
        stop_process_group(dash)


def test_fedopsctl_covers_the_dashboards_telemetry_views(finished_run: dict[str, Any]) -> None:
    stack: LocalStack = finished_run["stack"]
    es_url = finished_run["es"].url
    logs = stack.ctl_json("logs", "search", "--elasticsearch-url", es_url, "--run", finished_run["run_id"],
                          "--client", finished_run["clients"][1], "--round", "1")
    assert logs and {row["client"] for row in logs} == {finished_run["clients"][1]}
    assert {row["round"] for row in logs} == {1}
    samples = stack.ctl_json("clients", "resources", finished_run["clients"][0], "--elasticsearch-url", es_url)
    assert samples and all(0 <= row["cpu"] <= 1 for row in samples)
    assert finished_run["run_id"] in {row["run"] for row in samples}
    no_es = stack.ctl("logs", "search", "--elasticsearch-url", "", check=False)
    assert no_es.returncode == 2 and "Elasticsearch" in no_es.stderr
    bad = stack.ctl("logs", "search", "--elasticsearch-url", es_url, "--level", "loud", check=False)
    assert bad.returncode == 2 and "level" in bad.stderr


def test_fedopsctl_shows_the_overviews_prometheus_figures(finished_run: dict[str, Any]) -> None:
    stack: LocalStack = finished_run["stack"]
    rows = {r["name"]: r["value"] for r in stack.ctl_json("metrics")}  # FEDOPS_PROMETHEUS_URL from the fixture
    assert rows["rounds_completed"] >= 1 and rows["scrape_targets_up"] >= 1 and "client_failures" in rows
    custom = stack.ctl_json("metrics", "--query", "fedops_clients_connected")
    assert custom and custom[0]["value"] >= 1
    bad = stack.ctl("metrics", "--query", "sum(", check=False)
    assert bad.returncode == 2 and "error" in bad.stderr
