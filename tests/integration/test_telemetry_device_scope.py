"""Over real gRPC and SQLite: review samples are identified by (device, sample id), so a device reusing another
device's id can neither label, overwrite nor hide that device's sample; and the admin DeleteTelemetry removes
one device's stored records in a range (a malformed window an older version stored among them), refuses
viewers, operators and bad ranges with nothing deleted, and leaves every other device's answers as they were."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.v1 import fleet_pb2
from edgefleet.v1.telemetry_pb2 import ReviewSample, TelemetryBatch, TelemetryRecord
from edgefleet_controller.store import schema as t
from edgefleet_testing.controller import Fleet, bearer, connected, running_controller
from tests.integration.test_telemetry_hostile import BUNDLE, T0, answers, good_window, seeded, snapshot, upload

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Code = grpc.StatusCode


def review_batch(epoch: str, seq: int, sample_id: str, offset_s: int = 0) -> TelemetryBatch:
    sample = ReviewSample(sample_id=sample_id, bundle_digest=BUNDLE, reason="sampled", jpeg=b"\xff\xd8x")
    sample.captured_at.FromDatetime(T0 + timedelta(seconds=offset_s))
    return TelemetryBatch(epoch=epoch, first_seq=seq, last_seq=seq, records=[TelemetryRecord(seq=seq, review=sample)])


async def refused(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, (info.value.code(), info.value.details())
    return info.value.details() or ""


async def samples(c: Fleet, device: str = "", sample_id: str = "") -> list[tuple[str, str, str]]:
    request = fleet_pb2.ListReviewSamplesRequest(device=device, sample_id=sample_id)
    reply = await c.fleet.ListReviewSamples(request, metadata=c.admin)
    return sorted((s.device_id, s.sample_id, s.label) for s in reply.samples)


async def test_two_devices_with_one_sample_id_each_keep_their_own_sample(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as c:
        a, cred_a = await c.enroll("lab", "cam-a")
        b, cred_b = await c.enroll("yard", "cam-b")
        await upload(ctrl.address, cred_a, [review_batch("ep", 1, "s1")])
        await upload(ctrl.address, cred_b, [review_batch("ep", 1, "s1", offset_s=5)])
        assert await samples(c) == sorted([(a, "s1", ""), (b, "s1", "")])
        _, operator = await c.operator_token("operator")
        _, viewer = await c.operator_token("viewer")

        # an id alone is refused while two devices have it, naming both; nothing is labelled
        label = fleet_pb2.LabelReviewSampleRequest
        details = await refused(
            c.fleet.LabelReviewSample(label(sample_id="s1", label="fp"), metadata=bearer(operator)),
            Code.INVALID_ARGUMENT,
        )
        assert "ambiguous" in details and f"'cam-a' ({a})" in details and f"'cam-b' ({b})" in details, details
        assert await samples(c) == sorted([(a, "s1", ""), (b, "s1", "")])

        # device + id labels that device's sample only (by name or by id)
        info = await c.fleet.LabelReviewSample(
            label(sample_id="s1", label="fp", device="cam-a"), metadata=bearer(operator)
        )
        assert (info.device_id, info.sample_id, info.label) == (a, "s1", "fp")
        assert await samples(c, device="cam-b") == [(b, "s1", "")]
        await c.fleet.LabelReviewSample(label(sample_id="s1", label="tp", device=b), metadata=bearer(operator))
        assert await samples(c, sample_id="s1") == sorted([(a, "s1", "fp"), (b, "s1", "tp")])
        # the FP-rate table follows the device filter as the samples do
        rates = {
            device: dict(
                (
                    await c.fleet.ListReviewSamples(fleet_pb2.ListReviewSamplesRequest(device=device), metadata=c.admin)
                ).fp_rate
            )
            for device in ("", "cam-a", b)
        }
        assert rates == {
            "": {f"lab/{BUNDLE}": 1.0, f"yard/{BUNDLE}": 0.0},
            "cam-a": {f"lab/{BUNDLE}": 1.0},
            b: {f"yard/{BUNDLE}": 0.0},
        }

        # cam-b sending "s1" again (a new epoch after a reset) replaces neither its sample nor cam-a's
        await upload(ctrl.address, cred_b, [review_batch("ep2", 1, "s1", offset_s=60)])
        assert await samples(c) == sorted([(a, "s1", "fp"), (b, "s1", "tp")])

        details = await refused(
            c.fleet.LabelReviewSample(label(sample_id="s1", label="tp", device="cam-nope"), metadata=c.admin),
            Code.NOT_FOUND,
        )
        assert "'fleetctl get devices'" in details, details
        await refused(
            c.fleet.LabelReviewSample(label(sample_id="s1", label="tp", device="cam-a"), metadata=bearer(viewer)),
            Code.PERMISSION_DENIED,
        )
        # devices cannot label at all, their own sample or another's
        await refused(
            c.fleet.LabelReviewSample(label(sample_id="s1", label="tp", device="cam-a"), metadata=bearer(cred_b)),
            Code.PERMISSION_DENIED,
        )
        assert await samples(c) == sorted([(a, "s1", "fp"), (b, "s1", "tp")])


def ts(offset: timedelta) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(T0 + offset)
    return out


def table_rows(engine: sa.Engine) -> list[list[Any]]:
    with engine.connect() as conn:
        reviews = sorted(map(repr, conn.execute(sa.select(t.review_samples)).all()))
    return [*snapshot(engine), reviews]


async def test_delete_telemetry_removes_one_devices_range_and_nothing_else(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as c:
        ids = await seeded(c, ctrl.address)  # cam-good, cam-other, cam-bad: five windows each from T0
        bad_id, engine = ids["id:cam-bad"], ctrl.app.store.db.engine
        await upload(ctrl.address, ids["cam-bad"], [review_batch("ep-r", 1, "r1")])
        w = t.telemetry_windows
        with engine.begin() as conn:  # a window with no sketch, as a controller before the bounds stored it
            row = dict(conn.execute(sa.select(w).where(w.c.device_id == bad_id).limit(1)).mappings().one())
            del row["id"]
            conn.execute(w.insert(), [row | {"epoch": "old", "seq": 100, "latency_e2e": b""}])
        fleet = fleet_pb2.QueryTelemetryRequest(group_by="site")
        assert (await c.fleet.QueryTelemetry(fleet, metadata=c.admin)).skipped_records == 1
        others, stored = (await answers(c))[3:], table_rows(engine)

        request = fleet_pb2.DeleteTelemetryRequest
        whole = request(device="cam-bad", since=ts(timedelta(0)), until=ts(timedelta(hours=1)))
        for role in ("viewer", "operator"):
            _, token = await c.operator_token(role)
            await refused(c.fleet.DeleteTelemetry(whole, metadata=bearer(token)), Code.PERMISSION_DENIED)
        await refused(c.fleet.DeleteTelemetry(whole, metadata=bearer(ids["cam-bad"])), Code.PERMISSION_DENIED)
        far = Timestamp(seconds=10**12)
        for bad, code in (
            (request(device="cam-bad", since=ts(timedelta(hours=1)), until=ts(timedelta(0))), Code.INVALID_ARGUMENT),
            (request(device="cam-bad", since=ts(timedelta(0)), until=ts(timedelta(0))), Code.INVALID_ARGUMENT),
            (request(device="cam-bad", since=ts(timedelta(0))), Code.INVALID_ARGUMENT),
            (request(device="cam-bad", until=ts(timedelta(hours=1))), Code.INVALID_ARGUMENT),
            (request(since=ts(timedelta(0)), until=ts(timedelta(hours=1))), Code.INVALID_ARGUMENT),
            (request(device="cam-bad", since=ts(timedelta(0)), until=far), Code.INVALID_ARGUMENT),
            (request(device="cam-nope", since=ts(timedelta(0)), until=ts(timedelta(hours=1))), Code.NOT_FOUND),
        ):
            details = await refused(c.fleet.DeleteTelemetry(bad, metadata=c.admin), code)
            assert len(details) < 400, details
        assert table_rows(engine) == stored

        reply = await c.fleet.DeleteTelemetry(whole, metadata=c.admin)
        assert (reply.device_id, reply.windows, reply.events, reply.review_samples) == (bad_id, 6, 0, 1)
        after = await c.fleet.QueryTelemetry(fleet, metadata=c.admin)
        assert after.skipped_records == 0
        mine = await c.fleet.QueryTelemetry(fleet_pb2.QueryTelemetryRequest(device="cam-bad"), metadata=c.admin)
        assert list(mine.rows) == []
        assert (await answers(c))[3:] == others  # cam-good's and the yard's answers did not move
        assert await samples(c) == []
        again = await c.fleet.DeleteTelemetry(whole, metadata=c.admin)
        assert (again.windows, again.events, again.review_samples) == (0, 0, 0)

        # the device is not wedged: its next window is stored and counted (its delivery mark was kept)
        await upload(
            ctrl.address,
            ids["cam-bad"],
            [
                TelemetryBatch(
                    epoch="ep", first_seq=6, last_seq=6, records=[TelemetryRecord(seq=6, metrics=good_window(40.0, T0))]
                )
            ],
        )
        mine = await c.fleet.QueryTelemetry(fleet_pb2.QueryTelemetryRequest(device="cam-bad"), metadata=c.admin)
        assert mine.rows[0].frames == 20
