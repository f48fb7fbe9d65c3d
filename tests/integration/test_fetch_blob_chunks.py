"""The controller's FetchBlob honours the chunk size a device asks for (its adaptive fetcher shrinks and grows
it) within request_bounds' range: 0 means 1 MiB, 4 KiB..4 MiB is sent as asked, anything else is refused with
INVALID_ARGUMENT naming the bound (and the next request in range is served)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import device_pb2, device_pb2_grpc, fleet_pb2
from edgefleet_controller.bundles.service import DEFAULT_CHUNK, MAX_CHUNK, MIN_CHUNK
from edgefleet_testing.controller import bearer, connected, publish_bundle, running_controller

pytestmark = pytest.mark.integration


async def test_fetch_blob_sends_the_requested_chunk_size_within_bounds(tmp_path: Path) -> None:
    key = generate_keypair("publisher-a")
    size = 9 << 20
    archive = publish_bundle(tmp_path / "work", key, extra={"payload": os.urandom(size)})
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        await c.trust(key)
        pushed = await c.push(archive)
        device_id, cred = await c.enroll("site-1", "cam-1")
        await c.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(device=device_id, bundle=pushed.bundle.digest), metadata=c.admin
        )
        synced = await c.sync(cred)
        payload = next(a for a in synced.desired.artifacts if a.role == "payload")

        # As the device's channel does: a 4 MiB chunk plus its framing exceeds gRPC's default 4 MiB limit.
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{ctrl.port}", options=[("grpc.max_receive_message_length", 16 << 20)]
        )
        device = device_pb2_grpc.DeviceServiceStub(channel)

        async def sizes(chunk_bytes: int, offset: int = 0) -> list[int]:
            call = device.FetchBlob(
                device_pb2.FetchBlobRequest(digest=payload.digest, offset=offset, chunk_bytes=chunk_bytes),
                metadata=bearer(cred),
                timeout=60,
            )
            return [len(chunk.data) async for chunk in call]

        asked = 32 << 10
        got = await sizes(asked, offset=size - 5 * asked - 100)
        assert got == [asked] * 5 + [100], "the requested size, the tail as it is"
        for outside in (1, MIN_CHUNK - 1, MAX_CHUNK + 1, 64 << 20):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await sizes(outside)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "FetchBlobRequest.chunk_bytes" in (info.value.details() or "")
            assert f"[{MIN_CHUNK}, {MAX_CHUNK}]" in (info.value.details() or "")
        assert set(await sizes(MIN_CHUNK, offset=size - 3 * MIN_CHUNK)) == {MIN_CHUNK}
        assert (await sizes(MAX_CHUNK))[:2] == [MAX_CHUNK, MAX_CHUNK]
        assert (await sizes(0))[0] == DEFAULT_CHUNK
        await channel.close()
