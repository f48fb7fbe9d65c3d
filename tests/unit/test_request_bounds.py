"""``edgefleet.contract.request_bounds``: every request type of both services has an entry that covers each of
its fields, each kind of bound refuses what breaks it (naming the field path, the value shown truncated) and
admits what keeps it, and a type or field without a bound is refused."""

from __future__ import annotations

import asyncio
import math

import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.struct_pb2 import Struct
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.contract import request_bounds as rb
from edgefleet.contract.errors import ContractError
from edgefleet.contract.telemetry_bounds import MAX_REVIEW_JPEG_BYTES
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2, telemetry_pb2
from edgefleet_controller.interceptor import LARGE_CHECK_BYTES, checked_bounds

SERVICES = (
    device_pb2.DESCRIPTOR.services_by_name["DeviceService"],
    fleet_pb2.DESCRIPTOR.services_by_name["FleetService"],
)


def refusal(message: object) -> rb.RequestBoundsError:
    with pytest.raises(rb.RequestBoundsError) as info:
        rb.check(message)  # type: ignore[arg-type]
    assert isinstance(info.value, ContractError)
    return info.value


def reachable(descriptor: Descriptor, seen: set[str]) -> None:
    """Every message type a caller can send inside ``descriptor`` (map entries are the map's spec)."""
    if descriptor.full_name in seen or descriptor.GetOptions().map_entry:
        return
    seen.add(descriptor.full_name)
    for fd in descriptor.fields:
        if fd.message_type is not None and fd.message_type.full_name != "google.protobuf.Struct":
            reachable(fd.message_type, seen)


def test_every_request_type_and_every_field_has_a_bound() -> None:
    seen: set[str] = set()
    for service in SERVICES:
        for method in service.methods:
            reachable(method.input_type, seen)
    missing = sorted(name for name in seen if name not in rb.BOUNDS)
    assert not missing, f"request types without an entry in request_bounds.BOUNDS: {missing}"
    for name in seen:
        entry = rb.BOUNDS[name]
        assert entry.max_bytes <= rb.MAX_REQUEST_BYTES, name
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    for name in seen:
        fields = {fd.name for fd in pool.FindMessageTypeByName(name).fields}
        assert fields == set(rb.BOUNDS[name].fields), (name, fields ^ set(rb.BOUNDS[name].fields))


def test_a_type_without_an_entry_is_refused() -> None:
    err = refusal(fleet_pb2.ListDevicesResponse())
    assert err.path == "ListDevicesResponse"
    assert "message type with declared bounds" in str(err)


@pytest.mark.parametrize(
    "name",
    ["Cam-1", "cam\x00", "cam\u202e1", "../../etc", "a" * 64, "-cam", "", "cam_1", "cam.1", "cäm"],
)
def test_enroll_names_outside_the_documented_pattern_are_refused(name: str) -> None:
    err = refusal(device_pb2.EnrollRequest(enrollment_token="eft_x.y", name=name))
    assert err.path == "EnrollRequest.name"
    assert "[a-z0-9][a-z0-9-]{0,62}" in str(err)
    assert "\x00" not in str(err) and "\u202e" not in str(err), "controls are escaped, never rendered"


@pytest.mark.parametrize("name", ["cam-1", "a", "0", "a" * 63, "rpi5-dock-3"])
def test_enroll_names_in_the_pattern_pass(name: str) -> None:
    rb.check(device_pb2.EnrollRequest(enrollment_token="eft_x.y", name=name))


def test_a_huge_hardware_field_is_named_with_its_path_and_shown_truncated() -> None:
    request = device_pb2.EnrollRequest(enrollment_token="eft_x.y", name="cam-1")
    request.hardware.cpu_model = "x" * 7_000_000
    err = refusal(request)
    assert err.path == "EnrollRequest.hardware.cpu_model"
    assert "(7000000 chars)" in str(err) and len(str(err)) < 600


def test_counts_are_checked_before_items_and_maps_by_key_and_value() -> None:
    events = device_pb2.ReportEventRequest(events=[telemetry_pb2.DeviceEvent()] * (rb.MAX_EVENTS_PER_CALL + 1))
    err = refusal(events)
    assert err.path == "ReportEventRequest.events" and f"at most {rb.MAX_EVENTS_PER_CALL} items" in str(err)
    rb.check(device_pb2.ReportEventRequest(events=[telemetry_pb2.DeviceEvent()] * rb.MAX_EVENTS_PER_CALL))

    reason = device_pb2.ReportEventRequest(events=[telemetry_pb2.DeviceEvent(reason="r" * (rb.MAX_REASON_CHARS + 1))])
    assert refusal(reason).path == "ReportEventRequest.events[0].reason"

    tags = device_pb2.EnrollRequest(name="cam-1", tags={"": "v"})
    assert refusal(tags).path == "EnrollRequest.tags key"
    nan = device_pb2.ReportEventRequest(events=[telemetry_pb2.DeviceEvent(numbers={"t": math.nan})])
    assert refusal(nan).path == "ReportEventRequest.events[0].numbers['t']"


def test_details_struct_is_bounded_in_bytes() -> None:
    request = device_pb2.SyncRequest()
    request.reported.details.update({"blob": "z" * (rb.MAX_DETAILS_BYTES + 1)})
    err = refusal(request)
    assert err.path == "SyncRequest.reported.details" and "bytes" in str(err)
    small = device_pb2.SyncRequest()
    small.reported.details.update({"download": {"digest": "sha256:" + "0" * 64, "kept": 5}})
    rb.check(small)


def test_review_jpeg_bound_is_the_shared_constant() -> None:
    def batch(size: int) -> telemetry_pb2.TelemetryBatch:
        record = telemetry_pb2.TelemetryRecord(seq=1, review=telemetry_pb2.ReviewSample(jpeg=b"\xff" * size))
        return telemetry_pb2.TelemetryBatch(epoch="e", first_seq=1, last_seq=1, records=[record])

    rb.check(batch(MAX_REVIEW_JPEG_BYTES))
    err = refusal(batch(MAX_REVIEW_JPEG_BYTES + 1))
    assert err.path == "TelemetryBatch.records[0].review.jpeg"
    assert f"<{MAX_REVIEW_JPEG_BYTES + 1} bytes>" in str(err)


@pytest.mark.parametrize(
    ("chunk", "ok"),
    [(0, True), (1, False), (rb.FETCH_CHUNK_MIN_BYTES - 1, False), (rb.FETCH_CHUNK_MIN_BYTES, True),
     (rb.FETCH_CHUNK_MAX_BYTES, True), (rb.FETCH_CHUNK_MAX_BYTES + 1, False)],
)  # fmt: skip
def test_fetch_chunk_bytes_zero_or_within_the_range(chunk: int, ok: bool) -> None:
    request = device_pb2.FetchBlobRequest(digest="sha256:" + "a" * 64, chunk_bytes=chunk)
    if ok:
        rb.check(request)
    else:
        assert refusal(request).path == "FetchBlobRequest.chunk_bytes"


@pytest.mark.parametrize("bundle", ["garbage", "sha256:xyz", "classifier@1.0.0", "sha256:" + "A" * 64])
def test_query_telemetry_bundle_must_be_a_digest(bundle: str) -> None:
    err = refusal(fleet_pb2.QueryTelemetryRequest(bundle=bundle))
    assert err.path == "QueryTelemetryRequest.bundle"
    rb.check(fleet_pb2.QueryTelemetryRequest(bundle="sha256:" + "a" * 64))
    rb.check(fleet_pb2.QueryTelemetryRequest())


@pytest.mark.parametrize("ref", ["x" * 20_000, "nover", "Bad@1.0.0", "sha256:00"])
def test_bundle_refs_must_be_a_digest_or_name_at_version(ref: str) -> None:
    err = refusal(fleet_pb2.GetBundleRequest(ref=ref))
    assert err.path == "GetBundleRequest.ref" and len(str(err)) < 600
    rb.check(fleet_pb2.GetBundleRequest(ref="classifier@1.0.0-rc.1"))


@pytest.mark.parametrize("site", ["Site A", "site\x00", "sïte", "-a", "a" * 64, "a/b"])
def test_enrollment_token_sites_follow_the_config_site_pattern(site: str) -> None:
    assert refusal(fleet_pb2.CreateEnrollmentTokenRequest(site=site)).path == "CreateEnrollmentTokenRequest.site"


def test_unknown_enum_values_and_far_timestamps_are_refused() -> None:
    sync = device_pb2.SyncRequest()
    sync.reported.health = 99  # type: ignore[assignment]
    assert refusal(sync).path == "SyncRequest.reported.health"
    event = telemetry_pb2.DeviceEvent()
    event.at.seconds = rb.MAX_TIMESTAMP_S + 1
    assert refusal(device_pb2.ReportEventRequest(events=[event])).path == "ReportEventRequest.events[0].at.seconds"


def test_a_device_cannot_report_the_health_only_an_operator_sets() -> None:
    """HEALTH_DISABLED is the controller's word for a device an operator disabled: a device claiming it would
    show as disabled in every listing while it is not."""
    sync = device_pb2.SyncRequest()
    sync.reported.health = common_pb2.HEALTH_DISABLED
    error = refusal(sync)
    assert error.path == "SyncRequest.reported.health" and "other than [6]" in str(error)
    sync.reported.health = common_pb2.HEALTH_DEGRADED
    rb.check(sync)


def test_the_serialized_size_cap_holds_when_every_field_is_within_bounds() -> None:
    files = [fleet_pb2.ManifestFile(name=f"f{i}.yaml", content="x" * (1 << 20)) for i in range(9)]
    err = refusal(fleet_pb2.ApplyConfigRequest(files=files))
    assert err.path == "ApplyConfigRequest" and "bytes serialized" in str(err)


@given(st.text(max_size=300))
def test_text_bound_agrees_with_its_definition(value: str) -> None:
    spec = rb.Text(63, rb.DEVICE_NAME_RE, allow_empty=False)
    expected = 0 < len(value) <= 63 and rb.DEVICE_NAME_RE.fullmatch(value) is not None
    assert spec.problem(value) is not expected


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(2**70), max_value=2**70))
def test_number_bound_agrees_with_its_definition(value: float) -> None:
    spec = rb.Number(-10, 2**63 - 1)
    expected = math.isfinite(value) and -10 <= value <= 2**63 - 1
    assert spec.problem(value) is not expected
    event = telemetry_pb2.DeviceEvent(numbers={"v": float(value)})
    request = device_pb2.ReportEventRequest(events=[event])
    if math.isfinite(float(value)) and abs(float(value)) <= 1e300:
        rb.check(request)
    else:
        assert refusal(request).path == "ReportEventRequest.events[0].numbers['v']"


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_stored_integers_stay_below_two_to_the_63(seq: int) -> None:
    batch = telemetry_pb2.TelemetryBatch(records=[telemetry_pb2.TelemetryRecord(seq=seq)])
    if seq <= rb.MAX_STORED_INT:
        rb.check(batch)
    else:
        assert refusal(batch).path == "TelemetryBatch.records[0].seq"


def test_well_behaved_requests_pass() -> None:
    hardware = common_pb2.HardwareProfile(hardware_class="x86-avx2", cpu_model="Intel(R) Xeon(R)", cpu_cores=8)
    rb.check(device_pb2.EnrollRequest(enrollment_token="eft_a.b", name="cam-1", hardware=hardware, tags={"z": "1"}))
    rb.check(fleet_pb2.ListDevicesRequest(site="warehouse-a", tags=["zone=dock"], page_size=100))
    rb.check(fleet_pb2.ListSitesRequest())
    details = Struct()
    details.update({"download": {"kept": 3}})
    rb.check(
        device_pb2.SyncRequest(reported=common_pb2.ReportedState(details=details, health=common_pb2.HEALTH_SERVING))
    )


def test_an_enrollment_token_needs_a_site() -> None:
    err = refusal(fleet_pb2.CreateEnrollmentTokenRequest(ttl_s=60))
    assert err.path == "CreateEnrollmentTokenRequest.site" and "--site warehouse-a" in str(err)
    rb.check(fleet_pb2.CreateEnrollmentTokenRequest(site="warehouse-a.dock_2"))


@pytest.mark.parametrize("name", ["evil\u202etxt.exe", "ci\nroot", "nul\x00", "", " lead", "x" * 129, "tab\tx"])
def test_operator_given_names_outside_the_printable_pattern_are_refused(name: str) -> None:
    err = refusal(fleet_pb2.CreateOperatorTokenRequest(name=name, role="viewer"))
    assert err.path == "CreateOperatorTokenRequest.name" and "--name" in str(err)
    assert str(err).isprintable(), "the name is shown escaped"
    if name:
        assert refusal(fleet_pb2.CreateRolloutRequest(name=name)).path == "CreateRolloutRequest.name"
        assert refusal(fleet_pb2.AddTrustedKeyRequest(key_id=name)).path == "AddTrustedKeyRequest.key_id"


@pytest.mark.parametrize("name", ["ci", "break-glass", "ci deploy@host:2", "x" * 128, "A_b.c"])
def test_printable_operator_names_pass(name: str) -> None:
    rb.check(fleet_pb2.CreateOperatorTokenRequest(name=name, role="viewer"))
    rb.check(fleet_pb2.AddTrustedKeyRequest(key_id=name))


def test_a_field_hint_is_given_only_for_its_own_field_and_others_point_to_the_readme() -> None:
    name = refusal(device_pb2.EnrollRequest(enrollment_token="eft_x.y", name="Cam-1"))
    assert "enroll with a name of lowercase letters" in str(name)
    tag = refusal(device_pb2.EnrollRequest(enrollment_token="eft_x.y", name="cam-1", tags={"": "v"}))
    assert "enroll with a name" not in str(tag)
    assert "README.md, 'Design in one page'" in str(tag) and "edgefleet.contract" not in str(tag)


def test_the_largest_batch_a_device_builds_fits_the_request_limit_and_every_legit_message_fits() -> None:
    # record bytes up to MAX_TELEMETRY_BATCH_BYTES (a review sample at its largest, the rest events), as many
    # records and dropped ranges as a batch may hold, seqs near 2^63: the framing stays inside the spare 512 KiB
    review = telemetry_pb2.ReviewSample(
        sample_id="s", jpeg=b"\xff" * MAX_REVIEW_JPEG_BYTES, results_json="x" * (64 * 1024 - 1)
    )
    top = 2**63 - 1
    records = [telemetry_pb2.TelemetryRecord(seq=top, review=review)]
    left = rb.MAX_TELEMETRY_BATCH_BYTES - records[0].ByteSize()
    per = left // (rb.MAX_BATCH_RECORDS - 1)
    pad = per - telemetry_pb2.TelemetryRecord(seq=top, event=telemetry_pb2.DeviceEvent(reason="")).ByteSize() - 2
    event = telemetry_pb2.DeviceEvent(reason="r" * pad)
    records += [telemetry_pb2.TelemetryRecord(seq=top, event=event)] * (rb.MAX_BATCH_RECORDS - 1)
    assert sum(r.ByteSize() for r in records) >= rb.MAX_TELEMETRY_BATCH_BYTES - 2 * rb.MAX_BATCH_RECORDS
    assert sum(r.ByteSize() for r in records) <= rb.MAX_TELEMETRY_BATCH_BYTES
    dropped = [telemetry_pb2.SeqRange(first=top, last=top)] * rb.MAX_BATCH_RECORDS
    batch = telemetry_pb2.TelemetryBatch(epoch="e" * rb.MAX_ID_CHARS, first_seq=top, last_seq=top, records=records)
    batch.dropped.extend(dropped)
    assert batch.ByteSize() <= rb.MAX_REQUEST_BYTES
    rb.check(batch)
    # a PushBundle chunk at fleetctl's size (the largest accepted), with its digest; one byte more is refused
    chunk = fleet_pb2.PushBundleRequest(
        chunk=fleet_pb2.ArtifactChunk(digest="sha256:" + "a" * 64, data=bytes(rb.MAX_PUSH_CHUNK_BYTES))
    )
    assert chunk.ByteSize() <= rb.MAX_REQUEST_BYTES
    rb.check(chunk)
    chunk.chunk.data += b"x"
    assert refusal(chunk).path == "PushBundleRequest.chunk.data"
    # a ListReviewSamples answer with include_jpeg holds more samples now that a JPEG is at most 1 MiB
    assert rb.MAX_REVIEW_SAMPLES_WITH_JPEG == 13


async def test_a_large_message_is_checked_off_the_event_loop_with_the_same_refusal() -> None:
    bad = device_pb2.SyncRequest()
    bad.reported.details.update({"blob": "z" * (512 * 1024)})
    assert bad.ByteSize() > LARGE_CHECK_BYTES
    expected = str(refusal(bad))
    gate = asyncio.Semaphore(1)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    beat = asyncio.create_task(ticker())
    try:
        for _ in range(3):
            with pytest.raises(rb.RequestBoundsError) as info:
                await checked_bounds(bad, gate)
            assert str(info.value) == expected
    finally:
        beat.cancel()
    assert ticks > 0  # the loop kept running other tasks while the checks ran
    small = device_pb2.SyncRequest(wait_s=3601)
    with pytest.raises(rb.RequestBoundsError) as info:
        await checked_bounds(small, gate)
    assert str(info.value) == str(refusal(small))
