"""``edgefleet.contract.request_plans``: the compiled fast path accepts only what the full walk
(``request_specs.check_with``) accepts, so ``request_bounds.check`` refuses exactly what the walk refuses with
the same message, on Hypothesis-drawn messages of every type in ``BOUNDS`` with values on and past each
bound; and it does accept ordinary requests (it is not a walk in disguise)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.contract import request_bounds as rb
from edgefleet.contract.request_plans import accepts
from edgefleet.contract.request_specs import Blob, Count, Number, RequestBoundsError, Text, check_with
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2, telemetry_pb2

assert fleet_pb2 and telemetry_pb2  # their types in the pool
NAMES = sorted(n for n in rb.BOUNDS if not n.startswith("google."))
INT_RANGE = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
FLOATS = [0.0, -0.0, 0.5, 1.0, -1.0, 1e300, -1e300, 1.5e300, 1e308, math.nan, math.inf, -math.inf]


def outcome(fn: Any, message: Message) -> str | None:
    try:
        fn(message)
    except RequestBoundsError as exc:
        return str(exc)
    return None


def near(limit: int) -> list[int]:
    return [n for n in (0, 1, limit - 1, limit, limit + 1) if 0 <= n <= 70_000]


def scalar(fd: FieldDescriptor, spec: Any) -> st.SearchStrategy[Any]:
    if fd.type == FieldDescriptor.TYPE_STRING:
        lengths = near(spec.max_chars) if isinstance(spec, Text) else [0, 1, 300]
        texts = ["warehouse-a", "cam-1", "sha256:" + "a" * 64, "b@1.0", "Z", "é"]
        return st.sampled_from(texts) | st.builds(lambda n, c: c * n, st.sampled_from(lengths), st.sampled_from("a-é"))
    if fd.type == FieldDescriptor.TYPE_BYTES:
        lengths = near(spec.max_bytes) if isinstance(spec, Blob) else [0, 3]
        return st.builds(bytes, st.sampled_from(lengths))
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([*fd.enum_type.values_by_number, max(fd.enum_type.values_by_number) + 1])
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        edges = [spec.lo, spec.hi] if isinstance(spec, Number) else []
        return st.sampled_from(FLOATS + edges) | st.floats(width=32 if fd.type == FieldDescriptor.TYPE_FLOAT else 64)
    lo, hi = INT_RANGE[fd.type]
    edges = [int(v) for v in (spec.lo, spec.hi, spec.hi + 1, spec.lo - 1)] if isinstance(spec, Number) else []
    return st.sampled_from([v for v in [0, 1, -1, lo, hi, 4096, *edges] if lo <= v <= hi])


@st.composite
def message_of(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    message = message_factory.GetMessageClass(descriptor)()
    bounds = rb.BOUNDS.get(descriptor.full_name)
    for fd in descriptor.fields:
        if not draw(st.booleans()):
            continue
        spec = bounds.fields.get(fd.name) if bounds is not None else None
        item = spec.item if isinstance(spec, Count) else spec
        many = [0, 1, 2, 3] + ([spec.max_items + 1] if isinstance(spec, Count) and spec.max_items < 1001 else [])
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd, value_fd = (fd.message_type.fields_by_name[k] for k in ("key", "value"))
            if value_fd.message_type is not None:
                continue
            keys = draw(st.lists(scalar(key_fd, spec.key if isinstance(spec, Count) else None), max_size=3))
            getattr(message, fd.name).update({k: draw(scalar(value_fd, item)) for k in keys})
        elif fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Struct":
            getattr(message, fd.name).update({"k": draw(st.sampled_from(["v", "x" * 70_000]))})
        elif fd.message_type is not None:
            if depth >= 3:
                continue
            count = draw(st.sampled_from(many)) if fd.is_repeated else 1
            part = draw(message_of(fd.message_type, depth + 1))
            if fd.is_repeated:
                getattr(message, fd.name).extend([part] * count)
            else:
                getattr(message, fd.name).CopyFrom(part)
        elif fd.is_repeated:
            count = draw(st.sampled_from(many))
            getattr(message, fd.name).extend(draw(st.lists(scalar(fd, item), min_size=count, max_size=count)))
        else:
            setattr(message, fd.name, draw(scalar(fd, spec)))
    return message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_the_fast_path_refuses_exactly_what_the_walk_refuses_with_the_same_message(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(NAMES))
    message = data.draw(message_of(descriptor_pool.Default().FindMessageTypeByName(name)))
    walked = outcome(lambda m: check_with(rb.BOUNDS, m), message)
    assert outcome(rb.check, message) == walked
    if accepts(rb.BOUNDS, message):
        assert walked is None


def test_ordinary_requests_take_the_fast_path() -> None:
    reported = common_pb2.ReportedState(health=common_pb2.HEALTH_SERVING, slot_digests=["sha256:" + "a" * 64])
    for message in (
        device_pb2.SyncRequest(known_revision=0, wait_s=1, reported=reported),
        device_pb2.EnrollRequest(name="cam-1", tags={"zone": "dock"}, hardware=common_pb2.HardwareProfile(cpu_cores=8)),
        fleet_pb2.ListDevicesRequest(site="warehouse-a", page_size=100),
    ):
        assert accepts(rb.BOUNDS, message), message
        rb.check(message)


@pytest.mark.parametrize(
    ("message", "path"),
    [
        # every field within its bound, the nested message over its own cap (64 × 255 chars > 16 KiB) while the
        # whole is under the request's: the nested size is checked after all
        (
            device_pb2.EnrollRequest(
                name="cam-1", hardware=common_pb2.HardwareProfile(execution_providers=["x" * 255] * 64)
            ),
            "EnrollRequest.hardware",
        ),
        (device_pb2.EnrollRequest(enrollment_token="eft_a.b"), "EnrollRequest.name"),  # unset: its default breaks
        (device_pb2.FetchBlobRequest(digest="sha256:" + "a" * 64, chunk_bytes=1), "FetchBlobRequest.chunk_bytes"),
    ],
)
def test_sizes_and_defaults_the_fast_path_skips_are_still_refused(message: Message, path: str) -> None:
    assert not accepts(rb.BOUNDS, message)
    with pytest.raises(RequestBoundsError) as info:
        rb.check(message)
    assert info.value.path == path


def test_a_struct_over_its_cap_is_refused_inside_a_request_under_its_own() -> None:
    details = Struct()
    details.update({"k": "x" * 70_000})
    err = outcome(rb.check, device_pb2.SyncRequest(reported=common_pb2.ReportedState(details=details)))
    assert err is not None and err.startswith("SyncRequest.reported.details must be a JSON object")
