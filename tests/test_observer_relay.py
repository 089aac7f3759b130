"""The observer relay (fedops_control/run/observer_relay.py) as a real process in front of a real
control service, without Kubernetes.

The control service serves mutual TLS; the relay serves TLS with a certificate from another CA (on
Kubernetes: the run's SuperLink certificate), holds the run's token and its own client
certificate, and forwards to the service. A ServerApp-side ``ObserverClient`` is built from the
run config a ServerApp pod gets (the relay's address and the CA that verifies it; no credential,
no client certificate). A run held running (tests/apps/hold: its ServerApp waits, sends nothing)
provides the run and its token, as the launcher would hand them to the relay.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedops_common import runconfig as keys
from fedops_common.ca import CA_CERT, CertificateAuthority
from fedops_common.grpc_channel import control_channel
from fedops_common.net import free_port, wait_for_port
from fedops_common.observer import ObserverClient, arrays_to_npz, npz_to_arrays
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
from fedops_control.devstack import LocalStack
from fedops_control.run.launcher import ControlRoute
from tests.test_e2e import get_run, wait_finished, wait_for

pytestmark = pytest.mark.integration  # real processes: control service, agent, SuperLink, relay; no FL round
HOLD_APP = Path(__file__).resolve().parent / "apps" / "hold"
RELAY_MODULE = "fedops_control.run.observer_relay"


@dataclass
class Relayed:
    stack: LocalStack
    run_id: str
    address: str       # the relay's
    relay_ca: Path     # verifies the relay (on Kubernetes: the SuperLink's CA, from a ConfigMap)
    relay: subprocess.Popen[bytes]

    def pod_config(self) -> dict[str, object]:
        """The run config of a ServerApp pod, pointed at this relay instead of superlink:9094."""
        return {keys.RUN_ID: self.run_id, **ControlRoute(address=self.address, ca_file=str(self.relay_ca)).run_config()}


def _events(stack: LocalStack, run_id: str) -> list[tuple[str, str]]:
    """(kind, message) of the finished run's events."""
    lines = stack.ctl("--output", "json", "run", "watch", run_id, check=False).stdout.splitlines()
    return [(event["kind"], event["message"]) for event in map(json.loads, lines)]


def _events_so_far(stack: LocalStack, run_id: str) -> list[tuple[str, str]]:
    """(kind, message) of a running run's events until now (what WatchRun sends within 2 s)."""
    seen: list[tuple[str, str]] = []
    with control_channel(stack.control_address, stack.security()) as channel:
        try:
            for event in control_pb2_grpc.ControlServiceStub(channel).WatchRun(
                    control_pb2.WatchRunRequest(run_id=run_id), timeout=2):
                seen.append((event.kind, event.message))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
    return seen


@pytest.fixture
def relayed(tmp_path: Path, digits_data: list[Path]) -> Iterator[Relayed]:
    certs = tmp_path / "certs"
    operator_ca = CertificateAuthority.create(certs, "test operator CA")
    # As `fedopsctl ca issue --server-host` does: a local ServerApp presents it under mutual TLS.
    server_cert, server_key = operator_ca.issue("control", certs, server_hosts=["127.0.0.1", "localhost"],
                                                client=True)
    operator_cert, operator_key = operator_ca.issue("operator", certs, client=True)
    agent_cert, agent_key = operator_ca.issue("demo-h0", certs, client=True)
    relay_client_cert, relay_client_key = operator_ca.issue("observer-relay", certs, client=True)
    link_ca = CertificateAuthority.create(tmp_path / "link", "test SuperLink CA")
    link_cert, link_key = link_ca.issue("superlink", tmp_path / "link", server_hosts=["127.0.0.1", "superlink"])
    ca = str(certs / CA_CERT)
    stack = LocalStack(tmp_path / "stack",
                       control_args=["--tls-cert", str(server_cert), "--tls-key", str(server_key), "--tls-ca", ca,
                                     "--mtls", "--no-warm-apps"],  # the run's own report: a new process
                       client_tls=ChannelSecurity(ca_file=ca, cert_file=str(operator_cert),
                                                  key_file=str(operator_key)))
    relay = None
    try:
        stack.start_control()
        task = stack.ctl_json("task", "create", "--title", "relay", "--app", str(HOLD_APP), "--min-clients", "1",
                              "--round-timeout", "120")
        stack.start_agent("h0", [task["id"]], digits_data[0],
                          ["--tls-ca", ca, "--tls-cert", str(agent_cert), "--tls-key", str(agent_key)])
        stack.ctl("task", "select", task["id"], stack.client_id("h0"))
        run_id = stack.ctl_json("run", "start", task["id"])["id"]
        # Running, and its ServerApp (holding for 120 s), a local process here, has reported the
        # local way (the run's token file, this service's own certificate under mutual TLS).
        wait_for(lambda: any(kind == "app_started" and message.startswith("ServerApp started")  # a fork or not
                             for kind, message in _events_so_far(stack, run_id)), 120)
        token_file = stack.root / "control" / "runs" / run_id / "run.token"
        port = free_port()
        out = open(tmp_path / "relay.out", "wb")
        relay = subprocess.Popen(
            [sys.executable, "-m", RELAY_MODULE, "--listen", f"127.0.0.1:{port}", "--upstream", stack.control_address,
             "--tls-cert", str(link_cert), "--tls-key", str(link_key), "--upstream-ca", ca,
             "--upstream-cert", str(relay_client_cert), "--upstream-key", str(relay_client_key),
             "--token-file", str(token_file)],
            stdout=out, stderr=subprocess.STDOUT)
        out.close()
        wait_for_port("127.0.0.1", port, 30)
        yield Relayed(stack, run_id, f"127.0.0.1:{port}", tmp_path / "link" / CA_CERT, relay)
    finally:
        if relay is not None:
            relay.terminate()
            relay.wait(timeout=15)
        stack.stop()


def test_a_serverapp_with_the_pods_run_config_reports_through_the_relay(relayed: Relayed) -> None:
    """Unary and both streaming kinds pass; the report is recorded for the run; a report for another
    run is refused by the control service; the caller's own token is replaced by the run's."""
    config = relayed.pod_config()
    assert config[keys.CREDENTIAL_FILE] == config[keys.TLS_CERT_FILE] == config[keys.TLS_KEY_FILE] == ""
    observer = ObserverClient.from_config(config)
    try:
        ack = observer.server_event(agent_pb2.ServerEvent(
            run_id=relayed.run_id, app_started=agent_pb2.AppStarted(flower_run_id="through-relay", warm_fork=True)))
        assert not ack.stop_requested
        # Client streaming (3 chunks of 1 MiB at most) and server streaming, as raw bytes both ways.
        arrays = {"w": np.arange(300_000, dtype=np.float64)}
        data = arrays_to_npz(arrays)
        assert len(data) > 2 * 1024 * 1024
        stored = observer.upload_model(common_pb2.ModelVersion(run_id=relayed.run_id, round=1, format="npz"), data)
        assert stored.id and stored.run_id == relayed.run_id and stored.size_bytes == len(data)
        assert np.array_equal(npz_to_arrays(observer.fetch_model(stored.id))["w"], arrays["w"])
        with pytest.raises(grpc.RpcError) as refused:  # the run's token is valid for its own run only
            observer.server_event(agent_pb2.ServerEvent(run_id="run-000000000000",
                                                        app_started=agent_pb2.AppStarted()))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not report for 'run-000000000000'" in (refused.value.details() or "")
    finally:
        observer.close()
    # A caller's own (bogus) token does not reach the service: the relay sends the run's.
    with control_channel(relayed.address, ChannelSecurity(ca_file=str(relayed.relay_ca), token="fot_bogus")) as ch:
        agent_pb2_grpc.ObserverServiceStub(ch).ReportServerEvent(agent_pb2.ServerEvent(
            run_id=relayed.run_id, app_started=agent_pb2.AppStarted(warm_fork=True)), timeout=30)
    relayed.stack.ctl("run", "stop", "--hard", relayed.run_id)
    wait_finished(relayed.stack, relayed.run_id, timeout_s=60)
    probes = [message for kind, message in _events(relayed.stack, relayed.run_id) if kind == "app_started"]
    # The ServerApp's own report (a new process), then the two sent through the relay.
    assert probes == ["ServerApp started"] + ["ServerApp started (a fork of the warm template)"] * 2, probes


def test_the_relay_forwards_the_observer_service_only(relayed: Relayed) -> None:
    """Any other service, or a method the Observer service does not have, is answered UNIMPLEMENTED
    by the relay itself: the run's token never carries a call elsewhere."""
    security = ChannelSecurity(ca_file=str(relayed.relay_ca))
    with control_channel(relayed.address, security) as channel:
        calls = [
            lambda: control_pb2_grpc.ControlServiceStub(channel).ListTasks(control_pb2.ListTasksRequest(), timeout=10),
            lambda: control_pb2_grpc.ControlServiceStub(channel).StopRun(
                control_pb2.StopRunRequest(run_id=relayed.run_id, mode=control_pb2.STOP_MODE_HARD), timeout=10),
            lambda: access_pb2_grpc.AccessServiceStub(channel).WhoAmI(access_pb2.WhoAmIRequest(), timeout=10),
            lambda: channel.unary_unary("/fedops.v1.ObserverService/NoSuchMethod")(b"", timeout=10),
            lambda: channel.unary_unary("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")(
                b"", timeout=10),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert get_run(relayed.stack, relayed.run_id)["state"] == "RUN_STATE_RUNNING"  # StopRun never got through

