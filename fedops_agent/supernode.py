"""Launch and supervise the Flower SuperNode of one run."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fedops_agent import forkserver, spares
from fedops_common import runconfig as keys
from fedops_common.logging import get_logger
from fedops_common.net import free_port
from fedops_common.proc import (
    ChildProcess,
    console_script,
    flower_env,
    stop_process_group,
)

log = get_logger(__name__)


@dataclass
class SuperNodeProcess:
    """A running SuperNode."""

    run_id: str
    process: ChildProcess  # a Popen, or a fork of the agent's fork server
    stop_requested: bool = False
    restarts: int = 0
    crashed_at: float = 0.0  # loop time of the crash this process restarts after (0 = first start)
    launch: int = 0          # the run's launch it serves (StartTraining.launch)
    replaced: bool = False   # stopped for a newer launch of its run: its exit is not the run's end
    log_offset: int = 0  # where this process's lines start in supernode.log
    task_id: str = ""
    spare: spares.Spare | None = None  # the agent's spare template its SuperExec adopted


def start_supernode(run_id: str, superlink: str, node_config: dict[str, str], workdir: Path,
                    root_certificates: Path | None = None, auth_key: Path | None = None,
                    forked: bool = False, warm_apps: bool = False,
                    warm_imports: list[str] | None = None, warm_learned: Path | None = None,
                    warm_spare: spares.Spare | None = None) -> SuperNodeProcess:
    """Start ``flower-supernode`` in its own process group with its own FLWR_HOME and port.

    With ``root_certificates`` it talks TLS to the SuperLink and proves its identity with ``auth_key``
    (Flower's SuperNode authentication); without, plaintext. With ``forked``, the SuperNode and its
    SuperExec are forks of the agent's fork server (:func:`fedops_agent.forkserver.warm` first),
    else new processes (``flower-supernode`` starts ``flower-superexec`` itself). ``warm_apps`` (forked
    only) makes the SuperExec fork each ClientApp from a warm template (``fedops_flower.warmapps``),
    which imports ``warm_imports`` (the app's frameworks) before the run's first message, and the
    library modules an earlier run of the same task imported, kept in ``warm_learned``; or adopts
    ``warm_spare``, a template that imported them before the run (``fedops_agent/spares.py``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = " ".join(f"{key}={value}" for key, value in sorted(node_config.items()))
    env = flower_env(workdir / "flwr")
    if warm_apps and warm_imports:
        env[keys.WARM_IMPORTS_ENV] = ",".join(warm_imports)
    if warm_apps and warm_learned is not None:
        env[keys.WARM_LEARNED_ENV] = str(warm_learned)
    spare = warm_spare if warm_apps and forked else None
    if spare is not None:
        env[keys.WARM_SPARE_ENV] = str(spare.socket_path)
    elif warm_spare is not None:  # a spare this SuperNode cannot use is not left waiting
        spares.stop(warm_spare)
    security = ["--insecure"]
    if root_certificates is not None:
        security = ["--root-certificates", str(root_certificates)]
        if auth_key is not None:
            security += ["--auth-supernode-private-key", str(auth_key)]
    log_path = workdir / "supernode.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    runtime_port = free_port()
    args = [*security, "--superlink", superlink, "--port", str(runtime_port), "--node-config", config,
            "--max-wait-time", "60"]  # runtime dependency installation: off by default since flwr 1.41
    process: ChildProcess
    if forked:
        process = forkserver.start_supernode(
            [*args, "--isolation", "process"], runtime_port,
            ["--insecure", "--runtime-api-address", f"127.0.0.1:{runtime_port}"], env, log_path,
            warm_apps=warm_apps)
    else:
        log_file = open(log_path, "ab")
        process = subprocess.Popen([console_script("flower-supernode"), *args], env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
    log.info("SuperNode started", run_id=run_id, pid=process.pid, superlink=superlink,
             tls=root_certificates is not None, forked=forked, warm_apps=forked and warm_apps,
             spare_template=spare.process.pid if spare is not None else None)
    return SuperNodeProcess(run_id=run_id, process=process, log_offset=offset, spare=spare)


def stop_supernode(node: SuperNodeProcess, hard: bool, grace_s: float = 5.0) -> None:
    """Stop the SuperNode and its ClientApp processes (the whole process group, and the group of the
    spare template its SuperExec adopted)."""
    node.stop_requested = True
    stop_process_group(node.process, hard=hard, grace_s=grace_s)
    if node.spare is not None:
        spares.stop(node.spare, hard=hard, grace_s=grace_s)


async def wait_exit(node: SuperNodeProcess) -> int:
    """Wait for the SuperNode to exit; returns its exit code."""
    return await asyncio.to_thread(node.process.wait)
