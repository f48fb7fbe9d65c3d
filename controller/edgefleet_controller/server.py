"""Build the controller's gRPC server from its dependencies.

``build_server(app, listen)`` returns ``(server, bound_port)`` and does not start it, so tests start real
servers on port 0. Health reports NOT_SERVING until ``serve`` marks it ready, and goes NOT_SERVING again at
the start of a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health

from edgefleet.grpc_server import add_health_and_reflection, set_serving
from edgefleet.v1 import device_pb2, device_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from edgefleet_controller.app import ControllerApp
from edgefleet_controller.interceptor import ControllerInterceptor
from edgefleet_controller.services.device_service import DeviceServicer
from edgefleet_controller.services.fleet_service import FleetServicer

log = structlog.get_logger("edgefleet.controller")

SERVICE_NAMES = [
    device_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name,
    fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name,
]

#: Largest request a client may send. PushBundle streams artifacts in chunks, so nothing legitimate is
#: larger; a bigger message is refused with RESOURCE_EXHAUSTED before it reaches a servicer.
MAX_RECEIVE_BYTES = 8 * 1024 * 1024
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
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
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


def build_server(
    app: ControllerApp, listen: str, *, tls: TlsConfig | None = None
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    interceptor = ControllerInterceptor(app.authenticate, app.map_error, app.metrics)
    server = grpc.aio.server(interceptors=[interceptor], options=server_options())
    device_pb2_grpc.add_DeviceServiceServicer_to_server(DeviceServicer(app), server)
    fleet_pb2_grpc.add_FleetServiceServicer_to_server(FleetServicer(app), server)
    health_servicer = add_health_and_reflection(server, SERVICE_NAMES)
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
    return server, port, health_servicer


async def serve(
    app: ControllerApp,
    listen: str,
    *,
    tls: TlsConfig | None = None,
    metrics_listen: str | None = None,
    grace_s: float = 10.0,
    ready: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT: start, mark SERVING, then on a signal mark NOT_SERVING, drain, stop."""
    server, port, health_servicer = build_server(app, listen, tls=tls)
    await app.start()
    await server.start()
    metrics_port = None
    if metrics_listen:
        host, _, mport = metrics_listen.rpartition(":")
        metrics_port = app.metrics.serve(host or "127.0.0.1", int(mport))
    await set_serving(health_servicer, SERVICE_NAMES, True)
    log.info("controller.serving", port=port, metrics_port=metrics_port, data_dir=str(app.data_dir))
    print(f"edgefleet-controller listening on port {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("controller.draining", grace_s=grace_s, waiting_syncs=app.hub.waiting)
    await set_serving(health_servicer, SERVICE_NAMES, False)
    # Long-polls return at once (unchanged) so devices re-sync elsewhere instead of timing out.
    app.begin_shutdown()
    await server.stop(grace_s)
    await app.stop()
    log.info("controller.stopped")
