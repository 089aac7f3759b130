"""Security with real processes: roles on every RPC, enrolment and agent credentials, the audit log,
TLS and mutual TLS with certificates from `fedopsctl ca`, and SuperLinks that admit only their run's agents."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedops_common.grpc_channel import control_channel
from fedops_common.proc import console_script
from fedops_common.proto import (
    access_pb2,
    access_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    control_pb2,
    control_pb2_grpc,
)
from fedops_common.security import ChannelSecurity
from fedops_control.access.policy import ENROLMENT, METHOD_ROLES, allows
from fedops_control.devstack import LocalStack
from tests.backends import Elasticsearch, wait_until
from tests.conftest import DIGITS_APP, control_stack
from tests.test_e2e import get_run, wait_finished, wait_for

pytestmark = pytest.mark.e2e
A = access_pb2
SERVICES = ((control_pb2, control_pb2_grpc), (agent_pb2, agent_pb2_grpc), (access_pb2, access_pb2_grpc))
RESULTS: dict[str, int] = {"count": 0}


def _register(stack: LocalStack, device_id: str, tokens: list[str], credential: str = "",
              task_ids: list[str] | None = None) -> agent_pb2.RegisterResponse:
    with control_channel(stack.control_address, stack.security(credential)) as channel:
        return agent_pb2_grpc.AgentServiceStub(channel).Register(agent_pb2.RegisterRequest(
            device=common_pb2.DeviceInfo(device_id=device_id, hostname=device_id), enrolment_tokens=tokens,
            task_ids=task_ids or []), timeout=10)


def _api_token(stack: LocalStack, role: int, name: str) -> str:
    with control_channel(stack.control_address, stack.security()) as channel:
        return access_pb2_grpc.AccessServiceStub(channel).CreateApiToken(
            A.CreateApiTokenRequest(name=name, role=role), timeout=10).token


def _code(call: Any) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, elasticsearch: Elasticsearch) -> Iterator[dict[str, Any]]:
    """A control service with auth on (the default), shipping telemetry to Elasticsearch."""
    with control_stack(tmp_path_factory.mktemp("access"), elasticsearch_url=elasticsearch.url) as stack:
        task = stack.ctl_json("task", "create", "--title", "secured", "--app", str(DIGITS_APP))
        other = stack.ctl_json("task", "create", "--title", "not enrolled", "--app", str(DIGITS_APP))
        agent = _register(stack, "device-a", [stack.enrolment_token(task["id"], "device-a")])
        assert agent.credential.startswith("foa_") and list(agent.task_ids) == [task["id"]]
        tokens = {"admin": stack.admin_token, "agent": agent.credential,
                  "viewer": _api_token(stack, A.ROLE_VIEWER, "viewer"),
                  "operator": _api_token(stack, A.ROLE_OPERATOR, "operator")}
        yield {"stack": stack, "task": task, "other_task": other, "agent": agent, "tokens": tokens,
               "es": elasticsearch}


def _methods() -> list[tuple[str, Any, Any, Any]]:
    found = []
    for module, grpc_module in SERVICES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append((f"/{service.full_name}/{method.name}", getattr(grpc_module, f"{service.name}Stub"),
                              method, service.name))
    return found


def _invoke(channel: grpc.Channel, stub_class: Any, method: Any) -> grpc.StatusCode:
    from google.protobuf import message_factory

    request = message_factory.GetMessageClass(method.input_type)()
    callable_ = getattr(stub_class(channel), method.name)
    if method.client_streaming:
        requests = iter([request])
        if method.server_streaming:
            return _code(lambda: list(callable_(requests, timeout=3)))
        return _code(lambda: callable_(requests, timeout=5))
    if method.server_streaming:
        return _code(lambda: list(callable_(request, timeout=3)))
    return _code(lambda: callable_(request, timeout=5))


def test_every_rpc_needs_its_role(secured: dict[str, Any]) -> None:
    """Every RPC we serve is in the policy; each caller without the role gets PERMISSION_DENIED,
    without a valid token UNAUTHENTICATED; callers with the role get past the check."""
    stack: LocalStack = secured["stack"]
    roles = {"viewer": A.ROLE_VIEWER, "operator": A.ROLE_OPERATOR, "admin": A.ROLE_ADMIN, "agent": A.ROLE_AGENT}
    checked = 0
    for full_name, stub_class, method, _ in _methods():
        assert full_name in METHOD_ROLES, f"{full_name} has no role in fedops_control/access/policy.py"
        needed = METHOD_ROLES[full_name]
        for caller, token in [("none", ""), *secured["tokens"].items()]:
            if method.name in ("DeleteTask", "RevokeToken", "StopRun", "StartRun") and caller != "none":
                continue  # allowed callers would change state the other checks rely on; denial is checked below
            with control_channel(stack.control_address, stack.security(token)) as channel:
                code = _invoke(channel, stub_class, method)
            RESULTS["count"] += 1
            RESULTS[code.name] = RESULTS.get(code.name, 0) + 1
            checked += 1
            if needed == ENROLMENT:
                expected_denial = None if caller in ("none", "agent") else grpc.StatusCode.UNAUTHENTICATED
            elif caller == "none":
                expected_denial = grpc.StatusCode.UNAUTHENTICATED
            else:
                expected_denial = None if allows(roles[caller], needed) else grpc.StatusCode.PERMISSION_DENIED
            if expected_denial is not None:
                assert code == expected_denial, f"{caller} calling {full_name}: {code.name}"
            else:
                assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED) or (
                    method.name in ("Session", "ReportClientEvent")  # an empty request names no client: not its own
                ), f"{caller} calling {full_name}: {code.name}"
    assert checked > 100
    viewer = control_pb2_grpc.ControlServiceStub(control_channel(stack.control_address,
                                                                 stack.security(secured["tokens"]["viewer"])))
    for name, request in (("StartRun", control_pb2.StartRunRequest(task_id=secured["task"]["id"])),
                          ("DeleteTask", control_pb2.DeleteTaskRequest(task_id=secured["task"]["id"])),
                          ("StopRun", control_pb2.StopRunRequest(run_id="run-x"))):
        refused = _code(lambda name=name, request=request: getattr(viewer, name)(request, timeout=5))
        assert refused == grpc.StatusCode.PERMISSION_DENIED
    assert stack.ctl("task", "show", secured["task"]["id"]).returncode == 0  # still there


def test_hostile_tokens_are_unauthenticated(secured: dict[str, Any]) -> None:
    stack: LocalStack = secured["stack"]
    stub = control_pb2_grpc.ControlServiceStub(control_channel(stack.control_address, stack.security("")))

    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=600),
                     st.sampled_from(["fop_", "foa_", "' OR 1=1 --", "a" * 512, "null", "Bearer"])))
    def check(token: str) -> None:
        code = _code(lambda: stub.ListTasks(control_pb2.ListTasksRequest(), timeout=5,
                                            metadata=[("authorization", f"Bearer {token}")]))
        RESULTS["count"] += 1
        assert code == grpc.StatusCode.UNAUTHENTICATED

    check()
    report = Path(__file__).resolve().parents[1] / ".cache" / "access-cases.json"
    report.parent.mkdir(exist_ok=True)
    report.write_text(json.dumps(RESULTS))


def test_agents_cannot_act_as_another_or_join_tasks_they_were_not_enrolled_in(secured: dict[str, Any]) -> None:
    stack: LocalStack = secured["stack"]
    task_id, other_id = secured["task"]["id"], secured["other_task"]["id"]
    agent, credential = secured["agent"], secured["tokens"]["agent"]
    b = _register(stack, "device-b", [stack.enrolment_token(task_id)])
    # A's credential cannot register as device B, nor join a task it holds no enrolment token for.
    assert _code(lambda: _register(stack, "device-b", [], credential)) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: _register(stack, "device-a", [], credential, [other_id])) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: _register(stack, "device-a", [], credential, [task_id])) == grpc.StatusCode.OK
    # A used enrolment token cannot be used again; an enrolled device cannot be re-enrolled without its credential.
    token = stack.enrolment_token(task_id)
    assert _code(lambda: _register(stack, "device-c", [token])) == grpc.StatusCode.OK
    assert _code(lambda: _register(stack, "device-d", [token])) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: _register(stack, "device-a", [stack.enrolment_token(task_id)])) == \
        grpc.StatusCode.PERMISSION_DENIED
    # The session and the ClientApp's reports must name the credential's own client.
    with control_channel(stack.control_address, stack.security(credential)) as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        hijack = agent_pb2.AgentMessage(client_id=b.client_id, heartbeat=agent_pb2.Heartbeat())
        assert _code(lambda: list(agents.Session(iter([hijack]), timeout=3))) == grpc.StatusCode.PERMISSION_DENIED
        observer = agent_pb2_grpc.ObserverServiceStub(channel)
        report = agent_pb2.ClientEvent(run_id="run-x", client_id=b.client_id, round=1)
        assert _code(lambda: observer.ReportClientEvent(report, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    # The operator cannot select a client into a task it never enrolled in.
    result = stack.ctl("task", "select", other_id, agent.client_id, check=False)
    assert result.returncode == 2 and "not enrolled" in result.stderr
    # Revoking A's credential locks it out.
    listed = stack.ctl_json("token", "list", "--kind", "agent")["tokens"]
    mine = next(t for t in listed if t["subject"] == agent.client_id)
    stack.ctl("token", "revoke", mine["token_id"])
    assert _code(lambda: _register(stack, "device-a", [], credential)) == grpc.StatusCode.UNAUTHENTICATED


def test_an_agent_back_while_training_a_finished_run_is_told_to_stop_it(secured: dict[str, Any]) -> None:
    """The stop of a run that ended while an agent's session was down went with that session: when
    the agent comes back still training it, the control service tells it to stop (hard); so it does
    for a later status of that run (a SuperNode's "connected as node N" can follow a stop). Neither
    status puts the client in the finished run."""
    stack: LocalStack = secured["stack"]
    device = _register(stack, "device-back", [stack.enrolment_token(secured["task"]["id"])])
    got_first, done = threading.Event(), threading.Event()

    def status(reason: str, node_id: int = 0) -> agent_pb2.AgentMessage:
        return agent_pb2.AgentMessage(client_id=device.client_id, status=agent_pb2.StatusChange(
            state=common_pb2.CLIENT_STATE_TRAINING, reason=reason, run_id="run-long-gone", node_id=node_id))

    def messages() -> Iterator[agent_pb2.AgentMessage]:
        yield status("reconnected while training")
        got_first.wait(10)
        yield status("SuperNode connected as node 7", node_id=7)
        done.wait(10)

    with control_channel(stack.control_address, stack.security(device.credential)) as channel:
        replies = agent_pb2_grpc.AgentServiceStub(channel).Session(messages(), timeout=10)
        commands = []
        try:
            for command in replies:
                commands.append(command)
                got_first.set()
                if len(commands) == 2:
                    break
        finally:
            done.set()
            replies.cancel()
    assert [c.WhichOneof("body") for c in commands] == ["stop_training"] * 2
    assert all(c.stop_training.run_id == "run-long-gone" and c.stop_training.hard for c in commands)
    client = stack.ctl_json("clients", "show", device.client_id)
    assert not client.get("current_run_id") and client.get("state") != "CLIENT_STATE_TRAINING", client


def test_cli_roles_and_exit_codes(secured: dict[str, Any]) -> None:
    stack: LocalStack = secured["stack"]
    viewer = secured["tokens"]["viewer"]
    who = json.loads(subprocess.run([console_script("fedopsctl"), "--control", stack.control_address, "--token",
                                     viewer, "-o", "json", "whoami"], capture_output=True, text=True,
                                    timeout=60).stdout)
    assert who["role"] == "ROLE_VIEWER" and who["name"] == "viewer"
    denied = subprocess.run([console_script("fedopsctl"), "--control", stack.control_address, "--token", viewer,
                             "task", "create", "--title", "x", "--app", str(DIGITS_APP)],
                            capture_output=True, text=True, timeout=60)
    assert denied.returncode == 3 and "PERMISSION_DENIED" in denied.stderr
    bad = stack.ctl("token", "create", "--name", "", "--role", "admin", check=False)
    assert bad.returncode == 2 and "name" in bad.stderr
    issued = stack.ctl_json("token", "create", "--name", "ci", "--role", "operator", "--ttl", "3600")
    assert issued["token"].startswith("fop_") and issued["info"]["role"] == "ROLE_OPERATOR"
    secrets = json.dumps(stack.ctl_json("token", "list"))
    assert issued["token"] not in secrets and stack.admin_token not in secrets


def test_state_changes_are_audited_and_shipped(secured: dict[str, Any]) -> None:
    """Every state-changing call, allowed or refused, is in the audit log with who made it,
    and reaches Elasticsearch's fedops-audit alias; secrets never do."""
    stack: LocalStack = secured["stack"]
    es: Elasticsearch = secured["es"]
    audit_file = stack.root / "control" / "telemetry" / "audit" / "fedops-control.jsonl"
    records = [json.loads(line) for line in audit_file.read_text().splitlines()]
    actions = {(r["event.action"], r["event.outcome"], r["user.name"]) for r in records}
    assert ("CreateTask", "success", "bootstrap admin") in actions
    assert ("CreateApiToken", "success", "bootstrap admin") in actions
    assert ("StartRun", "failure", "viewer") in actions          # refused: PERMISSION_DENIED
    assert ("Register", "success", "enrolling device") in actions
    assert ("RevokeToken", "success", "bootstrap admin") in actions
    text = audit_file.read_text()
    assert all(token not in text for token in secured["tokens"].values())
    created = next(r for r in records if r["event.action"] == "CreateTask" and r["event.outcome"] == "success")
    assert created["fedops.task.id"] and created["source.address"]
    wait_until(lambda: es.count("fedops-audit", {"term": {"event.action": "CreateTask"}}) >= 2, 60,
               "audit records in Elasticsearch")
    denied = es.count("fedops-audit", {"bool": {"filter": [{"term": {"event.outcome": "failure"}},
                                                           {"term": {"user.name": "viewer"}}]}})
    assert denied >= 3


def _ca(tmp: Path, *args: str) -> dict[str, str]:
    result = subprocess.run([console_script("fedopsctl"), "-o", "json", "ca", *args, "--dir", str(tmp)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_mutual_tls_run_and_superlink_admits_only_the_runs_agents(tmp_path: Path, digits_data: list[Path]) -> None:
    """CA and certificates from `fedopsctl ca`; control with mutual TLS; a 2-round run whose
    ServerApp and ClientApps report over mTLS; a SuperNode with an unregistered key is refused."""
    certs = tmp_path / "certs"
    _ca(certs, "init")
    server = _ca(certs, "issue", "control", "--server-host", "127.0.0.1", "--server-host", "localhost")
    operator = _ca(certs, "issue", "operator", "--client")
    assert _ca(certs, "issue", "demo-m0", "--client")["cert"].endswith("demo-m0.pem")
    _ca(certs, "issue", "demo-m1", "--client")
    _ca(certs, "issue", "intruder", "--client")
    again = subprocess.run([console_script("fedopsctl"), "ca", "init", "--dir", str(certs)], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr
    stack = LocalStack(tmp_path / "mtls", control_args=["--tls-cert", server["cert"], "--tls-key", server["key"],
                                                        "--tls-ca", server["ca"], "--mtls",
                                                        "--superlink-bind", "0.0.0.0"],
                       client_tls=ChannelSecurity(ca_file=server["ca"], cert_file=operator["cert"],
                                                  key_file=operator["key"]))
    try:
        stack.start_control()
        # Plaintext and certificate-less TLS clients are refused at the handshake.
        plain = subprocess.run([console_script("fedopsctl"), "--control", stack.control_address, "--token",
                                stack.admin_token, "--tls-ca", "", "--tls-cert", "", "--tls-key", "", "task", "list"],
                               capture_output=True, text=True, timeout=60)
        no_cert = subprocess.run([console_script("fedopsctl"), "--control", stack.control_address, "--token",
                                  stack.admin_token, "--tls-ca", server["ca"], "--tls-cert", "", "--tls-key", "",
                                  "task", "list"], capture_output=True, text=True, timeout=60)
        assert plain.returncode == 1 and no_cert.returncode == 1, (plain.stderr, no_cert.stderr)
        task = stack.ctl_json("task", "create", "--title", "mtls", "--app", str(DIGITS_APP), "--rounds", "2",
                              "--min-clients", "2", "--round-timeout", "120", "--hp", "local-epochs=1")
        # An agent whose certificate names another device is refused.
        intruder_args = ["--tls-ca", server["ca"], "--tls-cert", str(certs / "intruder.pem"),
                         "--tls-key", str(certs / "intruder.key")]
        stack.start_agent("x", [task["id"]], digits_data[0], intruder_args)
        agents = []
        for i in range(2):
            stack.start_agent(f"m{i}", [task["id"]], digits_data[i],
                              ["--tls-ca", server["ca"], "--tls-cert", str(certs / f"demo-m{i}.pem"),
                               "--tls-key", str(certs / f"demo-m{i}.key")])
            agents.append(stack.client_id(f"m{i}"))
        time.sleep(2)
        assert not (stack.root / "agents" / "x" / "client-id").exists()
        assert "PERMISSION_DENIED" in (stack.root / "agents" / "x" / "agent.out").read_text() or \
            "client certificate belongs to" in "".join(
                p.read_text() for p in (stack.root / "agents" / "x" / "telemetry" / "logs").glob("*.jsonl"))
        stack.ctl("task", "select", task["id"], *agents)
        run = stack.ctl_json("run", "start", task["id"])
        wait_for(lambda: get_run(stack, run["id"]).get("superlink_address"), 120, 0.2)
        address = get_run(stack, run["id"])["superlink_address"]
        run_dir = stack.root / "control" / "runs" / run["id"]
        stranger = _stranger_supernode(tmp_path / "stranger", address, run_dir / "tls" / "ca.pem")
        _only_fleet_api_is_reachable(run["id"], run_dir, address)
        final = wait_finished(stack, run["id"], timeout_s=300)
        assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
        assert all(sorted(r["responded_client_ids"]) == sorted(agents) for r in final["rounds"])
        assert len(stack.ctl_json("models", "list", "--run", run["id"])["models"]) == 2
        stranger_log = (tmp_path / "stranger" / "supernode.log").read_text(errors="replace")
        assert "SuperNode ID" not in stranger_log, stranger_log[-2000:]
        assert "Failed to activate SuperNode" in stranger_log, stranger_log[-2000:]
        link_log = (run_dir / "superlink.log").read_text(errors="replace")
        assert link_log.count("Created node_id=") == 2  # only the run's two agents were admitted
        assert "SuperNode authentication is disabled" not in link_log
    finally:
        if "stranger" in locals():
            from fedops_common.proc import stop_process_group

            stop_process_group(stranger, hard=True)
        stack.stop()


def _only_fleet_api_is_reachable(run_id: str, run_dir: Path, address: str) -> None:
    """The run's public port (bound to every interface) answers the Fleet API only; the SuperLink
    itself, with its Control API, listens on 127.0.0.1 alone."""
    import socket
    import ssl

    import httpx

    from fedops_control.run.launcher import LocalProcessLauncher

    public_port = int(address.rsplit(":", 1)[1])
    local = LocalProcessLauncher().adopt(run_id, run_dir, address)
    assert local is not None
    internal_port = int(local.control_address.rsplit(":", 1)[1])
    assert internal_port != public_port
    # 127.0.0.2 is this host too, but not the address 127.0.0.1 binds: only 0.0.0.0 listeners answer there.
    socket.create_connection(("127.0.0.2", public_port), timeout=5).close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", internal_port), timeout=5).close()
    trust = ssl.create_default_context(cafile=str(run_dir / "tls" / "ca.pem"))
    with httpx.Client(base_url=f"https://{address}", verify=trust, timeout=10) as http:
        for method, path in (("POST", "/v1/control/list-runs"), ("POST", "/v1/control/register-node"),
                             ("POST", "/v1/runtime/get-run"), ("GET", "/health"), ("GET", "/docs")):
            answer = http.request(method, path, content=b"")
            assert answer.status_code == 404 and "only the Fleet API" in answer.text, (path, answer.text)
        # A Fleet call does reach the SuperLink, which refuses it for lack of a node signature.
        fleet = http.post("/v1/fleet/get-run", content=b"", headers={"content-type": "application/protobuf"})
        assert fleet.status_code != 404 and "only the Fleet API" not in fleet.text, fleet.text


def _stranger_supernode(workdir: Path, superlink: str, ca_file: Path) -> subprocess.Popen[bytes]:
    """A SuperNode with a key the run never registered, trusting the run's CA."""
    from fedops_agent.identity import supernode_keypair
    from fedops_common.net import free_port
    from fedops_common.proc import flower_env

    key, _ = supernode_keypair(workdir)
    log = open(workdir / "supernode.log", "wb")
    return subprocess.Popen(
        [
            console_script("flower-supernode"),
            "--root-certificates",
            str(ca_file),
            "--auth-supernode-private-key",
            str(key),
            "--superlink",
            superlink,
            "--port",
            str(free_port()),
            "--max-retries",
            "3",
            "--max-wait-time",
            "20",
        ],
        env=flower_env(workdir / "flwr"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
