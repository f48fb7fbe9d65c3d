"""The controller's gRPC transport: server options (message limits, keepalive, pending calls), TLS, the
served service names, and binding the listening port. ``bootstrap.build_server`` puts the servicers on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from edgefleet.contract.request_bounds import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from edgefleet.v1 import device_pb2, fleet_pb2

SERVICE_NAMES = [
    device_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name,
    fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name,
]

#: Largest request a client may send: the largest message ``request_bounds`` admits (PushBundle streams
#: artifacts in chunks, so nothing legitimate is larger); a bigger message is refused with RESOURCE_EXHAUSTED
#: before it is parsed, a smaller one that breaks its type's bound with INVALID_ARGUMENT by the interceptor.
MAX_RECEIVE_BYTES = MAX_REQUEST_BYTES
#: Largest answer the controller sends (the clients' receive limit is the same figure).
MAX_SEND_BYTES = MAX_RESPONSE_BYTES
#: Calls that may wait to be picked up by the event loop during a burst (see ``server_options``).
MAX_PENDING_CALLS = 50_000


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set → clients must present a certificate signed by it (mutual TLS)


def server_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        # Devices behind NAT keep their long-poll alive with pings; allow them.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
        # gRPC core cancels calls that arrive faster than the server picks them up once more than 1000 wait
        # (soft limit, random) or 3000 (hard). A fleet reconnecting after a restart or a link outage sends
        # one Sync per device at once; thousands must queue briefly, not fail with CANCELLED.
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
    ]


def bind(server: grpc.aio.Server, listen: str, tls: TlsConfig | None) -> int:
    """Add the listening port (TLS when ``tls`` is set; mutual TLS with a client CA) and return it."""
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls.key.read_bytes(), tls.cert.read_bytes())],
            root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
            require_client_auth=tls.client_ca is not None,
        )
        port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise OSError(f"could not bind the gRPC server to {listen!r}: address in use or invalid")
    return port
