"""The gRPC link to the controller: channel options (keepalive, reconnect backoff), the credential metadata,
and which status codes count as transient.

Decisions:

- Keepalive pings every 15 s (the controller permits one per 10 s) with a 5 s timeout, also without calls,
  so a dead NAT mapping or a blackholed link is noticed within ~20 s instead of at the next TCP timeout.
- gRPC's own reconnect backoff is capped at 5 s: the agent's retry policy (tenacity, full jitter) decides
  how often to try; the channel only must not sit in a 2-minute backoff when the link is back.
- Transient = UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, CANCELLED (a reset stream), and
  INTERNAL/UNKNOWN when the details say the stream or connection was reset. Everything else
  (UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, INVALID_ARGUMENT, …) is not retried blindly.
"""

from __future__ import annotations

from typing import Any

import grpc

from edgefleet.contract.request_bounds import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from edgefleet.v1 import device_pb2_grpc

KEEPALIVE_TIME_MS = 15_000
KEEPALIVE_TIMEOUT_MS = 5_000
MAX_RECONNECT_BACKOFF_MS = 5_000

_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
_RESET_HINTS = ("reset", "rst_stream", "goaway", "connection", "socket closed", "eof", "broken pipe")

ChannelOptions = list[tuple[str, int]]


def channel_options() -> ChannelOptions:
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.min_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        # the controller's limits (request_bounds): what it may answer, what it accepts
        ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
        ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
    ]


def is_transient(exc: BaseException) -> bool:
    """Whether a failed call is worth retrying as is (link trouble, overload), not a refusal."""
    if not isinstance(exc, grpc.RpcError):
        return False
    code = exc.code() if hasattr(exc, "code") else None
    if code in _TRANSIENT:
        return True
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        return any(hint in details.lower() for hint in _RESET_HINTS)
    return False


def rpc_code(exc: BaseException) -> grpc.StatusCode | None:
    code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
    return code if isinstance(code, grpc.StatusCode) else None


def bearer(credential: str) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying a device credential (``edc_<id>.<secret>``)."""
    return (("authorization", f"Bearer {credential}"),)


_tls: grpc.ChannelCredentials | None = None


def use_tls(ca: bytes | None, client_cert: bytes | None = None, client_key: bytes | None = None) -> None:
    """Make every channel to the controller TLS (the entry point calls this once, from its flags).

    ``ca`` verifies the controller's certificate (None: the system roots); a client certificate and key
    answer a controller that requires mutual TLS."""
    global _tls
    _tls = grpc.ssl_channel_credentials(ca, client_key, client_cert)


def _open(address: str, options: list[tuple[str, int]], *, aio: bool) -> Any:
    if aio:
        return (
            grpc.aio.secure_channel(address, _tls, options=options)
            if _tls is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
    return (
        grpc.secure_channel(address, _tls, options=options)
        if _tls is not None
        else grpc.insecure_channel(address, options=options)
    )


class ControllerLink:
    """One asyncio channel to the controller plus the device stub; ``metadata`` once enrolled."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel: grpc.aio.Channel = _open(address, channel_options(), aio=True)
        self.device = device_pb2_grpc.DeviceServiceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = ()

    def authenticate(self, credential: str) -> None:
        self.metadata = bearer(credential)

    async def close(self) -> None:
        await self.channel.close(grace=None)


def blocking_channel(address: str) -> grpc.Channel:
    """A synchronous channel for the download worker thread (the update driver is synchronous).

    BDP probing is off: it grows the HTTP/2 receive window to megabytes, and everything buffered ahead of
    the reader is lost on a reset. With the default 64 KiB window a drop costs at most the chunk in flight
    plus that window, which is what makes "bytes fetched again <= one chunk per reset" hold. Its own
    subchannel pool: a channel opened after a lost connection makes a new connection, never reuses the dead one.
    """
    options = [*channel_options(), ("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)]
    channel: grpc.Channel = _open(address, options, aio=False)
    return channel
