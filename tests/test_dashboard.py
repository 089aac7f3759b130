"""The Streamlit dashboard against a real control service with a completed and a failed run (Streamlit's
AppTest), real-browser checks in headless Chromium (cold-start deep links, sign-in, roles, every page
photographed), and fedopsctl at 80 columns."""

from __future__ import annotations

import json
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
PAGES = Path(__file__).resolve().parents[1] / "fedops_dash" / "views"
FAILING_APP = Path(__file__).resolve().parent / "apps" / "failing"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, digits_data: list[Path],
                 elasticsearch: Elasticsearch) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("dash")
    stack = LocalStack(root / "stack", elasticsearch_url=elasticsearch.url)
    prometheus = Prometheus(root / "prometheus")
    saved = dict(os.environ)
    try:
        stack.start_control()
        prometheus.start(prometheus_config(stack.metrics_address))
        task_id = create_task(stack, rounds=1)
        # A second task whose ServerApp raises: a failed run, started after the completed one (newest first).
        failing_task = stack.ctl_json("task", "create", "--title", "always fails", "--app", str(FAILING_APP),
                                      "--rounds", "1", "--min-clients", "2", "--round-timeout", "60")["id"]
        clients = start_clients(stack, task_id, digits_data[:2], "dash", both_in=failing_task)
        stack.ctl("task", "select", failing_task, *clients)
        run = stack.ctl_json("run", "start", task_id)
        finished = wait_finished(stack, run["id"])
        assert finished["outcome"] == "RUN_OUTCOME_COMPLETED", finished.get("reason")
        wait_until(lambda: elasticsearch.count("fedops-logs", {"term": {"fedops.run.id": run["id"]}}) > 0, 60,
                   "the run's logs in Elasticsearch")
        wait_until(lambda: prometheus.query("fedops_rounds_completed_total"), 30, "Prometheus to scrape the run")
        wait_until(lambda: all(not c.get("current_run_id") for c in stack.ctl_json("clients", "list")["clients"]),
                   60, "the clients to be free")
        failed = stack.ctl_json("run", "start", failing_task)["id"]
        assert wait_finished(stack, failed)["outcome"] == "RUN_OUTCOME_FAILED"
        os.environ.update({"FEDOPS_CONTROL": stack.control_address, "FEDOPS_TOKEN": stack.admin_token,
                           "FEDOPS_ELASTICSEARCH_URL": elasticsearch.url,
                           "FEDOPS_PROMETHEUS_URL": prometheus.url})
        yield {"stack": stack, "task_id": task_id, "run_id": run["id"], "clients": clients, "es": elasticsearch,
               "failed_run_id": failed, "failing_task_id": failing_task}
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
    assert int(values["Tasks"]) >= 2 and values["Active runs"] == "0"
    assert int(values["Clients online"]) + int(values["Clients finished"]) + int(values["Clients failed"]) >= 2
    assert int(values["Rounds completed"]) >= 1 and int(values["Scrape targets up"]) >= 1
    recent = next(df.value for df in app.dataframe if "reason" in df.value.columns)
    links = list(recent["run"])  # link cells: the Run page of each run, newest first
    assert links[:2] == [f"run?run={finished_run['failed_run_id']}", f"run?run={finished_run['run_id']}"]
    assert list(recent["status"])[:2] == ["failed", "completed"]


def test_overview_says_unavailable_instead_of_zero(finished_run: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDOPS_TOKEN", "fop_not-a-token")
    app = page("overview")
    assert app.error and "UNAUTHENTICATED" in app.error[0].value
    values = {m.label: m.value for m in app.metric}
    assert values["Tasks"] == values["Active runs"] == values["Clients online"] == "unavailable"


def test_run_page_shows_health_charts_per_client_timeline_and_links(finished_run: dict[str, Any]) -> None:
    app = page("run", run=finished_run["run_id"])
    no_errors(app)
    assert app.success[0].value == "**Completed 1 of 1 round.**"
    assert "started 20" in texts(app) and "took " in texts(app) and "[logs](logs?run=" in texts(app)
    global_rounds = app.dataframe[0].value
    assert list(global_rounds["round"]) == [0, 1] and global_rounds["central accuracy"].iloc[-1] > 0
    per_client = app.dataframe[1].value
    assert set(per_client["client"]) == {f"clients?client={c}" for c in finished_run["clients"]}
    participation = app.dataframe[2].value
    assert set(participation["responded"].iloc[0].split(", ")) == set(finished_run["clients"])
    assert participation["model"].iloc[0].startswith("models?model=model-")
    # loss, accuracy, per-client local metric, train time per client, round timeline: five charts
    assert len(app.get("vega_lite_chart")) == 5
    assert app.info and "completed after 1 rounds" in app.info[0].value


def test_run_page_of_a_failed_run_is_red_with_the_reason(finished_run: dict[str, Any]) -> None:
    app = page("run", run=finished_run["failed_run_id"])
    assert not app.exception, app.exception
    assert app.error[0].value.startswith("**Failed after 0 completed rounds: ")
    assert "failing_app: this ServerApp always fails" in app.error[0].value


def test_clients_page_data_status_and_resources(finished_run: dict[str, Any]) -> None:
    app = page("clients", client=finished_run["clients"][0])
    no_errors(app)
    metrics = {m.label: m.value for m in app.metric}
    assert int(metrics["Samples"]) > 0 and metrics["Features"] == "64"
    assert "on **vm**" in texts(app) or " on **" in texts(app)
    assert "samples in the last 15 minutes" in texts(app)
    assert len(app.get("vega_lite_chart")) >= 6  # labels, agent CPU/RSS, disk, host CPU/memory, network


def test_models_page_metrics_first_card_lineage_download(finished_run: dict[str, Any]) -> None:
    app = page("models", task=finished_run["task_id"])
    no_errors(app)
    table = app.dataframe[0].value
    assert list(table.columns)[:3] == ["version", "tags", "central.accuracy"], list(table.columns)
    assert list(table["round"]) == [1] and list(table["run"]) == [f"run?run={finished_run['run_id']}"]
    assert app.success and "Best: **v1**" in app.success[0].value
    assert "Model card: v1" in [h.value for h in app.subheader]
    assert len(app.get("graphviz_chart")) == 1 and len(app.get("download_button")) == 1


def test_logs_page_filters_by_pickers_and_level(finished_run: dict[str, Any]) -> None:
    app = page("logs", run=finished_run["run_id"], client=finished_run["clients"][0])
    no_errors(app)
    hits = app.dataframe[0].value
    assert len(hits) > 0 and set(hits["run"]) == {f"run?run={finished_run['run_id']}"}
    assert set(hits["client"]) == {f"clients?client={finished_run['clients'][0]}"}
    assert set(hits["level"]) <= {"info", "warning", "error", "critical"}
    app.selectbox[3].set_value("warning").run()
    no_errors(app)
    assert "level warning or above" in texts(app)
    for table in app.dataframe:
        assert set(table.value["level"]) <= {"warning", "error", "critical"}
    assert len(app.get("download_button")) == 1


def test_tasks_page_validates_edits_selects_starts_and_the_run_page_stops(finished_run: dict[str, Any]) -> None:
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
    # Many rounds: with warm apps a 1-round run can end before the stop below reaches it.
    stack.ctl("task", "update", finished_run["task_id"], "--rounds", "50")
    try:
        [b for b in app.button if b.label == "Start FL"][0].click().run()
    finally:
        stack.ctl("task", "update", finished_run["task_id"], "--rounds", "1")
    no_errors(app)
    started = app.success[-1].value
    run_id = started.split()[1]
    # Stopping is the Run page's, and asks first: nothing happens until confirmed.
    app = page("run", run=run_id)
    [b for b in app.button if b.label == "Stop now"][0].click().run()
    assert any(f"Stop run {run_id} now" in w.value for w in app.warning), [w.value for w in app.warning]
    assert stack.ctl_json("run", "show", run_id)["state"] != "RUN_STATE_FINISHED"
    [b for b in app.button if b.label == "Yes, stop the run"][0].click().run()
    stopped = stack.ctl_json("run", "show", run_id)
    assert stopped["state"] == "RUN_STATE_FINISHED" and stopped["outcome"] == "RUN_OUTCOME_STOPPED"
    assert stopped["reason"] == "stopped by bootstrap admin (hard)"
    app = page("run", run=run_id)
    assert app.info[0].value.startswith("**Stopped after ") and "stopped by bootstrap admin" in app.info[0].value


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


class Browser:
    """A fresh `fedops-dash` (no default identity: every session signs in) and headless Chromium (Debian)
    driven by chromedriver through Selenium; screenshots go to the artefacts directory."""

    def __init__(self, tmp_path: Path, artefacts: Path, site: Path | None = None) -> None:
        """``site``: a folder imported first (holding another copy of fedops_dash)."""
        chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
        if not chromium or not driver_path:
            raise AssertionError("chromium and chromium-driver are not installed: run scripts/install_backends.sh")
        from selenium import webdriver
        from selenium.webdriver.support.ui import WebDriverWait

        self.port, self.metrics_port, self.tmp, self.artefacts = free_port(), free_port(), tmp_path, artefacts
        env = {k: v for k, v in os.environ.items() if k not in ("FEDOPS_TOKEN", "FEDOPS_TOKEN_FILE")}
        if site is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
        self.dash = subprocess.Popen([console_script("fedops-dash"), "--port", str(self.port), "--telemetry-dir",
                                      str(tmp_path / "dash-telemetry"), "--metrics-listen",
                                      f"127.0.0.1:{self.metrics_port}"], cwd=tmp_path, env=env,  # no .fedops here
                                     start_new_session=True, stdout=open(tmp_path / "dash.log", "wb"),
                                     stderr=subprocess.STDOUT)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1600,2400", f"--user-data-dir={tmp_path / 'chrome'}"):
            options.add_argument(flag)
        self.driver = None
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stcore/health",
                                                  timeout=2).status == 200, 60, "the dashboard to serve")
        self.driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
        self.wait = WebDriverWait(self.driver, 60)

    def body(self) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def until(self, *needles: str, timeout_s: float = 0) -> str:
        """Wait (60 s, or ``timeout_s``) until the page shows every needle; its text."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            wait = WebDriverWait(self.driver, timeout_s) if timeout_s else self.wait
            wait.until(lambda _: all(n in self.body() for n in needles))
        except TimeoutException:
            self.driver.save_screenshot(str(self.artefacts / "dashboard-timed-out.png"))
            missing = [n for n in needles if n not in self.body()]
            raise AssertionError(f"not shown: {missing} in\n{self.body()}") from None
        return self.body()

    def charts(self) -> int:
        from selenium.webdriver.common.by import By

        return len(self.driver.find_elements(By.CSS_SELECTOR, "[data-testid='stVegaLiteChart']"))

    def open(self, path: str) -> None:
        self.driver.get(f"http://127.0.0.1:{self.port}/{path}")

    def sign_in(self, token: str) -> None:
        from selenium.webdriver.common.by import By

        self.until("Sign in to FedOps")
        # Streamlit draws the form's heading before its fields: on a loaded machine the field came
        # later than the text (the whole suite on a fresh 2-core VM, with the Kubernetes build beside it).
        self.wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=password]"))
        field = self.driver.find_element(By.CSS_SELECTOR, "input[type=password]")
        field.clear()
        field.send_keys(token)
        self.click("Sign in")

    def click(self, label: str) -> None:
        from selenium.webdriver.common.by import By

        self.wait.until(lambda b: b.find_elements(By.XPATH, f"//button[.//p[text()='{label}']]"))
        self.driver.find_element(By.XPATH, f"//button[.//p[text()='{label}']]").click()

    def nav(self, title: str) -> None:
        from selenium.webdriver.common.by import By

        link = f"//a[@data-testid='stSidebarNavLink'][normalize-space(.)='{title}']"
        self.wait.until(lambda b: b.find_elements(By.XPATH, link))
        self.driver.find_element(By.XPATH, link).click()

    def nav_titles(self) -> list[str]:
        from selenium.webdriver.common.by import By

        return [a.text for a in self.driver.find_elements(By.XPATH, "//a[@data-testid='stSidebarNavLink']")]

    def shot(self, name: str) -> Path:
        time.sleep(2)  # let the charts draw before the picture
        path = self.artefacts / f"dashboard-{name}.png"
        assert self.driver.save_screenshot(str(path)) and path.stat().st_size > 20_000
        print(f"screenshot: {path}")
        return path

    def close(self) -> None:
        if self.driver is not None:
            self.driver.quit()
        stop_process_group(self.dash)


def _artefacts(tmp_path: Path) -> Path:
    artefacts = Path(os.environ.get("FEDOPS_TEST_ARTIFACTS") or tmp_path / "artefacts")
    artefacts.mkdir(parents=True, exist_ok=True)
    print(f"artefacts: {artefacts}")
    return artefacts


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    started = Browser(tmp_path, _artefacts(tmp_path))
    try:
        yield started
    finally:
        started.close()


STALE_PAGE = 'import streamlit as st\n\nst.title("Stale {name} page of an earlier version")\n'


@pytest.fixture
def upgraded_in_place(tmp_path: Path) -> Iterator[Browser]:
    """The dashboard as an in-place upgrade leaves it: this fedops_dash (copied into a folder imported
    first), plus the ``pages/`` folder of the version before the pages moved to ``views/``, with its
    old scripts and the ``__pycache__`` a git pull keeps."""
    site = tmp_path / "site"
    shutil.copytree(PAGES.parent, site / "fedops_dash", ignore=shutil.ignore_patterns("__pycache__"))
    stale = site / "fedops_dash" / "pages"
    (stale / "__pycache__").mkdir(parents=True)
    for name in ("overview", "tasks", "run", "clients", "models", "logs"):
        (stale / f"{name}.py").write_text(STALE_PAGE.format(name=name))
        (stale / "__pycache__" / f"{name}.cpython-311.pyc").write_bytes(b"")
    started = Browser(tmp_path, _artefacts(tmp_path), site=site)
    try:
        yield started
    finally:
        started.close()


def test_browser_cold_start_deep_link_sign_in_and_roles(finished_run: dict[str, Any], browser: Browser) -> None:
    """A deep link is the first thing opened after the dashboard starts: the sign-in form, then that page in
    the dashboard's own navigation. A viewer is refused an action by the control service; an operator is
    not, and the audit log names them."""
    stack: LocalStack = finished_run["stack"]
    viewer = stack.ctl_json("token", "create", "--name", "vera", "--role", "viewer")["token"]
    operator = stack.ctl_json("token", "create", "--name", "otto", "--role", "operator")["token"]
    browser.open(f"run?run={finished_run['failed_run_id']}")
    browser.sign_in("fop_wrong")
    assert "UNAUTHENTICATED" in browser.until("Sign-in failed")
    browser.sign_in(viewer)
    body = browser.until("Signed in as vera (viewer)", "Failed after 0 completed rounds")
    assert "failing_app: this ServerApp always fails" in body
    assert browser.nav_titles() == ["Overview", "Tasks", "Run", "Clients", "Models", "Logs"]  # no file names
    assert "Deploy" not in browser.driver.page_source  # Streamlit's toolbar in viewer mode
    assert "run=" + finished_run["failed_run_id"] in browser.driver.current_url
    browser.shot("run-failed")
    browser.nav("Tasks")
    browser.until("Clients taking part")
    browser.click("Save selection")
    assert "PERMISSION_DENIED" in browser.until("Selecting clients failed")
    browser.click("Sign out")
    browser.sign_in(operator)
    browser.until("Signed in as otto (operator)")
    browser.nav("Tasks")
    browser.until("Clients taking part")
    browser.click("Save selection")
    browser.until("Selection saved")
    # The sign-in holds across tabs and reloads; the browser holds a random handle, never the token.
    cookies = browser.driver.get_cookies()
    assert "fedops_session" in [c["name"] for c in cookies] and operator not in json.dumps(cookies)
    first = browser.driver.current_window_handle
    browser.driver.switch_to.new_window("tab")
    browser.open(f"run?run={finished_run['failed_run_id']}")
    browser.until("Signed in as otto (operator)", "Failed after 0 completed rounds")
    browser.click("Sign out")
    browser.until("Sign in to FedOps")
    browser.driver.switch_to.window(first)
    browser.driver.refresh()
    assert "Signed in as" not in browser.until("Sign in to FedOps")
    assert "fedops_session" not in [c["name"] for c in browser.driver.get_cookies()]
    audit = "".join(p.read_text() for p in (stack.root / "control" / "telemetry" / "audit").glob("*.jsonl"))
    records = [json.loads(line) for line in audit.splitlines()]
    assert any(r["user.name"] == "otto" and r["event.action"] == "SetTaskMembership" and r["event.outcome"] == "success"
               for r in records)
    assert any(r["user.name"] == "vera" and r["event.action"] == "SetTaskMembership" and r["event.outcome"] == "failure"
               for r in records)
    # The dashboard's access log names them, in its own stream.
    lines = (browser.tmp / "dash-telemetry" / "logs" / "fedops-dash.jsonl").read_text().splitlines()
    assert lines and all('"service.name": "fedops-dash"' in line for line in lines)
    views = [json.loads(line) for line in lines if '"page viewed"' in line]
    assert {v.get("labels.user") for v in views} >= {"vera", "otto"}
    assert all(v.get("labels.stream") == "access" for v in views)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{browser.metrics_port}/metrics", timeout=5).read().decode()
    assert "process_cpu_seconds_total" in metrics


def test_browser_every_page_from_a_cold_start(finished_run: dict[str, Any], browser: Browser) -> None:
    """Deep links to each page opened first in a fresh dashboard, signed in as admin; a picture of each."""
    stack: LocalStack = finished_run["stack"]
    client = finished_run["clients"][0]
    browser.open(f"run?run={finished_run['run_id']}")
    browser.sign_in(stack.admin_token)
    body = browser.until("Completed 1 of 1 round.", "Per client", "Round timeline", "Participation per round")
    browser.wait.until(lambda _: browser.charts() == 5)  # loss, accuracy, local metric, train time, timeline
    assert "round None" not in body and "CLIENT_STATE" not in body and "RUN_STATE" not in body
    browser.shot("run")
    # The newest version (a run started and stopped by an earlier test may have stored one after the fixture's).
    newest = max(m["version"] for m in stack.ctl_json("models", "list", "--task", finished_run["task_id"])["models"])
    pages = [("Overview", ("Recent runs (newest first)", "Clients finished")),
             ("Tasks", ("Runs of this task (newest first)",)),
             ("Clients", ("Data status (aggregates only)", "Compare with", "samples in the last 15 minutes")),
             ("Models", (f"Model card: v{newest}", "Lineage")),
             ("Logs", ("Level or above", "lines, newest first"))]
    for title, needles in pages:
        browser.nav(title)
        body = browser.until(*needles)
        assert "Traceback" not in body and "CLIENT_STATE" not in body, body[-2000:]
        browser.shot(title.lower())
    # Links load pages anew: the sign-in holds (the browser keeps a handle to it, not the token).
    browser.open(f"clients?client={client}")
    assert client in browser.until("Resources", client)
    browser.open(f"logs?run={finished_run['run_id']}&client={client}&round=1")
    assert "oldest first (one round)" in browser.until("oldest first (one round)")
    browser.shot("logs-round")


def test_browser_deep_link_first_with_a_stale_pages_folder_left_by_an_upgrade(
        finished_run: dict[str, Any], upgraded_in_place: Browser) -> None:
    """A deep link opened first, with fedops_dash/pages/ of an earlier version beside the dashboard:
    the dashboard's own Run page and navigation, none of the stale pages; the log says the folder can go."""
    browser, stack = upgraded_in_place, finished_run["stack"]
    browser.open(f"run?run={finished_run['failed_run_id']}")
    browser.sign_in(stack.admin_token)
    body = browser.until("Failed after 0 completed rounds", "failing_app: this ServerApp always fails")
    assert "Stale" not in body
    assert browser.nav_titles() == ["Overview", "Tasks", "Run", "Clients", "Models", "Logs"]
    assert "run=" + finished_run["failed_run_id"] in browser.driver.current_url
    browser.nav("Tasks")
    assert "Stale" not in browser.until("Clients taking part")
    browser.open("")  # the default page (Overview) has no path of its own
    assert "Stale" not in browser.until("Recent runs (newest first)")
    browser.shot("stale-pages-folder")
    log = (browser.tmp / "dash-telemetry" / "logs" / "fedops-dash.jsonl").read_text()
    assert "a pages folder left by an earlier version is not used" in log
    assert str(browser.tmp / "site" / "fedops_dash" / "pages") in log  # the copy ran, not the source tree


def test_fedopsctl_at_80_columns_keeps_ids_and_metric_values(finished_run: dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    stack: LocalStack = finished_run["stack"]
    monkeypatch.setenv("COLUMNS", "80")
    run = stack.ctl_json("run", "show", finished_run["run_id"])
    models = stack.ctl_json("models", "list", "--task", finished_run["task_id"])["models"]
    accuracy = run["rounds"][0]["central_metrics"]["accuracy"]
    checks = {
        ("run", "list"): [finished_run["run_id"], finished_run["failed_run_id"]],
        ("run", "show", finished_run["run_id"]): [finished_run["run_id"], f"{accuracy:.4g}", *finished_run["clients"]],
        ("models", "list", "--task", finished_run["task_id"]): [models[0]["id"],
                                                              f"{models[0]['metrics']['central.accuracy']:.4g}"],
        ("clients", "list"): finished_run["clients"],
        ("task", "list"): [finished_run["task_id"], finished_run["failing_task_id"]],
        # Filtered by run, the run column is the first to go; the clients' ids stay whole.
        ("logs", "search", "--run", finished_run["run_id"], "--client", finished_run["clients"][0],
         "--elasticsearch-url", finished_run["es"].url): ["log lines", finished_run["clients"][0]],
    }
    for args, wanted in checks.items():
        out = stack.ctl(*args).stdout
        assert all(len(line) <= 80 for line in out.splitlines() if not line.startswith("completed ")), out
        assert "…" not in out, out
        for text in wanted:
            assert text in out, (args, text, out)
    listed = stack.ctl("run", "list").stdout
    assert listed.index(finished_run["failed_run_id"]) < listed.index(finished_run["run_id"])  # newest first
    every = [r["id"] for r in stack.ctl_json("run", "list")["runs"]]
    first = stack.ctl_json("run", "list", "--limit", "1")
    assert [r["id"] for r in first["runs"]] == every[:1] and first["next_page_token"]
    second = stack.ctl_json("run", "list", "--limit", "1", "--page-token", first["next_page_token"])
    assert [r["id"] for r in second["runs"]] == every[1:2]
    bad = stack.ctl("run", "list", "--page-token", "nope", check=False)
    assert bad.returncode == 2 and "page_token" in bad.stderr
    from fedops_client import ControlClient, ControlError
    from fedops_common.proto import control_pb2

    with pytest.raises(ControlError) as refused:
        ControlClient(stack.control_address, stack.security()).call("ListRuns",
                                                                    control_pb2.ListRunsRequest(page_size=5000))
    assert refused.value.code.name == "INVALID_ARGUMENT" and refused.value.details.startswith("page_size")


def test_fedopsctl_covers_the_dashboards_telemetry_views(finished_run: dict[str, Any]) -> None:
    stack: LocalStack = finished_run["stack"]
    es_url = finished_run["es"].url
    logs = stack.ctl_json("logs", "search", "--elasticsearch-url", es_url, "--run", finished_run["run_id"],
                          "--client", finished_run["clients"][1], "--round", "1")
    assert logs and {row["client"] for row in logs} == {finished_run["clients"][1]}
    assert {row["round"] for row in logs} == {1}
    samples = stack.ctl_json("clients", "resources", finished_run["clients"][0], "--elasticsearch-url", es_url,
                             "--size", "5000")  # back to the first run (a failed run and idle time came after)
    assert samples and all(0 <= row["cpu"] <= 1 for row in samples)
    assert finished_run["run_id"] in {row["run"] for row in samples}
    no_es = stack.ctl("logs", "search", "--elasticsearch-url", "", check=False)
    assert no_es.returncode == 2 and "Elasticsearch" in no_es.stderr
    bad = stack.ctl("logs", "search", "--elasticsearch-url", es_url, "--level", "loud", check=False)
    assert bad.returncode == 2 and "level" in bad.stderr


def test_log_search_keeps_transport_noise_out_and_filters_level_or_above(finished_run: dict[str, Any]) -> None:
    from fedops_common.telemetry.queries import search_logs

    es_url = finished_run["es"].url
    noisy = search_logs(es_url, text="HTTP Request", size=500, transport=True)
    assert any(h.get("log.logger") == "httpx" and h.get("log.level") == "info" for h in noisy)  # there is noise
    quiet = search_logs(es_url, text="HTTP Request", size=500)
    assert not any(h.get("log.logger") == "httpx" and h.get("log.level") in ("debug", "info") for h in quiet)
    warnings = search_logs(es_url, level="warning", size=500)
    assert warnings and {h["log.level"] for h in warnings} <= {"warning", "error", "critical"}
    assert {h["log.level"] for h in search_logs(es_url, level="info", size=2000)} > {"info"}  # and above
    one_round = search_logs(es_url, run_id=finished_run["run_id"], round_number=1, size=500, oldest_first=True)
    stamps = [h["@timestamp"] for h in one_round]
    assert stamps and stamps == sorted(stamps)


def test_fedopsctl_shows_the_overviews_prometheus_figures(finished_run: dict[str, Any]) -> None:
    stack: LocalStack = finished_run["stack"]
    rows = {r["name"]: r["value"] for r in stack.ctl_json("metrics")}  # FEDOPS_PROMETHEUS_URL from the fixture
    assert rows["rounds_completed"] >= 1 and rows["scrape_targets_up"] >= 1 and "client_failures" in rows
    custom = stack.ctl_json("metrics", "--query", "fedops_clients_connected")
    assert custom and custom[0]["value"] >= 1
    bad = stack.ctl("metrics", "--query", "sum(", check=False)
    assert bad.returncode == 2 and "error" in bad.stderr


def test_browser_health_banner_of_a_live_run_with_a_straggler(finished_run: dict[str, Any],
                                                             browser: Browser) -> None:
    """One client's app makes no progress (its SuperExec paused with SIGSTOP before round 1; its agent and
    SuperNode keep their heartbeats, so it stays connected for FedOps and Flower) while the other replies:
    past the straggler threshold the banner is yellow, naming the client and how long the other took.
    Resumed, the straggler replies and the run completes."""
    from selenium.webdriver.common.by import By

    from fedops_dash.health import STRAGGLER_FACTOR, STRAGGLER_MIN_S

    stack: LocalStack = finished_run["stack"]
    task_id, (other, straggler) = finished_run["task_id"], finished_run["clients"]  # agents dash0, dash1
    wait_until(lambda: all(not c.get("current_run_id") for c in stack.ctl_json("clients", "list")["clients"]), 120,
               "the clients to be free")
    # A long round timeout: the banner turns yellow past the straggler threshold, not past half the timeout.
    stack.ctl("task", "update", task_id, "--rounds", "1", "--round-timeout", "1800")
    stack.ctl("task", "select", task_id, other, straggler)
    run_id = stack.ctl_json("run", "start", task_id)["id"]
    try:
        # As soon as its SuperExec exists: with the agents' spare templates round 1 starts about 0.5 s
        # after StartRun, and a task already forked and done would leave no straggler.
        wait_until(lambda: stack.pause_apps("dash1"), 120, "the straggler's SuperExec, to pause it", interval_s=0.01)
        replies = wait_until(lambda: [c for r in stack.ctl_json("run", "show", run_id).get("rounds", [])
                                      for c in r.get("client_results", []) if c.get("phase") == "train"], 600,
                             "the other client's reply in round 1")
        assert [c["client_id"] for c in replies] == [other]
        threshold = max(STRAGGLER_MIN_S, STRAGGLER_FACTOR * replies[0]["duration_s"])  # the median of one reply
        browser.open(f"run?run={run_id}")
        browser.sign_in(stack.admin_token)
        body = browser.until("Round 1 train: waiting", f"for {straggler}; the others replied in", "(median)",
                             timeout_s=threshold + 120)
        warnings = browser.driver.find_elements(By.CSS_SELECTOR, "[data-testid='stAlertContentWarning']")
        assert any("Round 1 train: waiting" in w.text and straggler in w.text for w in warnings), body[:3000]
        assert "1 of 2 needed are in" in body and "left before the round timeout" in body
        assert f"{straggler} has not replied since" in body
        diagnosis = stack.ctl_json("run", "diagnose", run_id)
        assert [m["client_id"] for m in diagnosis["missing"]] == [straggler]
        assert diagnosis["missing"][0]["connected"]  # its agent is fine: a straggler, not a lost client
        browser.shot("run-straggling")
    finally:
        stack.pause_apps("dash1", paused=False)
    finished = wait_finished(stack, run_id, timeout_s=900)
    assert finished["outcome"] == "RUN_OUTCOME_COMPLETED", finished.get("reason")
    assert sorted(finished["rounds"][0]["responded_client_ids"]) == sorted([other, straggler])
    browser.until("Completed 1 of 1 round.")


def test_browser_health_banner_of_a_live_run_that_loses_its_quorum(finished_run: dict[str, Any],
                                                                   browser: Browser) -> None:
    """Last in this module (it kills a client): a live run reads green while it runs, red once a client
    dies and the quorum can no longer be met (who, since when, when it fails), then red "failed"."""
    stack: LocalStack = finished_run["stack"]
    task_id, clients = finished_run["task_id"], finished_run["clients"]
    wait_until(lambda: all(not c.get("current_run_id") for c in stack.ctl_json("clients", "list")["clients"]), 120,
               "the clients to be free")
    # 50 rounds: with warm apps a round takes about 2 s, and the agent must die during one of them.
    stack.ctl("task", "update", task_id, "--rounds", "50", "--round-timeout", "30")
    stack.ctl("task", "select", task_id, *clients)
    run_id = stack.ctl_json("run", "start", task_id)["id"]
    browser.open(f"run?run={run_id}")
    browser.sign_in(stack.admin_token)
    browser.until("Running: ", "Stop after this round", "Stop now")
    from selenium.webdriver.common.by import By

    status = browser.driver.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']")
    assert not any(widget.is_displayed() for widget in status)  # no Streamlit "Stop" beside a running FL run
    browser.shot("run-running")
    wait_until(lambda: any(r.get("phase") in ("train", "evaluate")
                           for r in stack.ctl_json("run", "show", run_id).get("rounds", [])), 120, "a round under way")
    stack.kill_agent("dash1")
    body = browser.until("can no longer reach its quorum", f"{clients[1]} is offline since")
    assert "The run fails when the round times out, in " in body
    browser.shot("run-quorum-lost")
    body = browser.until("Failed after")
    assert "quorum" in body
    browser.shot("run-failed-quorum")
