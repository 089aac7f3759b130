"""Round overhead of FedOps vs plain Flower, and StartRun -> first round start.

Both sides run the same unmodified digits app with 3 SuperNodes on this machine:
  * plain: flower-superlink + 3 flower-supernode + `flwr run` (what a Flower user does);
  * fedops: control service + 3 agents + StartRun (our launcher, wrappers and reporting).
Seconds per round = the ServerApp's running time / rounds (plain: Flower's own `elapsed`;
fedops: the first to the last round's timestamps of our run record).

Usage: python bench/round_overhead.py [--rounds 3] [--repeats 1] [--warm-apps off|on|both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "digits"))

from digits_app.task import write_partitions  # noqa: E402 - imported once sys.path holds the app

from fedops_common.grpc_channel import control_channel  # noqa: E402 - imported once sys.path holds the app
from fedops_common.net import free_port, wait_for_port  # noqa: E402 - imported once sys.path holds the app
from fedops_common.proc import console_script, flower_env, stop_process_group  # noqa: E402 - imported once sys.path holds the app
from fedops_common.proto import common_pb2, control_pb2, control_pb2_grpc  # noqa: E402 - imported once sys.path holds the app
from fedops_control.devstack import LocalStack  # noqa: E402 - imported once sys.path holds the app
from fedops_control.run import flower_control  # noqa: E402 - imported once sys.path holds the app
from fedops_control.run.launcher import CLAIMED_BY, SuperLinkHandle  # noqa: E402 - imported once sys.path holds the app
from fedops_flower.warmapps.executor import READY_MARK  # noqa: E402 - imported once sys.path holds the app
from fedops_flower.warmapps.spare import READY_SUFFIX as SPARE_READY_SUFFIX  # noqa: E402 - imported once sys.path holds the app

APP = ROOT / "examples" / "digits"


def plain_flower(root: Path, data: list[Path], rounds: int, app: Path = APP) -> float:
    """Seconds per round of the app on plain Flower."""
    env = flower_env(root / "home")
    port = free_port()
    (root / "home").mkdir(parents=True)
    (root / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "b"\n[superlink.b]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    procs = [
        subprocess.Popen(
            [
                console_script("flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        wait_for_port("127.0.0.1", port)
        for i, path in enumerate(data):
            node_env = flower_env(root / f"node{i}")
            procs.append(subprocess.Popen(
                [console_script("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--port",
                 str(free_port()), "--node-config", f'data-path="{path}"'], env=node_env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        out = subprocess.run([console_script("flwr"), "run", str(app), "b", "--format", "json", "--run-config",
                              f"num-server-rounds={rounds} local-epochs=1"], env=env, capture_output=True, text=True,
                             check=True).stdout
        run_id = json.loads(out[out.index("{"):])["run-id"]
        # Polled in process (as `flwr ls` would ask): a `flwr` process per poll would take CPU from the run.
        handle = SuperLinkHandle(run_id="plain", address=f"127.0.0.1:{port}", control_address=f"127.0.0.1:{port}",
                                 flwr_home=root / "home")
        deadline = time.time() + 600
        while time.time() < deadline:
            time.sleep(1)
            run = asyncio.run(flower_control.get_run(handle, str(run_id)))
            status = flower_control.status_text(run)
            if status.startswith("finished"):
                assert status.endswith("completed"), status
                # What `flwr ls` reports as the ServerApp's seconds: running -> finished.
                elapsed = datetime.fromisoformat(run.finished_at) - datetime.fromisoformat(run.running_at)
                return elapsed.total_seconds() / rounds
        raise TimeoutError(f"plain Flower run {run_id} did not finish in 600 s")
    finally:
        for proc in procs:  # each is its own process group: the SuperExecs and app processes go too
            stop_process_group(proc, hard=True)


def fedops(root: Path, data: list[Path], rounds: int, superlink_bind: str = "127.0.0.1",
           superlink_tls: bool = True, spare_superlink: bool = True,
           server_cpus: set[int] | None = None, preload_flower: bool = True,
           warm_apps: bool = False, app: Path = APP, prior_runs: int = 0,
           agent_spares: bool = True) -> dict[str, float]:
    """Seconds per round, StartRun -> first round start, median phase overhead and peak memory,
    through FedOps.

    With ``server_cpus``, the control service and everything it starts (SuperLinks, ServerApps) run
    on those CPUs and the agents (SuperNodes, ClientApps) on the others, as if the devices were
    other machines. Children inherit the affinity of this process when they are started.
    """
    every_cpu = os.sched_getaffinity(0)
    stack = LocalStack(root, control_args=["--superlink-bind", superlink_bind,
                                           "--superlink-tls" if superlink_tls else "--no-superlink-tls",
                                           "--spare-superlink" if spare_superlink else "--no-spare-superlink",
                                           "--warm-apps" if warm_apps else "--no-warm-apps"])
    try:
        if server_cpus:
            os.sched_setaffinity(0, server_cpus)
        stack.start_control()
        if server_cpus:
            os.sched_setaffinity(0, every_cpu - server_cpus)
        spares_before = set((root / "control" / "superlinks").glob("spare-*"))
        task = stack.ctl_json("task", "create", "--title", "bench", "--app", str(app), "--rounds", str(rounds),
                              "--min-clients", "3", "--round-timeout", "300", "--hp", "local-epochs=1")
        for i, path in enumerate(data):
            stack.start_agent(f"b{i}", [task["id"]], path,
                              ["--preload-flower" if preload_flower else "--no-preload-flower",
                               "--warm-apps" if warm_apps else "--no-warm-apps",
                               "--warm-spares", "1" if agent_spares else "0"])
        clients = [stack.client_id(f"b{i}") for i in range(len(data))]
        stack.ctl("task", "select", task["id"], *clients)
        os.sched_setaffinity(0, every_cpu)
        time.sleep(2)
        for _ in range(prior_runs):  # untimed runs of the task first: agents that ran it before
            prior = stack.ctl_json("run", "start", task["id"])
            deadline = time.monotonic() + 600
            while stack.ctl_json("run", "show", prior["id"])["state"] != "RUN_STATE_FINISHED":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"FedOps run {prior['id']} (an untimed one) did not finish in 600 s")
                time.sleep(1)
        if warm_apps and prior_runs:
            spare_wait_s = wait_for_unclaimed_spare(root / "control" / "superlinks")
        elif warm_apps:
            spare_wait_s = wait_for_warm_spare(root / "control" / "superlinks", spares_before)
        else:
            spare_wait_s = 0.0
        agent_spare_wait_s = wait_for_agent_spares(list(stack.agents.values())) if warm_apps and agent_spares else 0.0
        t0 = time.time()
        run = stack.ctl_json("run", "start", task["id"])
        # Polled over gRPC in process: a `fedopsctl` process per poll would take CPU from the run.
        stub = control_pb2_grpc.ControlServiceStub(control_channel(stack.control_address, stack.security()))
        deadline = time.time() + 600
        memory = {"agents_rss_mb_max": 0.0, "template_rss_mb_max": 0.0}
        while time.time() < deadline:
            info = stub.GetRun(control_pb2.GetRunRequest(run_id=run["id"]), timeout=30)
            if info.state == common_pb2.RUN_STATE_FINISHED:
                break
            sample_memory(list(stack.agents.values()), memory)
            time.sleep(1)
        else:
            raise TimeoutError(f"FedOps run {run['id']} did not finish in 600 s")
        assert info.outcome == common_pb2.RUN_OUTCOME_COMPLETED, info.reason
        watched = stack.ctl("--output", "json", "run", "watch", run["id"]).stdout
        events = [json.loads(line) for line in watched.splitlines()]
        started = [e for e in events if e["kind"] == "app_started"][0]
        finished = [e for e in events if e["kind"] == "run_finished"][0]
        # Flower's record of the ServerApp (running -> finished), what the plain side reads with
        # `ListRuns`: the control service reads it before it stops the run's SuperLink.
        running_s = float(finished["data"]["flower_serverapp_s"])

        def ts(e):
            return datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()

        # From the StartRun call's arrival at the service (its `run_created` event), not from the
        # moment `fedopsctl` was launched: the CLI's own start-up is not the platform's latency.
        received = ts([e for e in events if e["kind"] == "run_created"][0])
        first_phase = min(ts(e) for e in events if e["kind"] == "round_phase")
        print(f"  fedopsctl start-up before the call: {received - t0:.2f}s (StartRun received at epoch "
              f"{received:.2f}, first round at {first_phase:.2f})", file=sys.stderr)
        for e in events:  # where the time to the first round goes
            if ts(e) <= first_phase:
                print(f"  +{ts(e) - received:6.2f}s {e['kind']}: {e.get('message', '')}", file=sys.stderr)
        print(f"  ServerApp running {running_s:.2f}s (Flower's record); app_started -> run_finished "
              f"{ts(finished) - ts(started):.2f}s (with the SuperLink's stop)", file=sys.stderr)
        print(f"  memory: {json.dumps(memory)}", file=sys.stderr)
        overheads = phase_breakdown(events, ts)
        return {"s_per_round": running_s / rounds, "startrun_to_first_round_s": first_phase - received,
                "phase_overhead_s": statistics.median(overheads) if overheads else 0.0,
                "spare_wait_s": spare_wait_s, "agent_spare_wait_s": agent_spare_wait_s, **memory}
    finally:
        stack.stop()


def wait_for_warm_spare(superlinks: Path, before: set[Path], timeout_s: float = 60.0) -> float:
    """Seconds waited (after the 2 s every mode waits) until the spare SuperLink started after the
    task was created has its ServerApp template ready.

    Creating a task whose app needs a framework the spare's template lacks (torch) replaces the
    spare, and its template imports the framework (5.1 s for torch and scikit-learn here); a run
    started sooner waits for it. Users create a task once and run it many times, so the bench times
    the run against a ready spare, as most runs find it, and reports this wait beside it."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        spares = set(superlinks.glob("spare-*"))
        # A new spare when the task's frameworks replaced the old one; else the one there was.
        for spare in (spares - before) or spares:
            log = spare / "superlink.log"
            if log.exists() and READY_MARK in log.read_text(errors="replace"):
                return round(time.monotonic() - started, 2)
        time.sleep(0.1)
    raise TimeoutError(f"no spare SuperLink in {superlinks} had its warm template ready in {timeout_s:.0f} s")


def wait_for_unclaimed_spare(superlinks: Path, timeout_s: float = 60.0) -> float:
    """Seconds waited until a spare SuperLink no run has claimed has its ServerApp template ready
    (after runs of the task: the one started when the last of them ended)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        for spare in superlinks.glob("spare-*"):
            log = spare / "superlink.log"
            if not (spare / CLAIMED_BY).exists() and log.exists() and READY_MARK in log.read_text(errors="replace"):
                return round(time.monotonic() - started, 2)
        time.sleep(0.1)
    raise TimeoutError(f"no unclaimed spare SuperLink in {superlinks} was ready in {timeout_s:.0f} s")


def wait_for_agent_spares(agents: list[subprocess.Popen[bytes]], timeout_s: float = 120.0) -> float:
    """Seconds waited until every agent has a spare ClientApp template that has imported the app's
    frameworks (``fedops_agent/spares.py``: started when the clients were selected for the task, and
    again after each run of it), as a run started a few seconds after the selection finds them."""
    import psutil

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        ready = 0
        for agent in agents:
            try:
                tree = psutil.Process(agent.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for process in tree:
                try:
                    title = process.cmdline()
                except psutil.Error:
                    continue
                words = " ".join(title).split()
                if words[:1] == ["fedops-warm-spare"] and Path(words[-1] + SPARE_READY_SUFFIX).exists():
                    ready += 1
                    break
        if ready == len(agents):
            return round(time.monotonic() - started, 2)
        time.sleep(0.1)
    raise TimeoutError(f"not every agent had a ready spare ClientApp template within {timeout_s:.0f} s")


def sample_memory(agents: list[subprocess.Popen[bytes]], peak: dict[str, float]) -> None:
    """Peak RSS (MB) of the agents with every process under them, and of the largest warm template.
    RSS counts pages shared after a fork once per process, so the sum is an upper bound."""
    import psutil

    total = 0.0
    for agent in agents:
        try:
            tree = [psutil.Process(agent.pid), *psutil.Process(agent.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in tree:
            try:
                rss = process.memory_info().rss / 2**20
                total += rss
                if "fedops-warm-template" in " ".join(process.cmdline()):
                    peak["template_rss_mb_max"] = max(peak["template_rss_mb_max"], rss)
            except psutil.Error:
                continue
    peak["agents_rss_mb_max"] = max(peak["agents_rss_mb_max"], total)


def phase_breakdown(events: list[dict], ts) -> list[float]:
    """Print where each phase's wall time goes, by hop; return each phase's overhead (its wall time
    minus the slowest client handler).

    sent: the observing Grid pushed the messages (``round_phase``); handler start: a client's
    ``client_result`` arrival minus its handler's duration, so "sent -> handler start" is the
    SuperNode's pull from the SuperLink, the SuperExec's task poll, the ClientApp process start
    (or fork), its imports, the FAB install and the app's load; "handler end -> finished" is the
    reply's way back (ClientApp -> SuperNode -> SuperLink -> the Grid's poll) for the last reply.
    """
    overheads = []
    sent: dict[tuple[int, str], float] = {}
    handled: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for e in events:
        phase = (e.get("data") or {}).get("phase", "")
        key = (int(e.get("round", 0)), phase)
        if e["kind"] == "round_phase":
            sent[key] = ts(e)
        elif e["kind"] == "client_result" and key in sent:
            duration = float(e["data"].get("duration_s", 0.0))
            handled.setdefault(key, []).append((ts(e) - duration, duration))
        elif e["kind"] == "phase_finished" and key in sent and handled.get(key):
            wall = ts(e) - sent[key]
            starts = sorted(start - sent[key] for start, _ in handled[key])
            slowest = max(duration for _, duration in handled[key])
            last_end = max(start + duration for start, duration in handled[key])
            overheads.append(wall - slowest)
            print(f"  round {key[0]} {key[1]:8s} wall {wall:6.2f}s = sent -> handler start "
                  f"{starts[0]:.2f}..{starts[-1]:.2f}s, slowest handler {slowest:.2f}s, last handler end -> "
                  f"finished {ts(e) - last_end:.2f}s; overhead {wall - slowest:.2f}s", file=sys.stderr)
    return overheads


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--fedops-only", action="store_true", help="skip the plain Flower side")
    parser.add_argument("--superlink-bind", default="127.0.0.1",
                        help="0.0.0.0 puts each run's SuperLink behind its Fleet gateway, as for remote agents")
    parser.add_argument("--no-superlink-tls", dest="superlink_tls", action="store_false",
                        help="plaintext SuperLinks without node authentication, as the plain Flower side runs")
    parser.add_argument("--no-spare-superlink", dest="spare_superlink", action="store_false",
                        help="start each run's SuperLink at StartRun instead of taking the warm spare")
    parser.add_argument("--no-preload-flower", dest="preload_flower", action="store_false",
                        help="agents start each SuperNode as a new process instead of forking it from their "
                             "preloaded fork server")
    parser.add_argument("--app", type=Path, default=APP,
                        help="the Flower app both sides run (it needs a local-epochs key), e.g. "
                             "tests/apps/message_lists for a numpy-only model; default: the digits app (torch)")
    parser.add_argument("--warm-apps", choices=("off", "on", "both"), default="both",
                        help="agents fork ClientApps, the control service ServerApps, from warm templates "
                             "(fedops_flower/warmapps); both: run "
                             "FedOps without and with them in each repeat, side by side with plain Flower")
    parser.add_argument("--prior-runs", type=int, default=0,
                        help="FedOps: run the task this many times (untimed) on the same fleet before the timed "
                             "run, as agents that ran it before (a user's later runs) find it")
    parser.add_argument("--no-agent-spares", dest="agent_spares", action="store_false",
                        help="agents keep no spare ClientApp templates (--warm-spares 0): each run's template "
                             "imports the app's frameworks when the run starts")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (every run's logs: supernode.log, superlink.log, ...)")
    parser.add_argument("--server-cpus", default="",
                        help="e.g. 0: the control service and its SuperLinks/ServerApps on these CPUs, the agents "
                             "on the others (devices are other machines in a deployment)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedops-bench-"))
    data = [work / "data" / f"c{i}" for i in range(3)]
    write_partitions(data)
    server_cpus = {int(cpu) for cpu in args.server_cpus.split(",") if cpu.strip()}
    if server_cpus and not server_cpus < os.sched_getaffinity(0):
        parser.error("--server-cpus: a proper subset of this machine's CPUs")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.warm_apps]
    plain: list[float] = []
    ours: dict[bool, list[dict[str, float]]] = {mode: [] for mode in modes}
    for rep in range(args.repeats):
        if not args.fedops_only:
            plain.append(plain_flower(work / f"plain{rep}", data, args.rounds, args.app.resolve()))
        for mode in modes:
            print(f"FedOps, warm apps {'on' if mode else 'off'}, repeat {rep + 1}:", file=sys.stderr)
            ours[mode].append(fedops(
                work / f"fedops{rep}{'w' if mode else ''}", data, args.rounds, args.superlink_bind,
                args.superlink_tls, args.spare_superlink, server_cpus, args.preload_flower, warm_apps=mode,
                app=args.app.resolve(), prior_runs=args.prior_runs, agent_spares=args.agent_spares))
    result: dict[str, object] = {
        "app": str(args.app), "rounds": args.rounds, "repeats": args.repeats, "superlink_bind": args.superlink_bind,
        "superlink_tls": args.superlink_tls, "spare_superlink": args.spare_superlink,
        "preload_flower": args.preload_flower, "server_cpus": sorted(server_cpus), "prior_runs": args.prior_runs,
        "agent_spares": args.agent_spares, "load_average_after": os.getloadavg()}
    if plain:
        result["plain_flower_s_per_round"] = statistics.median(plain)
        result["plain_flower_s_per_round_each"] = [round(value, 2) for value in plain]
    for mode in modes:
        name = "fedops_warm" if mode else "fedops"
        for key in ours[mode][0]:
            values = [measured[key] for measured in ours[mode]]
            result[f"{name}_{key}_median"] = round(statistics.median(values), 3)
            result[f"{name}_{key}_each"] = [round(value, 2) for value in values]
        if plain:
            # Plain Flower's Grid pulls replies every 3 s, so its rounds move in 3 s steps from run to
            # run: the mean over repeats is the steadier figure.
            result[f"{name}_ratio_of_means"] = round(statistics.mean(m["s_per_round"] for m in ours[mode])
                                                     / statistics.mean(plain), 3)
    print(json.dumps(result, indent=2))
    if args.keep:
        print(f"kept {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
