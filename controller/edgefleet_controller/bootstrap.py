"""The controller's composition root: the only place that wires adapters (store, blob directory, hub, feed,
metrics, replica relay) to the services by aggregate (auth, devices, bundles, configs, device events,
rollouts, telemetry), the services to the servicers, and the servicers to the gRPC server.

``build_controller`` assembles a ``Controller`` (its lifecycle: ``start``, ``begin_shutdown``, ``stop``);
``build_server`` returns ``(server, bound_port, health)`` without starting it, so tests start real servers on
port 0; ``serve`` runs one until SIGTERM. Health reports NOT_SERVING until ready, and again at the start of a
graceful shutdown.
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
from edgefleet.v1 import device_pb2_grpc, fleet_pb2_grpc
from edgefleet_controller.auth.revocation import DeviceRevocation
from edgefleet_controller.auth.service import AuthService
from edgefleet_controller.bundles.blob_integrity import BlobIntegrity
from edgefleet_controller.bundles.service import BundleService
from edgefleet_controller.clock import Clock, utcnow
from edgefleet_controller.configs.service import ConfigService
from edgefleet_controller.devices.delivery import DeliveryPieces
from edgefleet_controller.devices.desired import DesiredStates
from edgefleet_controller.devices.directory import DeviceDirectory
from edgefleet_controller.devices.service import DeviceService
from edgefleet_controller.fleet_feed import FleetFeed
from edgefleet_controller.hub import SyncHub
from edgefleet_controller.interceptor import ControllerInterceptor
from edgefleet_controller.metrics import ControllerMetrics
from edgefleet_controller.replicas import ChangeRelay, replica_id
from edgefleet_controller.rollout.configs import StoreConfigTargets
from edgefleet_controller.rollout.reconciler import ReconcilerSettings
from edgefleet_controller.rollout.service import RolloutService
from edgefleet_controller.server import SERVICE_NAMES, TlsConfig, bind, server_options
from edgefleet_controller.servicers.convert import FeedAnnouncer
from edgefleet_controller.servicers.device import DeviceServicer
from edgefleet_controller.servicers.fleet import FleetServicer
from edgefleet_controller.store import BlobStore, Store
from edgefleet_controller.telemetry.device_events import DeviceEventService
from edgefleet_controller.telemetry.service import TelemetryService

log = structlog.get_logger("edgefleet.controller")


@dataclass(eq=False)
class Controller:
    """One controller process: its adapters and its services, started and stopped together."""

    data_dir: Path
    clock: Clock
    store: Store
    hub: SyncHub
    feed: FleetFeed
    metrics: ControllerMetrics
    relay: ChangeRelay | None
    auth: AuthService
    devices: DeviceService
    bundles: BundleService
    configs: ConfigService
    events: DeviceEventService
    rollouts: RolloutService
    telemetry: TelemetryService
    revocation: DeviceRevocation

    async def start(self) -> None:
        await self.auth.write_bootstrap_admin(self.data_dir)
        await self.bundles.remove_abandoned_uploads()
        if self.relay is not None:
            await self.relay.start()
        self.rollouts.start()
        self.telemetry.start()

    def begin_shutdown(self) -> None:
        """Long-polls return at once (unchanged) so devices re-sync elsewhere; watchers are ended."""
        self.devices.begin_shutdown()
        self.hub.notify_all()
        self.feed.close()

    async def stop(self) -> None:
        await self.rollouts.stop()
        await self.telemetry.stop()
        if self.relay is not None:
            await self.relay.stop()
        await asyncio.to_thread(self.store.close)


def build_controller(data_dir: Path, *, clock: Clock = utcnow, store_url: str | None = None) -> Controller:
    """The controller on ``data_dir`` (SQLite there unless ``store_url`` names a database)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(store_url) if store_url else Store.open_data_dir(data_dir)
    blobs = BlobStore(data_dir / "blobs")
    hub = SyncHub()
    feed = FleetFeed()
    metrics = ControllerMetrics()
    holder = replica_id(data_dir)
    relay = ChangeRelay(store.db.engine.url, hub, holder) if store.db.engine.dialect.name == "postgresql" else None

    # A config rollout that completes makes its staged revision live: every device's config is recomputed by
    # the config service, which itself asks the rollout service what is staged (hence built after it).
    async def configs_changed() -> list[str]:
        return await configs.assign_all_configs()

    rollouts = RolloutService(
        store,
        hub,
        clock,
        reconciler=ReconcilerSettings(holder=holder),
        configs=StoreConfigTargets(store, blobs),
        on_configs_changed=configs_changed,
    )
    directory = DeviceDirectory(store.devices)
    desired = DesiredStates(store.desired, DeliveryPieces(store.bundles, blobs), hub)
    auth = AuthService(
        store.enrollment_tokens,
        store.operator_tokens,
        store.trusted_keys,
        store.device_access,
        clock,
        store.credential_generation,
    )
    configs = ConfigService(store.configs, blobs, directory, desired, rollouts, clock)
    announce = FeedAnnouncer(feed)
    devices = DeviceService(
        store.devices, store.bundles, directory, desired, auth, configs, rollouts, announce, clock, store.events
    )
    integrity = BlobIntegrity(blobs, metrics, clock)
    bundles = BundleService(store.bundles, store.devices, blobs, auth, desired, rollouts, metrics, clock, integrity)
    events = DeviceEventService(
        store.events, store.devices, store.bundles, directory, rollouts, feed, clock, integrity, metrics
    )
    telemetry = TelemetryService(store, clock, feed, metrics=metrics)
    metrics.watch_waiting(lambda: hub.waiting)
    metrics.watch_devices(devices.devices_by_state)
    revocation = DeviceRevocation(store.device_access, store.devices, directory, hub, clock)
    services = auth, devices, bundles, configs, events, rollouts, telemetry, revocation
    return Controller(data_dir, clock, store, hub, feed, metrics, relay, *services)


def build_server(
    controller: Controller, listen: str, *, tls: TlsConfig | None = None
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """The gRPC server with both servicers, health and reflection, bound to ``listen``; not started."""
    interceptor = ControllerInterceptor(
        controller.auth.authenticate, controller.metrics, admit_enrollment=controller.auth.admit_enrollment
    )
    server = grpc.aio.server(interceptors=[interceptor], options=server_options())
    c = controller
    devices = DeviceServicer(c.devices, c.bundles, c.events, c.telemetry)
    fleet = FleetServicer(
        c.devices, c.bundles, c.configs, c.auth, c.events, c.rollouts, c.telemetry, c.feed, c.revocation
    )
    device_pb2_grpc.add_DeviceServiceServicer_to_server(devices, server)
    fleet_pb2_grpc.add_FleetServiceServicer_to_server(fleet, server)
    health_servicer = add_health_and_reflection(server, SERVICE_NAMES)
    return server, bind(server, listen, tls), health_servicer


async def serve(
    controller: Controller,
    listen: str,
    *,
    tls: TlsConfig | None = None,
    metrics_listen: str | None = None,
    grace_s: float = 10.0,
    ready: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT: start, mark SERVING, then on a signal mark NOT_SERVING, drain, stop."""
    server, port, health_servicer = build_server(controller, listen, tls=tls)
    await controller.start()
    await server.start()
    metrics_port = None
    if metrics_listen:
        host, _, mport = metrics_listen.rpartition(":")
        metrics_port = controller.metrics.serve(host or "127.0.0.1", int(mport))
    await set_serving(health_servicer, SERVICE_NAMES, True)
    log.info("controller.serving", port=port, metrics_port=metrics_port, data_dir=str(controller.data_dir))
    print(f"edgefleet-controller listening on port {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("controller.draining", grace_s=grace_s, waiting_syncs=controller.hub.waiting)
    await set_serving(health_servicer, SERVICE_NAMES, False)
    controller.begin_shutdown()
    await server.stop(grace_s)
    await controller.stop()
    log.info("controller.stopped")
