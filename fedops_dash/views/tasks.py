"""Tasks: create and edit with validation, select clients, start runs (on the task's clients or on
clients chosen by label and count)."""

import tomllib

import streamlit as st

from fedops_common.labels import LabelError, format_selector, parse_selector
from fedops_common.strategy_settings import DEFAULT_RUN_CONFIG_KEYS
from fedops_common.words import client_state, clock, run_status
from fedops_dash.backends import BackendError
from fedops_dash.ui import acted, attempt, control, link, metrics_table, newest_first, page, pick_or_stop, url

page("Tasks")
ctl = control()


def parse_hyperparameters(text: str) -> dict:
    """TOML lines ``key = value``; raises ValueError with the reason."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"hyperparameters: {err}") from None


BEST_METRIC_HELP = ("central.NAME, train.NAME or evaluate.NAME (aggregated by the strategy); client.train.NAME or "
                    "client.evaluate.NAME (mean over the round's clients)")


def best_metric_inputs(metric: str, lower: bool) -> tuple[str, bool]:
    """The metric that picks the 'best' model, and its direction."""
    b1, b2 = st.columns([3, 1])
    return (b1.text_input("Best metric (empty = the service's default)", metric, help=BEST_METRIC_HELP).strip(),
            b2.checkbox("Lower is better", lower,
                        help="unticked: the service decides (lower for names ending in 'loss')"))


def run_config_key_inputs(keys: dict[str, str]) -> dict[str, str]:
    """One input per strategy setting: the app's run-config key receiving it; empty = the app hard-codes it."""
    st.caption("Run-config keys: the app's key receiving each setting; empty = hard-coded by the app (not passed)")
    columns = st.columns(len(DEFAULT_RUN_CONFIG_KEYS))
    return {setting: column.text_input(setting, keys.get(setting, "")).strip()
            for column, setting in zip(columns, DEFAULT_RUN_CONFIG_KEYS, strict=True)}


def strategy_changes(values: dict, keys: dict[str, str], metric: str, lower: bool) -> dict:
    """Strategy fields to send: settings the app hard-codes (empty key) are not sent."""
    out = {field: value for field, value in values.items() if field not in keys or keys[field]}
    out["run_config_keys"] = keys
    if metric:
        out["best_metric"] = metric
    out["best_metric_lower_is_better"] = lower
    return out


with st.expander("Create a task", expanded=False):
    with st.form("create-task"):
        title = st.text_input("Title")
        description = st.text_area("Description", height=68)
        tags = st.text_input("Tags (comma separated)")
        source = st.radio("Flower app", ["local directory", "git"], horizontal=True)
        app_path = st.text_input("App directory (on the control host)")
        git_url, git_ref, git_subdir = st.text_input("Git URL"), st.text_input("Git ref", "main"), st.text_input(
            "Subdirectory")
        c1, c2, c3, c4 = st.columns(4)
        rounds = c1.number_input("Rounds", 1, 100_000, 3)
        min_clients = c2.number_input("Quorum (min clients)", 1, 10_000, 2)
        fraction = c3.number_input("Fraction train", 0.0, 1.0, 1.0)
        timeout = c4.number_input("Round timeout (s)", 1.0, 86_400.0, 300.0)
        hp_text = st.text_area("Hyperparameters (TOML: key = value; ${...} templating allowed)",
                               'local-epochs = 1\nlearning-rate = 0.1', height=90)
        best_metric, lower_is_better = best_metric_inputs("", False)
        run_config_keys = run_config_key_inputs(DEFAULT_RUN_CONFIG_KEYS)
        if st.form_submit_button("Create task"):
            try:
                app = {"local_path": app_path} if source == "local directory" else {
                    "git": {"url": git_url, "ref": git_ref, "subdirectory": git_subdir}}
                values = {"rounds": int(rounds), "min_clients": int(min_clients), "fraction_train": fraction,
                          "fraction_evaluate": fraction, "round_timeout_s": timeout}
                created = ctl.create_task(
                    title, app, {"name": "FedAvg", **strategy_changes(values, run_config_keys, best_metric,
                                                                      lower_is_better)},
                    parse_hyperparameters(hp_text), description,
                    [t.strip() for t in tags.split(",") if t.strip()])
                acted("task created", task_id=created["id"])
                st.success(f"Created {created['id']}")
            except (BackendError, ValueError) as err:
                st.error(f"Not created: {err}")

tasks = newest_first(attempt("Listing tasks", ctl.tasks, []))
task = pick_or_stop("Task", tasks, "task", "No tasks yet: create one above, or with `fedopsctl task create`.",
                    ctl.task, labels={t["id"]: f"{t['title']} · {t['id']} · created {clock(t.get('created_at', ''))}"
                                      for t in tasks})
task_id = task["id"]
strategy = task.get("strategy", {})
st.subheader(task["title"])
st.write(task.get("description", ""))
st.json({"app": task.get("app"), "strategy": strategy, "hyperparameters": task.get("hyperparameters", {})},
        expanded=False)

with st.form("edit-task"):
    st.markdown("**Edit**")
    new_title = st.text_input("Title", task["title"])
    e1, e2, e3 = st.columns(3)
    new_rounds = e1.number_input("Rounds", 1, 100_000, int(strategy.get("rounds", 1)))
    new_quorum = e2.number_input("Quorum", 1, 10_000, int(strategy.get("min_clients", 1)))
    new_timeout = e3.number_input("Round timeout (s)", 1.0, 86_400.0, float(strategy.get("round_timeout_s", 300)))
    new_metric, new_lower = best_metric_inputs(strategy.get("best_metric", ""),
                                               bool(strategy.get("best_metric_lower_is_better", False)))
    new_keys = run_config_key_inputs(strategy.get("run_config_keys", {}))
    if st.form_submit_button("Save"):
        try:
            values = {"rounds": int(new_rounds), "min_clients": int(new_quorum), "round_timeout_s": new_timeout}
            ctl.update_task(task_id, {"title": new_title,
                                      "strategy": strategy_changes(values, new_keys, new_metric, new_lower)})
            acted("task edited", task_id=task_id)
            st.success("Saved")
        except BackendError as err:
            st.error(f"Not saved: {err}")

clients = attempt("Listing clients", ctl.clients, [])
labels = {c["id"]: f"{c['id']} ({c.get('name') or c['device'].get('device_id', '')}, "
                   f"{client_state(c.get('state', ''))})" for c in clients}
selected = [c for c in task.get("selected_client_ids", []) if c in labels]
chosen = st.multiselect("Clients taking part", list(labels), default=selected, format_func=lambda c: labels.get(c, c))
# Which clients a run takes: the task's default (its label selection, else the clients above), or a
# label selection for this run only: that many clients with the labels, online and in no other run,
# least recently selected first (the service chooses, see fedops_control/clients/selection.py).
default = task.get("label_selection")
if default is not None:
    how_many = f"{default['count']} clients" if default.get("count") else "every free client"
    labelled = format_selector(default.get("match_labels", {}))
    default_words = f"the task's default: {how_many}" + (f" labelled {labelled}" if labelled else "")
else:
    default_words = "the clients taking part"
how = st.radio("A run takes", [default_words, "clients chosen by label"], horizontal=True, key="start-how")
match_labels: dict[str, str] | None = None
count, unreadable = 0, False
if how == "clients chosen by label":
    l1, l2 = st.columns([3, 1])
    label_text = l1.text_input("Labels", placeholder="site=eu,gpu=true", key="start-labels",
                               help="every one must match (key=value, comma separated); empty = any client")
    count = int(l2.number_input("How many", 0, 100_000, 2, key="start-count",
                                help="0 = every matching client that is online and in no other run"))
    try:
        match_labels = parse_selector(label_text, check=False)  # the service checks the syntax
    except LabelError as err:
        st.error(f"Labels: {err.message}")
        unreadable = True  # not the task's default instead: nothing starts until the labels read
b1, b2, _ = st.columns([1, 1, 2])
if b1.button("Save selection"):
    if attempt("Selecting clients", lambda: ctl.select_clients(task_id, chosen), None):
        acted("clients selected", task_id=task_id, clients=",".join(chosen))
        st.success("Selection saved")
if b2.button("Start FL", type="primary", disabled=unreadable):
    run = attempt("Starting the run", lambda: ctl.start_run(task_id, match_labels=match_labels, count=count), None)
    if run:
        acted("run started", task_id=task_id, run_id=run["id"])
        st.success(f"Run {run['id']} started on {', '.join(run.get('client_ids', []))}: "
                   f"{link('run', run['id'], 'open it')} to watch or stop it")
# Runs are stopped on their Run page (with a confirmation): one place for it.
runs = newest_first(attempt("Listing runs", lambda: ctl.runs(task_id), []))
st.subheader("Runs of this task (newest first)")
metrics_table([{"run": url("run", r["id"]), "status": run_status(r.get("state", ""), r.get("outcome", "")),
                "round": f"{r.get('current_round', 0)} of {r.get('total_rounds', 0) or '?'}",
                "started": clock(r.get("started_at") or r.get("created_at", "")), "reason": r.get("reason", "")}
               for r in runs], links={"run": "run"})
