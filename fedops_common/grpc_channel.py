"""One way to open a channel to the control service, with sane message limits."""

from __future__ import annotations

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]


def control_channel(address: str) -> grpc.Channel:
    """A blocking channel to ``address`` (host:port)."""
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def control_aio_channel(address: str) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` (host:port)."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
