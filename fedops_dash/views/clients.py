"""Clients: newest first, filtered by state and labels, with group sizes by state per label value; then
one client's name, labels, state in plain words, device, data status, and labelled resource charts (the
agent's own process CPU and memory beside the host's, network, disk) over a time range, with run/round
bands, coloured by the global model version trained, for one client or several side by side."""

import datetime as dt
import functools
import time
from typing import Any

import streamlit as st

from fedops_common.labels import LabelError, format_selector, parse_selector
from fedops_common.proto import common_pb2
from fedops_common.words import CLIENT_STATES, client_state, duration
from fedops_dash import charts
from fedops_dash.backends import resource_timeline
from fedops_dash.ui import (
    acted,
    attempt,
    control,
    elasticsearch_or_notice,
    logs_url,
    metrics_table,
    page,
    pick,
    url,
)

RANGES = {"last 5 minutes": 5, "last 15 minutes": 15, "last hour": 60, "last 6 hours": 360, "last day": 1440}
REFRESH_S = 5


def rate(sample: dict[str, Any], before: dict[str, Any] | None, field: str, seconds: float) -> float | None:
    """KiB/s of a counter between two samples (None for the first)."""
    if before is None or seconds <= 0:
        return None
    return max(0.0, (sample.get(field, 0) - before.get(field, 0)) / seconds / 1024)


page("Clients")
ctl = control()
# A fleet is listed a page of 100 at a time, newest first (the service pages by registration time and
# id: stable while devices join), filtered by state and labels.
f1, f2, f3 = st.columns([1, 2, 2])
state_name = f1.selectbox("State", ["any", *CLIENT_STATES], key="client-state")
state = 0 if state_name == "any" else common_pb2.ClientState.Value(f"CLIENT_STATE_{state_name.upper()}")
label_text = f2.text_input("Labels", key="client-labels", placeholder="site=eu,gpu=true",
                           help="only clients with every one of these labels (key=value, comma separated)")
try:
    selector = parse_selector(label_text, check=False)  # the service checks the syntax and names what is wrong
except LabelError as err:
    st.error(f"Labels: {err.message}")
    st.stop()
tokens = st.session_state.setdefault(f"client-pages-{state_name}-{format_selector(selector)}", [""])
listing: dict[str, Any] = attempt(
    "Listing clients", lambda: ctl.client_page(state=state, page_size=100, page_token=tokens[-1], labels=selector),
    {"clients": []})
f3.caption(f"{len(listing['clients'])} of {listing.get('total_size', len(listing['clients']))} clients"
           + (f" labelled {format_selector(selector)}" if selector else "")
           + (f", page {len(tokens)}" if len(tokens) > 1 or listing.get("next_page_token") else ""))
b1, b2 = f3.columns(2)
if b1.button("Previous page", disabled=len(tokens) == 1):
    tokens.pop()
    st.rerun()
if b2.button("Next page", disabled=not listing.get("next_page_token")):
    tokens.append(listing["next_page_token"])
    st.rerun()
clients = listing["clients"]  # newest first, as the service orders them


def name_of(client: dict[str, Any]) -> str:
    """The name given at enrolment, else the device id (the host name is the same for every device on a host)."""
    return str(client.get("name") or client["device"].get("device_id", ""))


def label_text_of(client: dict[str, Any]) -> str:
    return format_selector(client.get("labels", {})).replace(",", ", ")


metrics_table([{"client": url("client", c["id"]), "name": name_of(c), "state": client_state(c.get("state", "")),
                "labels": label_text_of(c), "why": c.get("state_reason", ""),
                "last heartbeat": duration(c.get("heartbeat_age_s", -1)) + " ago",
                "run": url("run", c["current_run_id"]) if c.get("current_run_id") else "",
                "host": c["device"].get("hostname", ""), "tasks": ", ".join(c.get("enrolled_task_ids", []))}
               for c in clients], links={"client": "client", "run": "run"})

# Group sizes: how many clients of each label value are online, training... (the whole fleet, not this page).
keys = sorted({key for c in clients for key in c.get("labels", {})})
if keys:
    others = [key for key in keys if key not in selector]
    g1, g2 = st.columns([1, 3])
    group_by = g1.selectbox("Group sizes by label", keys, index=keys.index(others[0]) if others else 0,
                            key="client-group-by")
    counted: dict[str, Any] = attempt("Counting clients", lambda: ctl.client_groups(group_by, selector),
                                      {"groups": []})
    group_rows = []
    for group in counted["groups"]:
        by_state = {client_state(c.get("state", "")): int(c.get("count", 0)) for c in group.get("states", [])}
        group_rows.append({group_by: "(no label)" if group.get("unlabelled") else group.get("value", ""),
                     **{name: by_state.get(name, 0) for name in CLIENT_STATES}, "total": int(group.get("total", 0))})
    with g2:
        st.caption(f"Clients by {group_by}" + (f" among those labelled {format_selector(selector)}" if selector else "")
                   + (f"; {counted['groups_left_out']} smaller groups left out" if counted.get("groups_left_out")
                      else ""))
        metrics_table(group_rows)

names = {c["id"]: f"{c['id']} · {name_of(c)} · {client_state(c.get('state', ''))}" for c in clients}
client_id = pick("Client", list(names), "client", labels=names)
if client_id is None:
    st.info("No client has registered yet: start `fedops-agent`." if state_name == "any" and not selector else
            "No client matches these filters now.")
    st.stop()
wanted: str = client_id
client = next((c for c in clients if c["id"] == wanted), None)
if client is None:  # a deep link to a client on another page
    client = attempt(f"Reading client {wanted}", lambda: ctl.client(wanted), None)
if client is None:
    st.error(f"client {client_id} is not registered")
    st.stop()
device = client["device"]
gpu = f", GPU {device['gpu']}" if device.get("gpu") else ""
st.markdown(f"**{client_id}** · **{name_of(client)}** on **{device.get('hostname', '?')}** "
            f"(device `{device.get('device_id', '')}`, "
            f"{device.get('os', '')}, {device.get('cpu_count', '?')} CPUs, "
            f"{int(device.get('ram_bytes', 0)) / 2**30:.1f} GiB RAM{gpu}, agent {device.get('agent_version', '?')}) · "
            f"**{client_state(client.get('state', ''))}**"
            + (f": {client['state_reason']}" if client.get("state_reason") else "")
            + f" · [its logs]({logs_url(client_id=client_id)})"
            + (f" · labels `{format_selector(client['labels'])}`" if client.get("labels") else ""))

with st.expander("Edit labels"):
    # The whole set as text: keys left out are removed. An operator's labels stay until changed again
    # (an agent that reconnects does not undo them; a changed agent config does).
    with st.form(f"labels-{client_id}"):
        edited = st.text_input("This client's labels", value=format_selector(client.get("labels", {})),
                               key=f"edit-{client_id}",
                               help="key=value, comma separated; every label of this client (one left out is removed)")
        if st.form_submit_button("Save labels"):
            try:
                wanted_labels = parse_selector(edited)
            except LabelError as err:
                st.error(f"Labels: {err.message}")
            else:
                removed = sorted(set(client.get("labels", {})) - set(wanted_labels))
                changed = attempt("Setting labels", lambda: ctl.set_client_labels(wanted, wanted_labels, removed), None)
                if changed is not None:  # shown after a rerun, which reads the client's labels anew
                    acted("client labels set", client_id=wanted, labels=format_selector(wanted_labels))
                    st.session_state["labels-saved"] = format_selector(changed.get("labels", {})) or "(none)"
                    st.rerun()
    if "labels-saved" in st.session_state:
        st.success(f"Labels saved: {st.session_state.pop('labels-saved')}")

st.subheader("Data status (aggregates only)")
status = client.get("data_status", {})
summary = status.get("summary", {})
if summary:
    d1, d2, d3, d4 = st.columns(4)
    d1.metric("Samples", int(summary.get("sample_count", 0)))
    d2.metric("Features", int(summary.get("feature_count", 0)))
    d3.metric("Missing", f"{summary.get('missing_ratio', 0):.1%}")
    d4.metric("Freshness", duration(summary.get("freshness_s", -1)))
    histogram = summary.get("label_histogram", {})
    if histogram:
        charts.grouped_bars([{"label": k, "count": v, "client": client_id} for k, v in histogram.items()],
                            "label", "count", "client", "Samples per label", "samples")
    st.caption(f"schema {summary.get('schema_hash', '')}; reported for "
               + (f"run {status['run_id']} round {status.get('round', 0)}" if status.get("run_id") else "enrolment"))
else:
    st.caption("no data status reported yet")

st.subheader("Resources")
es_url = elasticsearch_or_notice("the resource timeline")
if not es_url:
    st.stop()
r1, r2, r3 = st.columns([2, 3, 1])
span = r1.selectbox("Time range", list(RANGES), index=1)
compared = r2.multiselect("Compare with", [c for c in names if c != client_id], format_func=lambda c: names[c])
live = r3.toggle("Auto-refresh", help=f"every {REFRESH_S} s")
since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=RANGES[span])).isoformat()
samples: list[dict[str, Any]] = []


def read_samples(cid: str) -> list[dict[str, Any]]:
    return resource_timeline(es_url, cid, 10_000, since)


for cid in [client_id, *compared]:
    samples += [{**s, "client": cid} for s in attempt(f"Reading resource samples of {cid}",
                                                      functools.partial(read_samples, cid), [])]
if not samples:
    st.caption(f"no resource samples in the {span}")
else:
    several = bool(compared)
    key = "client" if several else "model version"
    rows = []
    previous: dict[str, dict[str, Any]] = {}
    for s in samples:
        before = previous.get(s["client"])
        seconds = ((dt.datetime.fromisoformat(s["@timestamp"].replace("Z", "+00:00"))
                    - dt.datetime.fromisoformat(before["@timestamp"].replace("Z", "+00:00"))).total_seconds()
                   if before else 0.0)
        rows.append({"time": s["@timestamp"], "client": s["client"],
                     "model version": f"v{s.get('fedops.model.version', 0)}" if s.get("fedops.model.version")
                     else "no model", "run": s.get("fedops.run.id", ""), "round": s.get("fedops.round", 0),
                     "host CPU": s.get("host.cpu.usage", 0.0), "agent + Flower CPU": s.get("process.cpu.pct"),
                     "host memory": s.get("system.memory.used.pct", 0.0),
                     "agent + Flower RSS MiB": s.get("process.memory.rss", 0) / 2**20,
                     "disk used": s.get("system.filesystem.used.pct", 0.0),
                     "network out KiB/s": rate(s, before, "host.network.egress.bytes", seconds),
                     "network in KiB/s": rate(s, before, "host.network.ingress.bytes", seconds)})
        previous[s["client"]] = s
    bands: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows if not several else []:
        if row["run"]:
            band = bands.setdefault((row["run"], row["round"]), {"start": row["time"], "label":
                                    f"{row['run']} round {row['round']}"})
            band["end"] = row["time"]
    shaded = list(bands.values())
    c1, c2 = st.columns(2)
    with c1:
        charts.timeseries([{"time": r["time"], key: r[key], "CPU": r["agent + Flower CPU"]} for r in rows
                           if r["agent + Flower CPU"] is not None], "CPU", key,
                          "Agent + SuperNode + ClientApp CPU (share of the host's cores)", "CPU", shaded, ".0%")
        charts.timeseries([{"time": r["time"], key: r[key], "MiB": r["agent + Flower RSS MiB"]} for r in rows], "MiB",
                          key, "Agent + SuperNode + ClientApp memory (RSS)", "MiB", shaded)
        charts.timeseries([{"time": r["time"], "client": r["client"], "disk": r["disk used"]} for r in rows], "disk",
                          "client", "Disk used (the agent's data disk)", "used", shaded, ".0%")
    with c2:
        charts.timeseries([{"time": r["time"], "client": r["client"], "CPU": r["host CPU"]} for r in rows], "CPU",
                          "client", "Host CPU (every process on the device)", "CPU", shaded, ".0%")
        charts.timeseries([{"time": r["time"], "client": r["client"], "memory": r["host memory"]} for r in rows],
                          "memory", "client", "Host memory used", "used", shaded, ".0%")
        charts.timeseries([{"time": r["time"], "series": f"{r['client']} {way}", "KiB/s": r[f"network {way} KiB/s"]}
                           for r in rows for way in ("out", "in") if r[f"network {way} KiB/s"] is not None],
                          "KiB/s", "series", "Network (host)", "KiB/s", shaded)
    st.caption(f"{len(samples)} samples in the {span}; grey bands: the run and round being trained; "
               + ("lines coloured by client" if several else "agent lines coloured by the global model version "
                  "being trained"))
if live:
    time.sleep(REFRESH_S)
    st.rerun()
