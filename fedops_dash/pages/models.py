"""Models: versions with lineage, compare metrics, download."""

import streamlit as st

from fedops_dash.ui import attempt, control, metric_cells, metrics_table, page, pick

page("Models")
ctl = control()
tasks = attempt("Listing tasks", ctl.tasks, [])
task_id = pick("Task", [t["id"] for t in tasks], "task", key="models-task")
if task_id is None:
    st.info("No tasks yet.")
    st.stop()
chosen: str = task_id  # narrowed: the lambdas below see a str
models = attempt("Listing models", lambda: ctl.models(task_id=chosen), [])
if not models:
    notes = {r["model_note"] for r in attempt("Listing runs", lambda: ctl.runs(chosen), []) if r.get("model_note")}
    st.info("No model version stored for this task yet: one is stored after every round that has a model."
            + "".join(f" {note}." for note in sorted(notes)))
    st.stop()
metrics_table([{"version": m["version"], "id": m["id"], "run": m["run_id"], "round": m["round"],
                "tags": ", ".join(m.get("tags", [])), "parent": m.get("parent_id", ""),
                "participants": ", ".join(m.get("participant_client_ids", [])),
                "config hash": m.get("config_hash", "")[:12], "sha256": m.get("sha256", "")[:12],
                **metric_cells(m.get("metrics"), m.get("metric_lists"))} for m in models])

st.subheader("Compare")
by_label = {f"v{m['version']} ({m['id']})": m for m in models}
compared = st.multiselect("Versions", list(by_label), default=list(by_label)[-2:])
if compared:
    names = sorted({k for label in compared for k in by_label[label].get("metrics", {})})
    st.bar_chart([{"version": label.split(" ")[0], **{n: by_label[label]["metrics"].get(n, 0.0) for n in names}}
                  for label in compared], x="version", stack=False)

st.subheader("Download")
chosen = st.selectbox("Version to download", list(by_label), index=len(by_label) - 1)
model = by_label[chosen]
if st.button("Prepare download"):
    data = attempt("Downloading", lambda: ctl.download_model(model["id"]), b"")
    if data:
        st.download_button(f"Save {model['id']}.npz ({len(data)} bytes)", data, file_name=f"{model['id']}.npz",
                           mime="application/octet-stream")
