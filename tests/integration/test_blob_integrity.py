"""The controller verifies a blob before serving it: a blob corrupted on its disk is quarantined (moved aside,
counted, listed by GetBundle), refused with DATA_LOSS instead of streamed, and restored by pushing the bundle
again; an unchanged blob is hashed once, however often and from wherever it is fetched; a device's report of
a digest mismatch makes the controller hash its copy again."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from edgefleet.contract.digests import mismatch_reason
from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import device_pb2, fleet_pb2, telemetry_pb2
from edgefleet_controller.bundles.blob_integrity import REVERIFY_AFTER_S
from edgefleet_testing.controller import (
    Fleet,
    InProcessController,
    bearer,
    connected,
    publish_bundle,
    running_controller,
)

pytestmark = pytest.mark.integration


def hashes(ctrl: InProcessController, result: str) -> float:
    value = ctrl.app.metrics.registry.get_sample_value("edgefleet_blob_verifications_total", {"result": result})
    return value or 0.0


def corrupt(path: Path) -> None:
    """Flip one byte in place (same size), as a failing disk or a stray edit would."""
    os.chmod(path, 0o644)
    with path.open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))


async def setup(c: Fleet, tmp_path: Path) -> tuple[Path, str, str, device_pb2.SyncResponse]:
    key = generate_keypair("pub")
    archive = publish_bundle(tmp_path / "w", key)
    await c.trust(key)
    pushed = await c.push(archive)
    device_id, cred = await c.enroll("site-1", "cam-1")
    await c.fleet.SetDesiredBundle(
        fleet_pb2.SetDesiredBundleRequest(device=device_id, bundle=pushed.bundle.digest), metadata=c.admin
    )
    return archive, device_id, cred, await c.sync(cred)


async def test_corrupt_blob_is_quarantined_refused_and_restored_by_a_push(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        archive, _, cred, synced = await setup(c, tmp_path)
        model = next(a for a in synced.desired.artifacts if a.role == "model")
        good = await c.fetch(cred, model.digest)
        assert len(good) == model.size_bytes
        blob = ctrl.app.bundles.blobs.path(model.digest)
        corrupt(blob)

        for offset in (0, 10, model.size_bytes - 1):  # from the start or resumed: nothing of it is served
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.fetch(cred, model.digest, offset=offset)
            assert info.value.code() == grpc.StatusCode.DATA_LOSS
            details = info.value.details() or ""
            assert model.digest in details and "Push the bundle again" in details, details
        assert not blob.exists()
        assert hashes(ctrl, "corrupt") == 1  # quarantined once; later fetches are refused without hashing
        quarantined = list((ctrl.app.data_dir / "blobs" / "quarantine").glob("*.blob"))
        assert len(quarantined) == 1 and quarantined[0].read_bytes() != good

        detail = await c.fleet.GetBundle(fleet_pb2.GetBundleRequest(ref=synced.desired.bundle_digest), metadata=c.admin)
        [q] = detail.quarantined_blobs
        assert (q.digest, q.role, q.detected_by, q.restored) == (model.digest, "model", "serve", False)
        assert q.actual_digest.startswith("sha256:") and q.actual_digest != model.digest
        assert q.size_bytes == model.size_bytes and q.quarantine_path == str(quarantined[0])

        # The operator pushes the bundle again: good bytes under the name, served again, history kept; the
        # reply names the restored artifact (the bundle itself was already present).
        again = await c.push(archive)
        assert again.created is False and list(again.restored_artifacts) == [model.digest]
        assert model.digest not in again.deduplicated_artifacts
        assert await c.fetch(cred, model.digest) == good
        # The device that was refused gets its desired state again (a new revision, same target and
        # assignment), so it retries now; a push that restores nothing leaves it alone.
        resynced = await c.sync(cred, known_revision=synced.desired.revision)
        assert resynced.changed and resynced.desired.revision == synced.desired.revision + 1
        assert (resynced.desired.bundle_digest, resynced.desired.assignment_id) == (
            synced.desired.bundle_digest,
            synced.desired.assignment_id,
        )
        third = await c.push(archive)  # nothing quarantined any more: nothing restored
        assert list(third.restored_artifacts) == [] and model.digest in third.deduplicated_artifacts
        assert not (await c.sync(cred, known_revision=resynced.desired.revision)).changed
        detail = await c.fleet.GetBundle(fleet_pb2.GetBundleRequest(ref=synced.desired.bundle_digest), metadata=c.admin)
        assert [(b.digest, b.restored) for b in detail.quarantined_blobs] == [(model.digest, True)]
        assert hashes(ctrl, "corrupt") == 1


async def test_an_unchanged_blob_is_hashed_once_and_a_changed_one_again(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        _, _, cred, synced = await setup(c, tmp_path)
        model = next(a for a in synced.desired.artifacts if a.role == "model")
        start = hashes(ctrl, "ok")
        whole = await c.fetch(cred, model.digest)
        assert await c.fetch(cred, model.digest, offset=1000) == whole[1000:]
        assert await c.fetch(cred, model.digest, chunk_bytes=4096) == whole
        assert hashes(ctrl, "ok") == start + 1
        blob = ctrl.app.bundles.blobs.path(model.digest)
        os.utime(blob, ns=(blob.stat().st_atime_ns, blob.stat().st_mtime_ns + 1))  # same bytes, file touched
        assert await c.fetch(cred, model.digest, offset=500) == whole[500:]
        assert hashes(ctrl, "ok") == start + 2


async def test_a_device_mismatch_report_rehashes_and_quarantines_a_corrupt_copy(tmp_path: Path) -> None:
    skew = [0.0]

    def clock() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=skew[0])

    async with running_controller(tmp_path / "data", clock=clock) as ctrl, connected(ctrl) as c:
        _, device_id, cred, synced = await setup(c, tmp_path)
        model = next(a for a in synced.desired.artifacts if a.role == "model")
        await c.fetch(cred, model.digest)
        start = hashes(ctrl, "ok")

        def report(n: int) -> device_pb2.ReportEventRequest:
            reason = f"verification failed: {mismatch_reason('model.onnx', 'sha256:' + 'e' * 64, model.digest)}"
            event = telemetry_pb2.DeviceEvent(
                event_id=f"ev-{n}", kind=telemetry_pb2.DeviceEvent.KIND_UPDATE_STATE, reason=reason
            )
            return device_pb2.ReportEventRequest(events=[event])

        # Moments after it was hashed, an unchanged file is not hashed again: a burst of reports costs nothing.
        await c.device.ReportEvent(report(1), metadata=bearer(cred))
        assert hashes(ctrl, "ok") == start
        # Later, a report makes the controller hash its copy again (the mark does not excuse it); it is fine.
        skew[0] = REVERIFY_AFTER_S + 1
        await c.device.ReportEvent(report(2), metadata=bearer(cred))
        assert hashes(ctrl, "ok") == start + 1
        blob = ctrl.app.bundles.blobs.path(model.digest)
        assert blob.exists()

        # Corrupted since, and no fetch has seen it: the device's report is what finds it.
        corrupt(blob)
        await c.device.ReportEvent(report(3), metadata=bearer(cred))
        assert not blob.exists()
        detail = await c.fleet.GetBundle(fleet_pb2.GetBundleRequest(ref=synced.desired.bundle_digest), metadata=c.admin)
        [q] = detail.quarantined_blobs
        assert q.detected_by == f"device {device_id} reporting a digest mismatch"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.fetch(cred, model.digest)
        assert info.value.code() == grpc.StatusCode.DATA_LOSS


async def test_a_mismatch_report_is_accepted_when_the_controller_cannot_read_its_copy(tmp_path: Path) -> None:
    """The re-check a report triggers is best effort: an unreadable blob (here a directory where the file was,
    as a failing disk can leave) is logged, the events are stored and acknowledged, and the device's next
    events go through — a device's event reporting never sticks on the controller's disk."""
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        _, device_id, cred, synced = await setup(c, tmp_path)
        model = next(a for a in synced.desired.artifacts if a.role == "model")
        blob = ctrl.app.bundles.blobs.path(model.digest)
        blob.unlink()
        blob.mkdir()  # open() fails with IsADirectoryError, even for root
        reason = mismatch_reason("model.onnx", "sha256:" + "e" * 64, model.digest)
        for n in (1, 2):
            event = telemetry_pb2.DeviceEvent(
                event_id=f"ev-{n}", kind=telemetry_pb2.DeviceEvent.KIND_UPDATE_STATE, reason=reason
            )
            reply = await c.device.ReportEvent(device_pb2.ReportEventRequest(events=[event]), metadata=bearer(cred))
            assert reply.accepted == 1
        listed = await c.fleet.ListDeviceEvents(
            fleet_pb2.ListDeviceEventsRequest(device=device_id, limit=10), metadata=c.admin
        )
        assert [e.event_id for e in listed.events] == ["ev-1", "ev-2"]
