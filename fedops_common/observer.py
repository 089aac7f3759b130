"""Client of the control service's ObserverService, used inside Flower's app processes.

Reports are retried with backoff (tenacity): a short control-service restart must not
break a training run.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from fedops_common import runconfig as keys
from fedops_common.grpc_channel import control_channel
from fedops_common.proto import agent_pb2, agent_pb2_grpc, common_pb2
from fedops_common.security import ChannelSecurity, read_secret

CHUNK_BYTES = 1024 * 1024
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def _is_retryable(err: BaseException) -> bool:
    return isinstance(err, grpc.RpcError) and err.code() in _RETRYABLE


_retrying = retry(retry=retry_if_exception(_is_retryable), wait=wait_exponential(0.2, max=5),
                  stop=stop_after_delay(120), reraise=True)


def arrays_to_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise named arrays (an ArrayRecord's content) to NumPy's npz format."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle
    return buf.getvalue()


def npz_to_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`arrays_to_npz`; keeps the key order."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


class ObserverClient:
    """Blocking client for ObserverService."""

    def __init__(self, address: str, security: ChannelSecurity | None = None) -> None:
        self._channel = control_channel(address, security or ChannelSecurity())
        self._stub = agent_pb2_grpc.ObserverServiceStub(self._channel)

    @classmethod
    def from_config(cls, config: Any) -> ObserverClient:
        """A client for the address, credential file and TLS files named in a run or node config."""
        credential = str(config.get(keys.CREDENTIAL_FILE, "") or "")
        security = ChannelSecurity(
            ca_file=str(config.get(keys.TLS_CA_FILE, "") or ""),
            cert_file=str(config.get(keys.TLS_CERT_FILE, "") or ""),
            key_file=str(config.get(keys.TLS_KEY_FILE, "") or ""),
            token=read_secret(Path(credential)) if credential else "",
        )
        return cls(str(config[keys.CONTROL_ADDRESS]), security)

    @_retrying
    def server_event(self, event: agent_pb2.ServerEvent) -> agent_pb2.ServerEventAck:
        """Report a ServerApp-side event; the ack says whether a stop was requested."""
        return self._stub.ReportServerEvent(event, timeout=30)

    @_retrying
    def client_event(self, event: agent_pb2.ClientEvent) -> None:
        """Report a ClientApp-side event."""
        self._stub.ReportClientEvent(event, timeout=30)

    @_retrying
    def upload_model(self, version: common_pb2.ModelVersion, data: bytes) -> common_pb2.ModelVersion:
        """Store a global model version; returns it with id and version number filled in."""

        def chunks() -> Iterator[common_pb2.ModelChunk]:
            yield common_pb2.ModelChunk(version=version, data=data[:CHUNK_BYTES])
            for start in range(CHUNK_BYTES, len(data), CHUNK_BYTES):
                yield common_pb2.ModelChunk(data=data[start:start + CHUNK_BYTES])

        return self._stub.UploadModel(chunks(), timeout=120)

    @_retrying
    def fetch_model(self, model_id: str) -> bytes:
        """Download a stored model version's bytes."""
        request = agent_pb2.FetchModelRequest(model_id=model_id)
        return b"".join(chunk.data for chunk in self._stub.FetchModel(request, timeout=120))

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()
