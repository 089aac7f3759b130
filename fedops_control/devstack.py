"""Start a local FedOps stack (control service + N agents) as real processes.

Used by the demo (`make demo`), the end-to-end tests and the benchmarks, so all three
exercise exactly what a user runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedops_common.grpc_channel import control_channel
from fedops_common.proc import console_script, scan_processes, stop_process_group
from fedops_common.proto import access_pb2, access_pb2_grpc
from fedops_common.security import (
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TOKEN,
    ChannelSecurity,
    read_secret,
)

# What `fedops-control` prints once it serves (server/app.py), followed by host:port.
LISTENING = "fedops-control listening on "
METRICS = "fedops-control metrics on "


@dataclass
class LocalStack:
    """Processes of a local stack under ``root``; stop() leaves nothing behind."""

    root: Path
    elasticsearch_url: str = ""   # "" = telemetry stays in local JSON-lines files
    database_url: str = ""        # "" = SQLite file under root
    control_address: str = ""
    metrics_address: str = ""
    control: subprocess.Popen[bytes] | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    auth: bool = True             # the control service's default: tokens and roles on every RPC
    admin_token: str = ""         # the bootstrap admin token, read once the service is up
    control_args: list[str] = field(default_factory=list)  # extra `fedops-control` flags
    client_tls: ChannelSecurity = field(default_factory=ChannelSecurity)  # TLS files of tools and tests

    @property
    def admin_token_file(self) -> Path:
        """Where the control service writes its bootstrap admin token."""
        return self.root / "control" / "admin.token"

    def security(self, token: str | None = None) -> ChannelSecurity:
        """How tests and tools reach this stack (the admin token unless another is given)."""
        return dataclasses.replace(self.client_tls, token=self.admin_token if token is None else token)

    def enrolment_token(self, task_id: str, name: str = "", labels: dict[str, str] | None = None) -> str:
        """A one-time enrolment token for ``task_id`` (as an operator would create it), naming the device
        and the labels it gets."""
        with control_channel(self.control_address, self.security()) as channel:
            issued = access_pb2_grpc.AccessServiceStub(channel).CreateEnrolmentToken(
                access_pb2.CreateEnrolmentTokenRequest(task_id=task_id, name=name, labels=labels or {}), timeout=30)
        return issued.token

    def start_control(self, port: int | None = None) -> str:
        """Start the control service with a SQLite file and JSON-lines logs under root; a restart
        (``port`` of the one before) first waits for the killed or stopped one to exit. Without
        ``port`` the service binds a free port itself (a port picked here and bound there could be
        taken in between) and says which once it serves."""
        if self.control is not None:
            # A process killed a moment ago can still accept connections on its port: the new one
            # could not bind it.
            self.control.wait(timeout=30)
        self.root.mkdir(parents=True, exist_ok=True)
        out_path = self.root / "control.out"
        out = open(out_path, "ab")
        start = out.tell()
        self.control = subprocess.Popen(
            [
                console_script("fedops-control"),
                "--listen",
                f"127.0.0.1:{port or 0}",
                "--data-dir",
                str(self.root / "control"),
                "--metrics-listen",
                self.metrics_address or "127.0.0.1:0",
                "--elasticsearch-url",
                self.elasticsearch_url,
                "--database-url",
                self.database_url,
                "--auth" if self.auth else "--no-auth",
                *self.control_args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        said = self._wait_for_line(out_path, start, LISTENING, 60)
        self.control_address = said[LISTENING]
        self.metrics_address = said.get(METRICS, self.metrics_address)
        if self.auth:
            deadline = time.monotonic() + 30
            while not self.admin_token_file.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.admin_token_file} was not written")
                time.sleep(0.05)
            self.admin_token = read_secret(self.admin_token_file)
        return self.control_address

    def _wait_for_line(self, out_path: Path, start: int, prefix: str, timeout_s: float) -> dict[str, str]:
        """The control service's start-up lines (prefix -> the rest of the line) in ``out_path``
        from byte ``start``, once one begins with ``prefix``; raises with its output if it exits
        or says nothing of the kind within ``timeout_s``."""
        assert self.control is not None
        deadline = time.monotonic() + timeout_s
        while True:
            with open(out_path, "rb") as out:
                out.seek(start)
                text = out.read().decode(errors="replace")
            said = {known: line[len(known):].strip().removeprefix("http://").removesuffix("/metrics")
                    for line in text.splitlines() for known in (LISTENING, METRICS) if line.startswith(known)}
            if prefix in said:
                return said
            code = self.control.poll()
            if code is not None or time.monotonic() > deadline:
                why = f"exited with {code}" if code is not None else f"did not serve within {timeout_s:.0f} s"
                raise RuntimeError(f"the control service {why}; its output ({out_path}):\n{text[-3000:]}")
            time.sleep(0.05)

    def start_agent(self, name: str, task_ids: list[str], data_path: Path,
                    extra_args: list[str] | None = None,
                    enrolment_labels: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start one agent with its own state dir and data path, and an enrolment token per task
        (it enrols with them once, then acts with the credential it keeps); the tokens are named after
        the agent and give the client ``enrolment_labels``."""
        state = self.root / "agents" / name
        state.mkdir(parents=True, exist_ok=True)
        out = open(state / "agent.out", "ab")
        args = [console_script("fedops-agent"), "--control", self.control_address, "--data-path", str(data_path),
                "--state-dir", str(state), "--device-id", f"demo-{name}", "--metrics-listen", "127.0.0.1:0",
                "--elasticsearch-url", self.elasticsearch_url, *(extra_args or [])]
        for task_id in task_ids:
            args += ["--task", task_id]
            if self.auth:
                args += ["--enrolment-token", self.enrolment_token(task_id, name, enrolment_labels)]
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.agents[name] = process
        return process

    def client_id(self, name: str, timeout_s: float = 30) -> str:
        """The client id an agent got at registration."""
        path = self.root / "agents" / name / "client-id"
        deadline = time.monotonic() + timeout_s
        while not (client_id := path.read_text(encoding="utf-8").strip() if path.exists() else ""):
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent {name} did not register within {timeout_s}s")
            time.sleep(0.1)
        return client_id

    def ctl(self, *args: str, check: bool = True, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        """Run `fedopsctl` against this stack."""
        tls = self.client_tls
        env = {**os.environ, ENV_TOKEN: self.admin_token, ENV_TLS_CA: tls.ca_file, ENV_TLS_CERT: tls.cert_file,
               ENV_TLS_KEY: tls.key_file}
        result = subprocess.run([console_script("fedopsctl"), "--control", self.control_address, *args],
                                capture_output=True, text=True, timeout=timeout_s, env=env)
        if check and result.returncode != 0:
            gone = ""
            if self.control is not None and self.control.poll() is not None:
                tail = (self.root / "control.out").read_text(errors="replace")[-3000:]
                gone = f"\nthe control service exited with {self.control.returncode}; its output:\n{tail}"
            raise RuntimeError(f"fedopsctl {' '.join(args)} failed ({result.returncode}): {result.stderr}{gone}")
        return result

    def ctl_json(self, *args: str) -> Any:
        """Run `fedopsctl --output json` and parse the answer."""
        return json.loads(self.ctl("--output", "json", *args).stdout)

    def kill_agent(self, name: str) -> None:
        """SIGKILL an agent and everything it started (a device dying mid-round)."""
        process = self.agents[name]
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for child in _descendants_by_marker(self.root / "agents" / name):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=10)

    def pause_apps(self, name: str, paused: bool = True) -> list[int]:
        """SIGSTOP (``paused``) or SIGCONT what runs an agent's ClientApps (its SuperNode's SuperExec,
        and any ClientApp started), leaving the agent and the SuperNode running: both keep sending
        heartbeats, so FedOps and Flower alike see the device connected while its app makes no
        progress, a straggler. Returns the pids signalled (none before the SuperExec is up)."""
        pids = _descendants_by_marker(self.root / "agents" / name, flower_only=True, but="flower-supernode")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)
        return pids

    def stop(self) -> None:
        """Stop agents (they stop their SuperNodes), the control service, then any SuperLink of a run
        still active: the control service leaves those running for its next start."""
        for process in self.agents.values():
            stop_process_group(process, grace_s=15)
        if self.control is not None:
            stop_process_group(self.control, grace_s=15)
        for pid in _descendants_by_marker(self.root, flower_only=True):
            for kill in (os.killpg, os.kill):  # the group if it leads one, else the process itself
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def _descendants_by_marker(directory: Path, flower_only: bool = False, but: str = "") -> list[int]:
    """PIDs (never this process) whose command line or environment mentions ``directory``; with
    ``flower_only``, only Flower's processes (SuperLink, SuperNode, SuperExec, apps); ``but``: not
    those whose command line holds it."""
    marker = str(directory)
    pids = []
    for pid, proc, raw in scan_processes():
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        try:
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if flower_only and not ("flower-" in cmdline or "flwr-" in cmdline):
            continue
        if but and but in cmdline:
            continue
        if marker in cmdline or marker in environ:
            pids.append(pid)
    return pids
