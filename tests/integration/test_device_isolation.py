"""One device's worst records cannot change what another device, another site or a fleet-wide query returns.

A real controller process; lab/cam-good and yard/cam-pi, cam-pi2 (rpi5) are well-behaved, lab/cam-bad sends
the worst it is allowed to (windows at the top of the latency range with 2^62 frames, reported state at its
bounds, a claimed rpi5 hardware class, 2 MiB review JPEGs reusing cam-good's sample id, events at the
per-call cap, latency profiles of another hardware class) and the worst it is refused (the issue's bad
windows, oversize reports and events). Before and after: QueryTelemetry per device, of another site and
of one other device, ListDevices, GetDevice, ListSites, ListProfiles, ListReviewSamples and
ListDeviceEvents of the others are unchanged, fleet-wide queries still answer, the yard's latency admission
decides as before (a 9999 ms rpi5 claim does not refuse it, a 1 ms claim does not wave a slow bundle
through), and cam-good's review sample is still labelable by its device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.contract.request_bounds import MAX_REQUEST_BYTES
from edgefleet.contract.telemetry_bounds import MAX_REVIEW_JPEG_BYTES
from edgefleet.v1 import common_pb2, device_pb2, device_pb2_grpc, fleet_pb2, telemetry_pb2
from edgefleet_testing.bundles import SignedBundle, make_bundle
from edgefleet_testing.controller import bearer
from edgefleet_testing.fleet import Controller, start_controller
from tests.integration.test_hostile_clients import HOSTILE_CHANNEL, serving, upload
from tests.integration.test_telemetry_hostile import good_window

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Event = telemetry_pb2.DeviceEvent
Batch, Record = telemetry_pb2.TelemetryBatch, telemetry_pb2.TelemetryRecord
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


@dataclass
class Fleet:
    ctl: Controller
    device: device_pb2_grpc.DeviceServiceStub
    ids: dict[str, str]
    creds: dict[str, str]
    v1: SignedBundle
    fast: SignedBundle  # 20 ms p95 on rpi5 (cam-pi's profile): admitted to yard
    slow: SignedBundle  # 45 ms p95 on rpi5: refused for yard (budget 50 ms × 0.8 = 40 ms)

    def call(self, method: str, request: Message) -> Message:
        reply: Message = getattr(self.ctl.fleet, method)(request, metadata=self.ctl.md, timeout=30)
        return reply

    def seen(self, method: str, request: Message, pick: Callable[[Any], object] = lambda r: _bytes(r)) -> object:
        """What ``method`` answers, picked; or the error it answered with (so every view is compared)."""
        try:
            return pick(self.call(method, request))
        except grpc.RpcError as err:
            return f"error {err.code().name}: {err.details()}"


def profile_event(event_id: str, bundle: str, hardware_class: str, p95: float) -> Event:
    total = common_pb2.Percentiles(p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95, count=500)
    return Event(
        event_id=event_id,
        kind=Event.KIND_PROFILE,
        bundle_digest=bundle,
        profile=telemetry_pb2.LatencyProfile(
            bundle_digest=bundle, hardware_class=hardware_class, total=total, source="profile", frames=500
        ),
    )


def review(sample_id: str, bundle: str, jpeg: bytes, at: datetime) -> telemetry_pb2.ReviewSample:
    sample = telemetry_pb2.ReviewSample(
        sample_id=sample_id, bundle_digest=bundle, reason="low_confidence", top_confidence=0.3, jpeg=jpeg
    )
    sample.captured_at.FromDatetime(at)
    return sample


def windows(bundle: str, latency_ms: float, n: int, frames: int | None = None) -> list[telemetry_pb2.MetricWindow]:
    out = []
    for i in range(n):
        w = good_window(latency_ms, START + timedelta(seconds=10 * i))
        w.bundle_digest = bundle
        if frames is not None:
            w.frames = frames
        out.append(w)
    return out


def batch(epoch: str, first: int, bodies: list[Message]) -> Batch:
    records = []
    for i, body in enumerate(bodies):
        kind = "metrics" if isinstance(body, telemetry_pb2.MetricWindow) else "review"
        records.append(Record(seq=first + i, **{kind: body}))
    return Batch(epoch=epoch, first_seq=first, last_seq=first + len(bodies) - 1, records=records)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        v1, fast, slow = (
            make_bundle(tmp_path / f"b{i}", key, version=f"{i}.0.0", seed=i, sla_ms=50) for i in (1, 2, 3)
        )
        for bundle in (v1, fast, slow):
            ctl.push(bundle)
        hostile_channel = grpc.insecure_channel(ctl.address, options=HOSTILE_CHANNEL)  # sends past the limits
        device = device_pb2_grpc.DeviceServiceStub(hostile_channel)
        tokens = {site: ctl.enrollment_token(site) for site in ("lab", "yard")}
        ids, creds = {}, {}
        for site, name, hw in (
            ("lab", "cam-good", "x86-avx2"),
            ("lab", "cam-bad", "x86-avx2"),
            ("yard", "cam-pi", "rpi5"),
            ("yard", "cam-pi2", "rpi5"),
        ):
            reply = device.Enroll(
                device_pb2.EnrollRequest(
                    enrollment_token=tokens[site], name=name, hardware=common_pb2.HardwareProfile(hardware_class=hw)
                ),
                timeout=10,
            )
            ids[name], creds[name] = reply.device_id, reply.device_credential
            ctl.set_desired(name, v1.digest)
            device.Sync(device_pb2.SyncRequest(reported=serving(v1.digest), wait_s=1), metadata=bearer(creds[name]))
        for name, latency in (("cam-good", 20.0), ("cam-pi", 30.0), ("cam-pi2", 35.0)):
            bodies: list[Message] = list(windows(v1.digest, latency, 6))
            bodies.append(review("rs-1", v1.digest, b"\xff\xd8" + name.encode(), START))
            upload(device, creds[name], [batch("ep", 1, bodies)])
        device.ReportEvent(
            device_pb2.ReportEventRequest(
                events=[
                    profile_event("p-fast", fast.digest, "rpi5", 20.0),
                    profile_event("p-slow", slow.digest, "rpi5", 45.0),
                ]
            ),
            metadata=bearer(creds["cam-pi"]),
            timeout=10,
        )
        yield Fleet(ctl, device, ids, creds, v1, fast, slow)
        hostile_channel.close()


def _bytes(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


def views(f: Fleet) -> dict[str, object]:
    """What everyone but cam-bad sees, serialized (NaN drift compares equal as bytes)."""
    F = fleet_pb2
    since, until = Timestamp(), Timestamp()
    since.FromDatetime(START - timedelta(hours=1))
    until.FromDatetime(START + timedelta(hours=3))
    bad = f.ids["cam-bad"]

    def query(pick: Callable[[Any], object] = _bytes, **kw: str) -> object:
        return f.seen("QueryTelemetry", F.QueryTelemetryRequest(since=since, until=until, **kw), pick)

    out: dict[str, object] = {
        "query by device (others' rows)": query(
            lambda r: sorted(_bytes(x) for x in r.rows if x.key != bad), group_by="device"
        ),
        "query skipped records": query(lambda r: r.skipped_records, group_by="device"),
        "query site yard": query(site="yard", group_by="site"),
        "query device cam-good": query(device="cam-good"),
        "query device cam-pi": query(device=f.ids["cam-pi"]),
        "query fleet by site (yard row)": query(
            lambda r: [_bytes(x) for x in r.rows if x.key == "yard"], group_by="site"
        ),
        "list devices (others)": f.seen(
            "ListDevices", F.ListDevicesRequest(), lambda r: sorted(_bytes(d) for d in r.devices if d.id != bad)
        ),
        "list devices total": f.seen("ListDevices", F.ListDevicesRequest(), lambda r: r.total),
        "list devices yard": f.seen("ListDevices", F.ListDevicesRequest(site="yard")),
        "list sites (yard)": f.seen(
            "ListSites", F.ListSitesRequest(), lambda r: [_bytes(x) for x in r.sites if x.site == "yard"]
        ),
        "profiles rpi5": f.seen("ListProfiles", F.ListProfilesRequest(hardware_class="rpi5")),
        "review yard": f.seen("ListReviewSamples", F.ListReviewSamplesRequest(site="yard", include_jpeg=True)),
        "review cam-good": f.seen(
            "ListReviewSamples", F.ListReviewSamplesRequest(device="cam-good", include_jpeg=True)
        ),
    }
    for name in ("cam-good", "cam-pi", "cam-pi2"):
        out[f"get device {name}"] = f.seen("GetDevice", F.GetDeviceRequest(device=name))
        out[f"events of {name}"] = f.seen("ListDeviceEvents", F.ListDeviceEventsRequest(device=name))
    return out


def yard_rollout(f: Fleet, bundle: SignedBundle) -> fleet_pb2.CreateRolloutRequest:
    return fleet_pb2.CreateRolloutRequest(
        name=f"yard-{bundle.version}",
        bundle=bundle.digest,
        selector=fleet_pb2.RolloutSelector(sites=["yard"]),
        strategy=fleet_pb2.RolloutStrategy(waves=["1"]),
    )


#: The yard's admission of the slow bundle, from cam-pi's own 45 ms profile.
SLOW_REFUSED = "rpi5: p95 45.0 ms > 50 ms × (1 − 0.20) = 40.0 ms: refused"


def slow_admission(f: Fleet) -> str:
    """How CreateRollout of the slow bundle to the yard ends: its status and message."""
    answer = f.seen("CreateRollout", yard_rollout(f, f.slow), lambda r: f"OK: created {r.id}, {list(r.admission)}")
    assert isinstance(answer, str)
    return answer


def allowed(send: Callable[[], object]) -> None:
    """Send what the bounds allow; a controller that refuses it (INVALID_ARGUMENT) isolates just as well."""
    try:
        send()
    except grpc.RpcError as err:
        refused = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert err.code() in refused, (err.code(), err.details())


def burst(f: Fleet) -> list[str]:
    """cam-bad's worst: what it may send (stored, its own) and what it may not (refused); returns the refusals'
    statuses that were not a refusal (empty when every refused call was refused)."""
    md = bearer(f.creds["cam-bad"])
    v1 = f.v1.digest
    details = Struct()
    details.update({"blob": "d" * 60_000, "temp_c": 1e300})
    claimed = common_pb2.HardwareProfile(hardware_class="rpi5", cpu_model="c" * 255, cpu_cores=65_536)
    report = serving(v1)
    report.health = common_pb2.HEALTH_FAILING
    report.update_reason = "r" * 1024
    report.details.CopyFrom(details)
    report.hardware.CopyFrom(claimed)
    report.active_providers.extend(["p" * 255] * 64)
    allowed(lambda: f.device.Sync(device_pb2.SyncRequest(reported=report, wait_s=1), metadata=md, timeout=30))
    # the slowest windows the fleet's sketch keys allow (~16.6 h), 2^62 frames each; then 2 MiB review JPEGs,
    # one reusing cam-good's sample id
    allowed(
        lambda: upload(f.device, f.creds["cam-bad"], [batch("worst", 1, list(windows(v1, 5.0e7, 6, frames=2**62)))])
    )
    jpeg = b"\xff" * min(MAX_REVIEW_JPEG_BYTES, MAX_REQUEST_BYTES - 64 * 1024)  # the largest one request carries
    for i in range(9):
        sample = review(f"rs-{i + 1}", v1, jpeg, START)
        allowed(lambda s=sample, i=i: upload(f.device, f.creds["cam-bad"], [batch("worst", 7 + i, [s])]))
    alerts = [
        Event(event_id=f"a{c}-{i}", kind=Event.KIND_ALERT, reason="a" * 1024) for c in range(2) for i in range(250)
    ]
    for half in (alerts[:500], alerts[500:]):
        allowed(lambda h=half: f.device.ReportEvent(device_pb2.ReportEventRequest(events=h), metadata=md, timeout=30))
    claims = [
        profile_event("b-fast", f.fast.digest, "rpi5", 9999.0),  # would refuse yard's fast bundle
        profile_event("b-slow", f.slow.digest, "rpi5", 1.0),  # would wave yard's slow bundle through
        profile_event("b-own", f.fast.digest, "x86-avx2", 9999.0),  # its own class: lab's business
    ]
    allowed(lambda: f.device.ReportEvent(device_pb2.ReportEventRequest(events=claims), metadata=md, timeout=30))

    refused_calls: list[tuple[str, object]] = []
    bad_sketch = windows(v1, 20.0, 1)[0]
    bad_sketch.latency_e2e.gamma = 0.0
    far = windows(v1, 20.0, 1)[0]
    far.latency_model.contiguous_bin_index_offset = -30_000_000
    nan_window = windows(v1, 20.0, 1)[0]
    nan_window.window_s = math.nan
    for i, w in enumerate((bad_sketch, far, nan_window)):
        refused_calls.append(("UploadTelemetry", [batch("refused", 100 + i, [w])]))
    refused_calls.append(("UploadTelemetry", [Batch(epoch="refused", first_seq=2**63, last_seq=2**63)]))
    huge = Struct()
    huge.update({"blob": "x" * (6 << 20)})
    refused_calls.append(("Sync", device_pb2.SyncRequest(reported=common_pb2.ReportedState(details=huge), wait_s=1)))
    refused_calls.append(
        (
            "ReportEvent",
            device_pb2.ReportEventRequest(
                events=[Event(event_id=f"e{i}", kind=Event.KIND_ALERT) for i in range(20_000)]
            ),
        )
    )
    refused_calls.append(
        (
            "ReportEvent",
            device_pb2.ReportEventRequest(events=[profile_event("p-nan", f.slow.digest, "x86-avx2", math.nan)]),
        )
    )
    unrefused = []
    for method, request in refused_calls:
        try:
            call = getattr(f.device, method)
            if method == "UploadTelemetry":
                assert isinstance(request, list)
                list(call(iter(request), metadata=md, timeout=30))
            else:
                call(request, metadata=md, timeout=30)
            unrefused.append(f"{method} {type(request).__name__}: accepted")
        except grpc.RpcError as err:
            code = err.code()
            if code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                unrefused.append(f"{method}: {code.name} {err.details()!r:.200}")
    return unrefused


def test_one_devices_worst_records_change_nothing_of_others(fleet: Fleet) -> None:
    f, F = fleet, fleet_pb2
    before = views(f)
    assert not [v for v in before.values() if isinstance(v, str)], before  # a sound fleet answers everything
    slow_before = slow_admission(f)
    assert slow_before.startswith("error FAILED_PRECONDITION") and SLOW_REFUSED in slow_before, slow_before

    # every problem is collected, so one run shows all of them; the test fails if there is any
    problems = [f"refused call not refused: {u}" for u in burst(f)]

    after = views(f)
    problems += [f"{name}: changed ({str(after[name])[:300]})" for name in before if before[name] != after[name]]
    # fleet-wide queries still answer, cam-bad's stored windows and samples included
    for group_by in ("device", "site", "bundle"):
        answer = f.seen("QueryTelemetry", F.QueryTelemetryRequest(group_by=group_by), lambda r: len(r.rows))
        if not isinstance(answer, int) or not answer:
            problems.append(f"fleet-wide QueryTelemetry group_by={group_by}: {answer}")
    everything = f.seen("ListReviewSamples", F.ListReviewSamplesRequest(include_jpeg=True), lambda r: len(r.samples))
    if not isinstance(everything, int) or not everything:
        problems.append(f"fleet-wide ListReviewSamples include_jpeg: {everything}")
    # the yard's admission decides as before: cam-bad's rpi5 claims count for nothing
    if (slow_after := slow_admission(f)) != slow_before:
        problems.append(f"admission of the slow bundle changed: {slow_after}")
    created = f.seen("CreateRollout", yard_rollout(f, f.fast), lambda r: list(r.admission))
    admitted = "rpi5: p95 20.0 ms <= 50 ms × (1 − 0.20) = 40.0 ms: admitted"
    if not isinstance(created, list) or not any(admitted in line for line in created):
        problems.append(f"yard rollout of the fast bundle: {created}")
    # cam-good's sample is labelled through its device, although cam-bad has a sample with the same id
    labelled = f.seen(
        "LabelReviewSample",
        F.LabelReviewSampleRequest(sample_id="rs-1", label="tp", device="cam-good"),
        lambda r: (r.device_id, r.label),
    )
    if labelled != (f.ids["cam-good"], "tp"):
        problems.append(f"label cam-good's rs-1: {labelled}")
    theirs = f.seen(
        "ListReviewSamples",
        F.ListReviewSamplesRequest(device="cam-bad", sample_id="rs-1"),
        lambda r: [(s.device_id, s.label) for s in r.samples],
    )
    if theirs != [(f.ids["cam-bad"], "")]:
        problems.append(f"cam-bad's rs-1 after labelling cam-good's: {theirs}")
    assert not problems, "\n".join(problems)
