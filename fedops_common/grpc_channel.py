"""One way to open a channel to the control service: sane message limits, TLS and token if given."""

from __future__ import annotations

import grpc

from fedops_common.security import (
    ChannelSecurity,
    TokenInterceptor,
    aio_token_interceptors,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
# Servers: gRPC sets SO_REUSEPORT by default on Linux, so a second service started on a port in
# use binds it too and the kernel splits connections between the two. Off, the second one fails
# at start ("Address already in use") instead of answering some of the first one's clients.
SERVER_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]


def control_channel(address: str, security: ChannelSecurity | None = None) -> grpc.Channel:
    """A blocking channel to ``address`` (host:port); ``security`` defaults to the environment's."""
    security = security if security is not None else ChannelSecurity.from_env()
    credentials = security.credentials()
    channel = (grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS) if credentials
               else grpc.insecure_channel(address, options=CHANNEL_OPTIONS))
    metadata = security.metadata()
    return grpc.intercept_channel(channel, TokenInterceptor(metadata)) if metadata else channel


def control_aio_channel(address: str, security: ChannelSecurity | None = None) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` (host:port)."""
    security = security if security is not None else ChannelSecurity.from_env()
    credentials = security.credentials()
    metadata = security.metadata()
    interceptors = aio_token_interceptors(metadata) if metadata else None
    if credentials:
        return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)
