"""How a caller reaches the control service securely: TLS (optionally mutual) and a bearer token.

One dataclass read from flags or environment variables, used by every actor (CLI, dashboard,
agent, the observers inside Flower's apps) so they all connect the same way.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

ENV_TOKEN = "FEDOPS_TOKEN"
ENV_TOKEN_FILE = "FEDOPS_TOKEN_FILE"
ENV_TLS_CA = "FEDOPS_TLS_CA"
ENV_TLS_CERT = "FEDOPS_TLS_CERT"
ENV_TLS_KEY = "FEDOPS_TLS_KEY"
AUTHORIZATION = "authorization"
# SuperLinks and agents on other hosts dial the control service by name; a certificate issued by
# `fedopsctl ca issue server` names these hosts unless told otherwise.
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")
# Where `fedops-control` (default --data-dir) leaves the bootstrap admin token. fedopsctl and
# fedops-dash use it when no token is given, so a local try-out needs no token handling.
LOCAL_ADMIN_TOKEN = Path(".fedops/control/admin.token")


def default_token_file(token: str | None, token_file: str | None) -> str | None:
    """The token file to use: the one given, else the local admin token when present and no token was given."""
    if token_file or token or not LOCAL_ADMIN_TOKEN.is_file():
        return token_file
    return str(LOCAL_ADMIN_TOKEN)


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS files (PEM) and the bearer token a caller presents; empty fields mean 'not used'."""

    ca_file: str = ""     # verify the server against this CA (turns TLS on)
    cert_file: str = ""   # client certificate for mutual TLS
    key_file: str = ""
    token: str = ""

    @classmethod
    def from_env(cls, **overrides: str | None) -> ChannelSecurity:
        """Flags (``overrides``, None = not given) over FEDOPS_TLS_* / FEDOPS_TOKEN(_FILE) variables."""
        values = {
            "ca_file": os.environ.get(ENV_TLS_CA, ""),
            "cert_file": os.environ.get(ENV_TLS_CERT, ""),
            "key_file": os.environ.get(ENV_TLS_KEY, ""),
            "token": os.environ.get(ENV_TOKEN, ""),
        }
        token_file = overrides.pop("token_file", None) or os.environ.get(ENV_TOKEN_FILE, "")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values["token"] and token_file:
            values["token"] = read_secret(Path(token_file))
        return cls(**values)

    def check(self) -> None:
        """Raise ValueError naming the option when a file is missing or a pair is incomplete."""
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"{name.replace('_', '-')}: no such file {path!r}")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("tls-cert and tls-key go together (mutual TLS)")
        if self.cert_file and not self.ca_file:
            raise ValueError("tls-ca is required with a client certificate")

    def credentials(self) -> grpc.ChannelCredentials | None:
        """Channel credentials, or None for a plaintext channel."""
        if not self.ca_file:
            return None
        key = Path(self.key_file).read_bytes() if self.key_file else None
        chain = Path(self.cert_file).read_bytes() if self.cert_file else None
        return grpc.ssl_channel_credentials(Path(self.ca_file).read_bytes(), key, chain)

    def metadata(self) -> list[tuple[str, str]]:
        """Call metadata carrying the token."""
        return [(AUTHORIZATION, f"Bearer {self.token}")] if self.token else []


def read_secret(path: Path) -> str:
    """A token from a file (surrounding whitespace dropped)."""
    return path.read_text(encoding="utf-8").strip()


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only (keys, tokens), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    partial.replace(path)


def write_secret(path: Path, secret: str) -> None:
    """Write a token readable by its owner only, atomically."""
    write_private(path, (secret + "\n").encode("utf-8"))


def token_digest(secret: str) -> str:
    """SHA-256 of a token: how the control service stores it and agents remember used ones."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _with_metadata(details: Any, extra: list[tuple[str, str]], factory: Callable[..., Any]) -> Any:
    metadata: Any = list(details.metadata or []) + extra
    if factory is _Details:  # the blocking API's details also carry compression
        return factory(details.method, details.timeout, metadata, details.credentials,
                       getattr(details, "wait_for_ready", None), getattr(details, "compression", None))
    # asyncio streaming calls drop metadata given as a plain list: it must be a Metadata object.
    return factory(details.method, details.timeout, grpc.aio.Metadata(*metadata), details.credentials,
                   details.wait_for_ready)


class _Details(grpc.ClientCallDetails):
    def __init__(self, method: str, timeout: Any, metadata: Any, credentials: Any, wait_for_ready: Any,
                 compression: Any) -> None:
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


class TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                       grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the bearer token to every call of a blocking channel (plaintext channels included)."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = metadata

    def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_metadata(details, self._metadata, _Details), request)

    intercept_unary_unary = intercept_unary_stream = _call
    intercept_stream_unary = intercept_stream_stream = _call


class _AioToken:
    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = metadata

    async def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(details, self._metadata, grpc.aio.ClientCallDetails), request)


# grpc.aio files each interceptor under the first call kind it matches, so one class per kind.
class _AioUnaryUnary(_AioToken, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _AioToken._call


class _AioUnaryStream(_AioToken, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _AioToken._call


class _AioStreamUnary(_AioToken, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _AioToken._call


class _AioStreamStream(_AioToken, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _AioToken._call


def aio_token_interceptors(metadata: list[tuple[str, str]]) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding the token to every call of an asyncio channel (plaintext channels included)."""
    return [kind(metadata) for kind in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)]
