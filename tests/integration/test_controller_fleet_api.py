"""The operator-facing API over real gRPC: a stub-less reflection client, WatchFleet, ListDevices filters
and pagination, ListSites, effective-config layering, and the Prometheus endpoint."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import common_pb2, fleet_pb2
from edgefleet_testing.controller import CONFIG_MANIFESTS, bearer, connected, publish_bundle, running_controller
from edgefleet_testing.fakes import MovableClock

pytestmark = pytest.mark.integration


def manifest_files() -> list[fleet_pb2.ManifestFile]:
    files = []
    for root in CONFIG_MANIFESTS:
        paths = sorted(root.rglob("*.yaml")) if root.is_dir() else [root]
        files += [fleet_pb2.ManifestFile(name=str(p), content=p.read_text()) for p in paths]
    return files


def reflect_list_devices(address: str, token: str, site: str) -> list[tuple[str, str, dict[str, str]]]:
    """A generic client: no generated code, only descriptors fetched through server reflection."""
    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName("edgefleet.v1.FleetService").methods_by_name["ListDevices"]
        request_cls: Any = GetMessageClass(method.input_type)
        response_cls: Any = GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        reply = call(request_cls(site=site), metadata=bearer(token), timeout=10)
        assert not isinstance(reply, fleet_pb2.ListDevicesResponse)  # decoded by the reflected class
        assert reply.DESCRIPTOR.file.pool is pool
        return [(d.name, d.site, dict(d.tags)) for d in reply.devices]


async def test_reflection_only_client_lists_devices(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        await c.enroll("site-a", "cam-1", {"line": "1"})
        await c.enroll("site-a", "cam-2")
        await c.enroll("site-b", "cam-3")
        got = await asyncio.to_thread(reflect_list_devices, ctrl.address, c.admin_token, "site-a")
        assert sorted(got) == [("cam-1", "site-a", {"line": "1"}), ("cam-2", "site-a", {})]


async def next_event(call: Any) -> fleet_pb2.FleetEvent:
    event = await asyncio.wait_for(call.read(), 5)
    assert isinstance(event, fleet_pb2.FleetEvent), event
    return event


async def test_watch_fleet_streams_snapshot_enrollment_and_updates(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        old_id, _ = await c.enroll("site-a", "old-cam")
        everything = c.fleet.WatchFleet(fleet_pb2.WatchFleetRequest(snapshot=True), metadata=c.admin)
        only_b = c.fleet.WatchFleet(fleet_pb2.WatchFleetRequest(site="site-b"), metadata=c.admin)
        await asyncio.wait_for(everything.initial_metadata(), 5)  # subscribed from here on
        await asyncio.wait_for(only_b.initial_metadata(), 5)
        snap = await next_event(everything)
        assert snap.kind == fleet_pb2.FleetEvent.KIND_SNAPSHOT and snap.device.id == old_id

        new_id, cred = await c.enroll("site-b", "new-cam", {"camera": "thermal"})
        enrolled = await next_event(everything)
        assert enrolled.kind == fleet_pb2.FleetEvent.KIND_ENROLLED
        assert (enrolled.device.id, enrolled.device.site, dict(enrolled.device.tags)) == (
            new_id,
            "site-b",
            {"camera": "thermal"},
        )
        await c.sync(cred, reported=common_pb2.ReportedState(health=common_pb2.HEALTH_DEGRADED))
        updated = await next_event(everything)
        assert updated.kind == fleet_pb2.FleetEvent.KIND_UPDATED
        assert updated.device.id == new_id and updated.device.health == common_pb2.HEALTH_DEGRADED
        # The site-filtered watcher saw the site-b changes only (no snapshot asked for).
        await c.enroll("site-a", "other-cam")
        kinds = [(await next_event(only_b)).kind for _ in range(2)]
        assert kinds == [fleet_pb2.FleetEvent.KIND_ENROLLED, fleet_pb2.FleetEvent.KIND_UPDATED]
        assert ctrl.app.feed.watchers == 2
        everything.cancel()
        only_b.cancel()


async def test_list_devices_filters_pagination_and_sites(tmp_path: Path) -> None:
    clock = MovableClock()
    key = generate_keypair("pub")
    archive = publish_bundle(tmp_path / "w", key)
    async with running_controller(tmp_path / "data", clock=clock) as ctrl, connected(ctrl) as c:
        await c.trust(key)
        bundle = (await c.push(archive)).bundle
        creds: dict[str, str] = {}
        for i in range(7):
            site = "north" if i < 4 else "south"
            tags = {"camera": "thermal" if i % 2 else "rgb", "line": str(i % 3)}
            _, creds[f"cam-{i}"] = await c.enroll(site, f"cam-{i}", tags)
        t_early = clock.now
        for i in range(7):
            reported = common_pb2.ReportedState(
                health=common_pb2.HEALTH_SERVING if i != 3 else common_pb2.HEALTH_FAILING,
                running_bundle_digest=bundle.digest if i in (1, 5) else "",
            )
            if i == 6:
                clock.now = t_early + timedelta(seconds=60)
            await c.sync(creds[f"cam-{i}"], reported=reported)

        async def names(**kw: Any) -> list[str]:
            reply = await c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(**kw), metadata=c.admin)
            return sorted(d.name for d in reply.devices)

        assert await names(site="north") == ["cam-0", "cam-1", "cam-2", "cam-3"]
        assert await names(tags=["camera=thermal"]) == ["cam-1", "cam-3", "cam-5"]
        assert await names(tags=["camera=thermal", "line=1"]) == ["cam-1"]
        assert await names(site="south", tags=["camera=rgb"]) == ["cam-4", "cam-6"]
        assert await names(bundle="classifier@1.0.0") == ["cam-1", "cam-5"]
        assert await names(bundle=bundle.digest, site="south") == ["cam-5"]
        assert await names(health=common_pb2.HEALTH_FAILING) == ["cam-3"]
        since = Timestamp()
        since.FromDatetime(t_early + timedelta(seconds=30))
        assert await names(seen_since=since) == ["cam-6"]
        # Two minutes without a Sync: shown offline.
        clock.now = t_early + timedelta(seconds=150)
        assert await names(health=common_pb2.HEALTH_OFFLINE) == [f"cam-{i}" for i in range(6)]

        seen: list[str] = []
        request = fleet_pb2.ListDevicesRequest(page_size=3)
        pages = 0
        while pages < 10:
            reply = await c.fleet.ListDevices(request, metadata=c.admin)
            pages += 1
            assert len(reply.devices) <= 3
            seen += [d.name for d in reply.devices]
            if not reply.next_page_token:
                break
            request.page_token = reply.next_page_token
        assert pages == 3 and sorted(seen) == [f"cam-{i}" for i in range(7)] and len(set(seen)) == 7
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(tags=["camera"]), metadata=c.admin)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'camera'" in (bad.value.details() or "")

        sites = {s.site: s for s in (await c.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=c.admin)).sites}
        assert sorted(sites) == ["north", "south"]
        assert sites["north"].devices == 4 and sites["south"].devices == 3
        assert dict(sites["north"].by_bundle) == {"classifier@1.0.0": 1, "none": 3}
        assert dict(sites["north"].by_health) == {"serving": 3, "failing": 1}
        assert dict(sites["south"].by_bundle) == {"classifier@1.0.0": 1, "none": 2}


async def test_effective_config_layers_through_the_api(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        dock_id, dock_cred = await c.enroll("warehouse-a", "wa-dock-door-3", {"camera": "thermal"})
        first = await c.sync(dock_cred)
        applied = await c.fleet.ApplyConfig(fleet_pb2.ApplyConfigRequest(files=manifest_files()), metadata=c.admin)
        assert applied.devices_changed == 1
        assert any(r.startswith("FleetConfig/default created") for r in applied.results)
        pi_id, _ = await c.enroll("farm-b", "pi-1")

        dock = await c.fleet.GetEffectiveConfig(fleet_pb2.GetEffectiveConfigRequest(device=dock_id), metadata=c.admin)
        cfg = json.loads(dock.config_json)
        assert list(dock.sources) == [
            "defaults",
            "FleetConfig/default",
            "SiteConfig/warehouse-a",
            "DeviceConfig/thermal-cameras",
            "DeviceConfig/dock-door-3",
        ], dock.sources
        assert cfg["sla"]["latency_ms"] == 50  # site over fleet (80)
        assert cfg["sla"]["thermal_buffer"] == 0.25  # device over site (0.1)
        assert cfg["inference"]["conf_threshold"] == 0.35  # tag selector over fleet (0.5)
        assert cfg["inference"]["fp16"] is False and cfg["inference"]["precision"] == "fp32"
        assert cfg["inference"]["providers"] == ["tensorrt", "cuda", "cpu"]  # fleet, untouched

        pi = await c.fleet.GetEffectiveConfig(fleet_pb2.GetEffectiveConfigRequest(device=pi_id), metadata=c.admin)
        pi_cfg = json.loads(pi.config_json)
        assert list(pi.sources) == ["defaults", "FleetConfig/default", "SiteConfig/farm-b"]
        assert pi_cfg["inference"]["providers"] == ["cpu"] and pi_cfg["sla"]["latency_ms"] == 250
        assert pi_cfg["inference"]["conf_threshold"] == 0.5

        # The device's desired state now carries that config, digest-equal to what the API shows.
        synced = await c.sync(dock_cred, known_revision=first.desired.revision)
        assert synced.changed and synced.desired.config_digest == dock.digest
        assert json.loads(synced.desired.config_json) == cfg
        assert (await c.fetch(dock_cred, dock.digest)) == synced.desired.config_json

        # Applying the same documents again changes nobody.
        again = await c.fleet.ApplyConfig(fleet_pb2.ApplyConfigRequest(files=manifest_files()), metadata=c.admin)
        assert again.devices_changed == 0
        assert all(r.endswith("unchanged") for r in again.results)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


async def test_prometheus_metrics(tmp_path: Path) -> None:
    key = generate_keypair("pub")
    archive = publish_bundle(tmp_path / "w", key)
    async with running_controller(tmp_path / "data", metrics=True) as ctrl, connected(ctrl) as c:
        assert ctrl.metrics_port and ctrl.metrics_port != ctrl.port
        await c.trust(key)
        await c.push(archive)
        device_id, cred = await c.enroll("north", "cam-1")
        await c.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(device=device_id, bundle="classifier@1.0.0"), metadata=c.admin
        )
        synced = await c.sync(cred)
        model = next(a for a in synced.desired.artifacts if a.role == "model")
        await c.fetch(cred, model.digest)
        waiting = asyncio.ensure_future(c.sync(cred, known_revision=synced.desired.revision, wait_s=5))
        await asyncio.sleep(0.3)
        text = await asyncio.to_thread(scrape, ctrl.metrics_port)
        ctrl.app.hub.notify_all()
        await waiting

    def value(pattern: str) -> float:
        match = re.search(pattern + r" ([0-9.e+]+)$", text, re.MULTILINE)
        assert match, (pattern, text)
        return float(match.group(1))

    assert value(r"^edgefleet_waiting_syncs") == 1
    assert value(r"^edgefleet_blob_bytes_served_total") == model.size_bytes
    assert value(r'^edgefleet_rpc_seconds_count\{code="OK",method="Sync"\}') >= 1
    assert value(r'^edgefleet_rpc_seconds_count\{code="OK",method="PushBundle"\}') == 1
    assert value(r'^edgefleet_devices\{health="serving",site="north"\}') == 1
