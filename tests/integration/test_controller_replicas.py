"""Two controller replicas on one PostgreSQL database: a change made through one wakes a device parked on
the other (LISTEN/NOTIFY), and the other's desired-state cache never answers stale."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from edgefleet.contract.signing import generate_keypair
from edgefleet.grpc_server import set_serving
from edgefleet.v1 import common_pb2, device_pb2, device_pb2_grpc, fleet_pb2
from edgefleet_controller.bootstrap import Controller, build_controller, build_server
from edgefleet_controller.server import SERVICE_NAMES
from edgefleet_testing.controller import Fleet, publish_bundle
from edgefleet_testing.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


@asynccontextmanager
async def replica(data_dir: Path, url: str) -> AsyncIterator[tuple[Controller, str]]:
    app = build_controller(data_dir, store_url=url)
    server, port, health = build_server(app, "127.0.0.1:0")
    await app.start()
    await server.start()
    await set_serving(health, SERVICE_NAMES, True)
    try:
        yield app, f"127.0.0.1:{port}"
    finally:
        app.begin_shutdown()
        await server.stop(1)
        await app.stop()


async def test_a_change_through_one_replica_wakes_a_device_parked_on_another(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811
) -> None:
    async with (
        replica(tmp_path / "a", postgres_url) as (app_a, addr_a),
        replica(tmp_path / "b", postgres_url) as (
            app_b,
            addr_b,
        ),
    ):
        assert app_a.relay is not None and app_b.relay is not None
        admin = (tmp_path / "a" / "admin.token").read_text().strip()  # the first replica made the bootstrap token
        async with grpc.aio.insecure_channel(addr_a) as ch_a, grpc.aio.insecure_channel(addr_b) as ch_b:
            fleet = Fleet(ch_a, admin)
            key = generate_keypair("publisher")
            await fleet.trust(key)
            pushed = await fleet.push(publish_bundle(tmp_path / "bundle", key, version="1.0.0"))
            device_id, credential = await fleet.enroll("lab", "cam-1")
            md = (("authorization", f"Bearer {credential}"),)
            device_b = device_pb2_grpc.DeviceServiceStub(ch_b)
            reported = common_pb2.ReportedState(health=common_pb2.HEALTH_SERVING)

            first = await device_b.Sync(device_pb2.SyncRequest(known_revision=0, reported=reported), metadata=md)
            known = first.desired.revision
            assert first.changed and not first.desired.bundle_digest
            # Warm replica B's cache with the current revision, then park a long-poll on B.
            again = await device_b.Sync(
                device_pb2.SyncRequest(known_revision=0, reported=reported, wait_s=1), metadata=md
            )
            assert again.desired.revision == known

            async def park() -> device_pb2.SyncResponse:
                return await device_b.Sync(
                    device_pb2.SyncRequest(known_revision=known, reported=reported, wait_s=30), metadata=md, timeout=40
                )

            parked = asyncio.create_task(park())
            await asyncio.sleep(0.5)
            assert not parked.done()

            started = time.monotonic()
            await fleet.fleet.SetDesiredBundle(  # through replica A
                fleet_pb2.SetDesiredBundleRequest(device=device_id, bundle=pushed.bundle.digest),
                metadata=fleet.admin,
            )
            woken = await asyncio.wait_for(parked, 10)
            elapsed = time.monotonic() - started
            assert woken.changed and woken.desired.bundle_digest == pushed.bundle.digest, woken
            assert elapsed < 2.0, f"replica B answered {elapsed:.2f} s after the change on A"
            assert app_b.relay.received >= 1

            # B's cache was evicted by the relayed change: a fresh Sync there sees the new revision too.
            fresh = await device_b.Sync(
                device_pb2.SyncRequest(known_revision=known, reported=reported, wait_s=1), metadata=md
            )
            assert fresh.changed and fresh.desired.revision == woken.desired.revision


def test_notify_payloads_fit_and_round_trip() -> None:
    from edgefleet_controller.replicas import MAX_PAYLOAD, parse, payloads

    (small,) = payloads("r1", ["dev_b", "dev_a"])
    assert parse(small) == ("r1", ["dev_a", "dev_b"])
    assert payloads("r1", []) == []
    assert payloads("r1", None) == ["r1|*"]
    many = [f"dev_{i:016x}" for i in range(2000)]
    (too_long,) = payloads("r1", many)
    assert too_long == "r1|*" and len(",".join(many)) > MAX_PAYLOAD
    assert parse(too_long) == ("r1", None)
