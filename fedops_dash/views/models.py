"""Models: metrics first, the best version at a glance, a model card, lineage, download, resume from a version."""

from typing import Any

import streamlit as st

from fedops_common.words import clock
from fedops_dash.ui import (
    acted,
    attempt,
    control,
    link,
    metric_cells,
    metrics_table,
    newest_first,
    page,
    pick,
    url,
)

ONE_CLICK_BYTES = 32 * 2**20
page("Models")
ctl = control()
tasks = newest_first(attempt("Listing tasks", ctl.tasks, []))
if not st.query_params.get("task"):  # opened without a task: the one of the newest model version
    newest = newest_first(attempt("Listing models", ctl.models, []))
    if newest:
        st.query_params["task"] = newest[0]["task_id"]
task_id = pick("Task", [t["id"] for t in tasks], "task", key="models-task",
               labels={t["id"]: f"{t['title']} · {t['id']}" for t in tasks})
if task_id is None:
    st.info("No tasks yet.")
    st.stop()
chosen_task: str = task_id  # narrowed: the lambdas below see a str
run_filter = st.query_params.get("run", "")
models = sorted(attempt("Listing models", lambda: ctl.models(task_id=chosen_task, run_id=run_filter), []),
                key=lambda m: m.get("version", 0), reverse=True)
if run_filter:
    st.caption(f"Versions of run {link('run', run_filter)} only · [all of the task's](models?task={task_id})")
if not models:
    notes = {r["model_note"] for r in attempt("Listing runs", lambda: ctl.runs(chosen_task), []) if r.get("model_note")}
    st.info("No model version stored for this task yet: one is stored after every round that has a model."
            + "".join(f" {note}." for note in sorted(notes)))
    st.stop()

best = next((m for m in models if "best" in m.get("tags", [])), None)
if best:
    scores = ", ".join(f"{k} {v:.4g}" for k, v in sorted(best.get("metrics", {}).items()) if k.startswith("central."))
    st.success(f"Best: **v{best['version']}** (`{best['id']}`), run {link('run', best['run_id'])} round "
               f"{best['round']}" + (f": {scores}" if scores else ""))


def ordered(cells: dict[str, Any]) -> dict[str, Any]:
    """Metrics in the order an operator compares them: central, then aggregated, then client means."""
    rank = {"central": 0, "evaluate": 1, "train": 2}
    return dict(sorted(cells.items(), key=lambda kv: (rank.get(kv[0].split(".")[0], 3), kv[0])))


metrics_table([{"version": f"v{m['version']}", "tags": ", ".join(m.get("tags", [])),
                **ordered(metric_cells(m.get("metrics"), m.get("metric_lists"))), "round": m["round"],
                "run": url("run", m["run_id"]), "created": clock(m.get("created_at", "")),
                "id": url("model", m["id"], task=task_id), "parent": m.get("parent_id", "")} for m in models],
              links={"run": "run", "id": "model"})

by_id = {m["id"]: m for m in models}
labels = {m["id"]: f"v{m['version']} · round {m['round']} · {', '.join(m.get('tags', [])) or 'stored'} · {m['id']}"
          for m in models}
model_id = pick("Version", list(by_id), "model", key="models-version", labels=labels) or models[0]["id"]
model: dict[str, Any] = by_id.get(model_id) or attempt(f"Reading model {model_id}", lambda: ctl.model(model_id),
                                                      models[0])

st.subheader(f"Model card: v{model['version']}")
run = attempt("Reading its run", lambda: ctl.run(model["run_id"]), {})
c1, c2 = st.columns(2)
c1.markdown("\n".join([
    f"- **run** {link('run', model['run_id'])}, round {model['round']}",
    f"- **created** {clock(model.get('created_at', ''))}",
    "- **participants** " + (", ".join(link("client", c) for c in model.get("participant_client_ids", [])) or "-"),
    f"- **parent** {link('model', model.get('parent_id', ''), task=task_id) or '(none: the first version)'}",
    f"- **config hash** `{model.get('config_hash', '')}`",
    f"- **sha256** `{model.get('sha256', '')}` ({model.get('size_bytes', 0)} bytes, {model.get('format', 'npz')})",
]))
c2.markdown("**Metrics**")
c2.dataframe([{"metric": k, "value": v} for k, v in sorted(metric_cells(model.get("metrics"),
                                                                         model.get("metric_lists")).items())],
             hide_index=True)
st.markdown("**Hyperparameters (the run's rendered run config)**")
st.json(run.get("run_config", {}), expanded=False)
seen = attempt("Reading data status", lambda: ctl.data_status(run_id=model["run_id"]), [])
seen = [r for r in seen if int(r.get("round", 0)) == int(model["round"])]
st.markdown("**Data status seen in that round**")
metrics_table([{"client": url("client", r["client_id"]), "samples": int(r.get("summary", {}).get("sample_count", 0)),
                "features": int(r.get("summary", {}).get("feature_count", 0)),
                "schema": r.get("summary", {}).get("schema_hash", ""), "reported": clock(r.get("reported_at", ""))}
               for r in seen], links={"client": "client"})

st.subheader("Lineage")
edges = [f'"{m["parent_id"]}" -> "{m["id"]}"' for m in models if m.get("parent_id")]
nodes = [f'"{m["id"]}" [label="v{m["version"]}\\nround {m["round"]}", '
         f'style=filled, fillcolor="{"gold" if "best" in m.get("tags", []) else "white"}"]' for m in models]
st.graphviz_chart("digraph { rankdir=LR; node [shape=box]; " + "; ".join(nodes + edges) + " }")

st.subheader("Download and resume")
# One click: the bytes are fetched with the page, unless the model is large (then a click fetches them).
d1, d2 = st.columns(2)
data = b""
if int(model.get("size_bytes", 0)) <= ONE_CLICK_BYTES or d1.button("Prepare download", key="prepare"):
    data = attempt("Downloading", lambda: ctl.download_model(model["id"]), b"")
if data:
    d1.download_button(f"Download v{model['version']} ({len(data)} bytes)", data, file_name=f"{model['id']}.npz",
                       mime="application/octet-stream")
if d2.button(f"Start a run of this task from v{model['version']}", key="resume"):
    started = attempt("Starting the run", lambda: ctl.start_run(chosen_task, resume_from=model["id"]), None)
    if started:
        acted("run started", task_id=task_id, run_id=started["id"], resumed_from=model["id"])
        st.success(f"Run {started['id']} started from v{model['version']}: {link('run', started['id'], 'open it')}")
