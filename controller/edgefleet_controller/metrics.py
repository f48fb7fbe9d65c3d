"""Prometheus metrics of one controller, on a registry of its own (several controllers can share a
process in tests) and served on a separate port from gRPC."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _DevicesByState(Collector):
    def __init__(self, source: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self._source = source

    def collect(self):  # type: ignore[no-untyped-def]
        family = GaugeMetricFamily("edgefleet_devices", "Devices by site and health", labels=["site", "health"])
        for (site, health), count in sorted(self._source().items()):
            family.add_metric([site, health], count)
        yield family


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc_seconds = Histogram(
            "edgefleet_rpc_seconds",
            "RPC handling time by method and status code",
            ["method", "code"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 120, 300),
        )
        self.waiting_syncs = Gauge("edgefleet_waiting_syncs", "Sync long-polls currently held", registry=self.registry)
        self.blob_bytes_served = Counter(
            "edgefleet_blob_bytes_served", "Artifact bytes streamed by FetchBlob", registry=self.registry
        )
        self.blob_verifications = Counter(
            "edgefleet_blob_verifications",
            "Full hashes of a stored blob before serving it or on a device's mismatch report, by result",
            ["result"],
            registry=self.registry,
        )
        self.blobs_quarantined = Counter(
            "edgefleet_blobs_quarantined",
            "Blobs found not hashing to their digest on the controller's disk and moved aside",
            registry=self.registry,
        )
        self.bundles_pushed = Counter(
            "edgefleet_bundles_pushed", "Bundles accepted by PushBundle", registry=self.registry
        )
        self.bundles_rejected = Counter(
            "edgefleet_bundles_rejected", "Bundles refused by PushBundle", ["reason"], registry=self.registry
        )
        self.profiles_refused = Counter(
            "edgefleet_profiles_refused",
            "Latency profiles devices reported that were not recorded for admission, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.telemetry_windows_refused = Counter(
            "edgefleet_telemetry_windows_refused",
            "Uploaded telemetry windows acknowledged but not stored, by reason (bundle_digest: a bundle the "
            "device is neither assigned nor reports holding)",
            ["reason"],
            registry=self.registry,
        )
        self.telemetry_skipped_records = Counter(
            "edgefleet_telemetry_skipped_records",
            "Stored telemetry windows QueryTelemetry skipped as malformed (written by an older controller)",
            registry=self.registry,
        )

    def watch_waiting(self, read: Callable[[], int]) -> None:
        self.waiting_syncs.set_function(lambda: float(read()))

    def watch_devices(self, read: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self.registry.register(_DevicesByState(read))

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0 = any free port); return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
