"""Selecting clients by label at a real control service with real agents: labels set at enrolment
(the token's), by the agent's config (``--label``, the config file) and by an operator (``fedopsctl
clients label``); a reconnect (the control service restarted) does not undo the operator's label;
``clients list --select`` and the dashboard's Clients page filter by label and show group sizes by
state; a run started with ``--select ... --count`` runs on exactly the matching clients; too few
matching clients is refused saying how many match. Clients show the name given at enrolment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from fedops_common.labels import format_selector
from fedops_common.proc import stop_process_group
from fedops_control.devstack import LocalStack
from tests.test_e2e import create_task, wait_finished, wait_for

pytestmark = pytest.mark.e2e
PAGES = Path(__file__).resolve().parents[1] / "fedops_dash" / "views"
SELECTOR = "site=eu,gpu=true"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, digits_data: list[Path]) -> Iterator[dict[str, Any]]:
    """Control + 3 agents with labels from their three sources, enrolled in a 1-round task."""
    root = tmp_path_factory.mktemp("labels")
    stack = LocalStack(root / "stack")
    saved = dict(os.environ)
    try:
        stack.start_control()
        task_id = create_task(stack, rounds=1)
        config = root / "lab2.toml"
        config.write_text('labels = { site = "us", gpu = true }\n', encoding="utf-8")
        stack.start_agent("lab0", [task_id], digits_data[0], ["--label", "site=eu", "--label", "gpu=true"])
        stack.start_agent("lab1", [task_id], digits_data[1], ["--label", "gpu=false"],
                          enrolment_labels={"site": "eu"})
        stack.start_agent("lab2", [task_id], digits_data[2], ["--config", str(config)])
        ids = {name: stack.client_id(name) for name in ("lab0", "lab1", "lab2")}
        wait_for(lambda: sorted(c["state"] for c in stack.ctl_json("clients", "list", "--task", task_id)["clients"])
                 == ["CLIENT_STATE_ONLINE"] * 3, 60)
        os.environ.update({"FEDOPS_CONTROL": stack.control_address, "FEDOPS_TOKEN": stack.admin_token})
        for name in ("FEDOPS_ELASTICSEARCH_URL", "FEDOPS_PROMETHEUS_URL"):
            os.environ.pop(name, None)
        yield {"stack": stack, "task_id": task_id, "ids": ids}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stack.stop()


def listed(stack: LocalStack, *args: str) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in stack.ctl_json("clients", "list", *args).get("clients", [])}


def test_labels_from_enrolment_agent_config_and_operator(fleet: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    stack: LocalStack = fleet["stack"]
    ids = fleet["ids"]
    clients = listed(stack)
    assert {name: clients[cid].get("labels") for name, cid in ids.items()} == {
        "lab0": {"site": "eu", "gpu": "true"},             # the agent's --label flags
        "lab1": {"site": "eu", "gpu": "false"},            # the enrolment token's, and a flag
        "lab2": {"site": "us", "gpu": "true"}}             # the agent's config file
    assert {name: clients[cid]["name"] for name, cid in ids.items()} == {n: n for n in ids}  # the enrolment name
    assert len({c["device"]["hostname"] for c in clients.values()}) == 1  # one host: the name tells them apart

    relabelled = stack.ctl_json("clients", "label", ids["lab2"], "site=eu")
    assert relabelled["labels"] == {"site": "eu", "gpu": "true"}
    bad = stack.ctl("clients", "label", ids["lab2"], "Bad Key=x", check=False)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: INVALID_ARGUMENT: labels: invalid key 'Bad Key'")
    bad = stack.ctl("clients", "list", "--select", "site=e u", check=False)
    assert bad.returncode == 2 and "INVALID_ARGUMENT: labels.site: invalid value 'e u'" in bad.stderr, bad.stderr

    # The operator's label survives the agents' reconnect (their config did not change).
    port = int(stack.control_address.rsplit(":", 1)[1])
    assert stack.control is not None
    stop_process_group(stack.control, grace_s=15)
    stack.start_control(port)
    wait_for(lambda: sorted(c["state"] for c in listed(stack, "--task", fleet["task_id"]).values())
             == ["CLIENT_STATE_ONLINE"] * 3, 90)
    assert set(listed(stack, "--select", SELECTOR)) == {ids["lab0"], ids["lab2"]}
    assert set(listed(stack, "--select", "site=eu", "--state", "online")) == set(ids.values())
    assert listed(stack, "--select", "site=us") == {}
    groups = stack.ctl_json("clients", "groups", "--by", "gpu")
    assert [(g["value"], g["total"], g["states"]) for g in groups["groups"]] == [
        ("true", 2, [{"state": "CLIENT_STATE_ONLINE", "count": 2}]),
        ("false", 1, [{"state": "CLIENT_STATE_ONLINE", "count": 1}])]

    monkeypatch.setenv("COLUMNS", "80")  # ids whole, every label shown, nothing past 80 columns
    out = stack.ctl("clients", "list", "--select", "site=eu").stdout
    assert all(len(line) <= 80 for line in out.splitlines()) and "…" not in out, out
    for text in (*ids.values(), "site=eu", "gpu=true", "gpu=false", "lab0", "lab1", "lab2"):
        assert text in out, (text, out)
    table = stack.ctl("clients", "groups", "--by", "site").stdout
    assert "eu" in table and "online" in table, table


def test_dashboard_clients_page_filters_by_label_and_shows_group_sizes(fleet: dict[str, Any]) -> None:
    ids = fleet["ids"]
    app = AppTest.from_file(str(PAGES / "clients.py"), default_timeout=60).run()
    assert not app.exception and not app.error, (app.exception, [e.value for e in app.error])
    every = app.dataframe[0].value
    assert set(every["client"]) == {f"clients?client={cid}" for cid in ids.values()}
    assert set(every["name"]) == set(ids)
    sizes = app.dataframe[1].value  # grouped by the first label key, gpu
    assert [(row["gpu"], row["online"], row["offline"], row["total"]) for _, row in sizes.iterrows()] == [
        ("true", 2, 0, 2), ("false", 1, 0, 1)]

    [box for box in app.text_input if box.label == "Labels"][0].input(SELECTOR).run()
    assert not app.exception and not app.error, (app.exception, [e.value for e in app.error])
    matching = app.dataframe[0].value
    assert set(matching["client"]) == {f"clients?client={ids['lab0']}", f"clients?client={ids['lab2']}"}
    assert set(matching["labels"]) == {"gpu=true, site=eu"}
    assert any("2 of 2 clients labelled gpu=true,site=eu" in c.value for c in app.caption)
    [box for box in app.selectbox if box.label == "Group sizes by label"][0].set_value("site").run()
    sizes = app.dataframe[1].value
    assert [(row["site"], row["online"], row["total"]) for _, row in sizes.iterrows()] == [("eu", 2, 2)]

    [box for box in app.text_input if box.label == "Labels"][0].input("site=e u").run()
    assert app.error and "INVALID_ARGUMENT: labels.site: invalid value 'e u'" in app.error[0].value


def test_dashboard_edits_a_clients_labels(fleet: dict[str, Any]) -> None:
    """An operator edits one client's labels on its page: a key added, one left out removed, a bad
    value refused with the key named; what the service then holds is what was typed."""
    stack: LocalStack = fleet["stack"]
    client_id = fleet["ids"]["lab1"]
    before = listed(stack)[client_id]["labels"]
    app = AppTest.from_file(str(PAGES / "clients.py"), default_timeout=60)
    app.query_params["client"] = client_id
    app.run()
    box = [b for b in app.text_input if b.label == "This client's labels"][0]
    assert box.value == format_selector(before)
    box.input("site=e u")  # a form: typed values go in with its submit button, in one run
    [b for b in app.button if b.label == "Save labels"][0].click().run()
    assert app.error and "Labels: invalid value 'e u'" in app.error[0].value
    assert listed(stack)[client_id]["labels"] == before
    try:
        box = [b for b in app.text_input if b.label == "This client's labels"][0]
        box.input(format_selector({**before, "rack": "r7"}) + ",")
        [b for b in app.button if b.label == "Save labels"][0].click().run()
        assert not app.exception and not app.error, (app.exception, [e.value for e in app.error])
        assert listed(stack)[client_id]["labels"] == {**before, "rack": "r7"}
        assert any("Labels saved: " in s.value and "rack=r7" in s.value for s in app.success)
        box = [b for b in app.text_input if b.label == "This client's labels"][0]
        box.input(format_selector({k: v for k, v in before.items() if k != "gpu"}))
        [b for b in app.button if b.label == "Save labels"][0].click().run()
        assert listed(stack)[client_id]["labels"] == {k: v for k, v in before.items() if k != "gpu"}
    finally:
        stack.ctl("clients", "label", client_id, *(f"{k}={v}" for k, v in before.items()), "--remove", "rack")
    assert listed(stack)[client_id]["labels"] == before


def test_dashboard_start_form_refuses_a_selection_too_large(fleet: dict[str, Any]) -> None:
    app = AppTest.from_file(str(PAGES / "tasks.py"), default_timeout=60)
    app.query_params["task"] = fleet["task_id"]
    app.run()
    app.radio(key="start-how").set_value("clients chosen by label").run()
    app.text_input(key="start-labels").input(SELECTOR)
    app.number_input(key="start-count").set_value(3)
    [b for b in app.button if b.label == "Start FL"][0].click().run()
    assert app.error, [s.value for s in app.success]
    assert app.error[0].value == (
        f"Starting the run failed: FAILED_PRECONDITION: label selection of task {fleet['task_id']} wants 3 clients "
        "labelled gpu=true,site=eu: 2 enrolled clients match, 2 of them online and in no other run")


def test_a_tasks_default_selection_by_label(fleet: dict[str, Any]) -> None:
    stack: LocalStack = fleet["stack"]
    task_id = fleet["task_id"]
    task = stack.ctl_json("task", "update", task_id, "--select", "site=eu", "--count", "5")
    assert task["label_selection"] == {"match_labels": {"site": "eu"}, "count": 5}
    shown = stack.ctl("task", "show", task_id).stdout
    assert "runs take" in shown and "5 clients labelled site=eu" in shown, shown
    refused = stack.ctl("run", "start", task_id, check=False)  # no clients given: the task's default
    assert refused.returncode == 2 and "wants 5 clients labelled site=eu: 3 enrolled clients match" in refused.stderr
    bad = stack.ctl("task", "update", task_id, "--select", "site=eu", "--count", "-1", check=False)
    assert bad.returncode == 2, bad.stderr
    assert "label_selection" not in stack.ctl_json("task", "update", task_id, "--no-select")
    unknown = stack.ctl("run", "start", task_id, "--client", "client-unknown", check=False)
    assert unknown.returncode == 2 and "INVALID_ARGUMENT: client_ids: unknown client 'client-unknown'" in unknown.stderr


def test_a_run_by_label_and_count_runs_on_exactly_the_matching_clients(fleet: dict[str, Any]) -> None:
    stack: LocalStack = fleet["stack"]
    ids, task_id = fleet["ids"], fleet["task_id"]
    refused = stack.ctl("run", "start", task_id, "--select", SELECTOR, "--count", "3", check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: FAILED_PRECONDITION: label selection of task {task_id} wants 3 clients labelled gpu=true,site=eu: "
        "2 enrolled clients match, 2 of them online and in no other run")
    both = stack.ctl("run", "start", task_id, "--select", SELECTOR, "--client", ids["lab1"], check=False)
    assert both.returncode == 2 and "--client" in both.stderr

    run = stack.ctl_json("run", "start", task_id, "--select", SELECTOR, "--count", "2")
    chosen = {ids["lab0"], ids["lab2"]}
    assert set(run["client_ids"]) == chosen
    assert run["selection"] == {"labels": {"match_labels": {"site": "eu", "gpu": "true"}, "count": 2}}
    final = wait_finished(stack, run["id"])
    assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
    assert [set(r["responded_client_ids"]) for r in final["rounds"]] == [chosen]
    assert {c["client_id"] for r in final["rounds"] for c in r["client_results"]} == chosen
    assert "clients chosen by label: gpu=true,site=eu, 2" in stack.ctl("run", "show", run["id"]).stdout
    clients = listed(stack)
    assert clients[ids["lab1"]]["state"] == "CLIENT_STATE_ONLINE"  # never commanded
    assert {cid for cid, c in clients.items() if c["state"] == "CLIENT_STATE_FINISHED"} == chosen
