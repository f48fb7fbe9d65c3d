"""Hypothesis strategies of hostile calls, one per RPC of DeviceService and FleetService (``HOSTILE``).

Each strategy draws a ``Hostile``: a request (or a client stream's messages), the credential it is sent
with, and the statuses the contract documents for it (device.proto, fleet.proto, the request bounds in
``edgefleet.contract.request_bounds``). Values break a bound by far, so no choice of limit within the
documented ones lets them through: text of 1,100 characters up to 7 MiB (filled with NUL, U+202E, newlines,
multi-byte characters), NaN/±inf/negative numbers, integers from 2^63 up, unknown enum values, other
devices' blobs and samples, unknown ids. Every payload is also drawn with a missing, garbage or wrong-role
credential, which must be refused for the credential (authentication comes before validation).

The strategies take a ``World``: the ids and credentials of the fleet the hostile suite seeds. FleetService's
strategies and the table of every RPC's strategy are in ``hostile_cases``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

from edgefleet.v1 import common_pb2, device_pb2, telemetry_pb2
from edgefleet_testing.controller import Metadata, bearer

Code = grpc.StatusCode
INVALID = frozenset({Code.INVALID_ARGUMENT})
UNAUTH = frozenset({Code.UNAUTHENTICATED})
DENIED = frozenset({Code.PERMISSION_DENIED})
NOT_FOUND = frozenset({Code.NOT_FOUND})
#: A well-formed value naming nothing that exists may be refused for its shape or as unknown.
UNKNOWN = frozenset({Code.INVALID_ARGUMENT, Code.NOT_FOUND})

#: Sizes (in UTF-8 bytes) of oversize values: past every text bound, around the ~16 KiB that used to turn an
#: echoed value into a metadata error, and up to 7 MiB (just under the 8 MiB message limit).
SIZES = (1_100, 20_000, 70_000, 1 << 20, 3 << 20, 7 << 20)
#: What oversize text is made of.
FILLS = ("x", "\x00", "\u202e", "\n", "é", "😀")
#: Short values no name, site or id may take.
BAD_NAMES = ("UPPER", "a\x00b", "\u202ecam", "../../etc", "a" * 64, "cam 1", "caméra", "-lead", "x\ny", "")
HUGE_INTS = (2**63, 2**63 + 1, 2**64 - 1)
BAD_FLOATS = (math.nan, math.inf, -math.inf, -1.0, -1e-9)


@dataclass(frozen=True)
class World:
    """The seeded fleet the strategies aim at (see ``test_hostile_clients.world``)."""

    admin: str
    operator: str
    viewer: str
    enroll_token: str  # valid for site "lab", unlimited uses
    revoked_enroll_token: str
    victim_id: str  # lab/cam-a: a well-behaved device
    victim_cred: str
    hostile_id: str  # lab/cam-h: the device that sends everything here
    hostile_cred: str
    other_site_id: str  # yard/cam-y
    bundle_digest: str  # classifier@1.0.0, desired by cam-h
    model_digest: str  # its model artifact
    model_size: int
    other_digest: str  # classifier@2.0.0's model: desired by no device of the hostile's
    sample_id: str  # a review sample of cam-a's
    key_id: str  # the trusted publisher key


@dataclass(frozen=True)
class Hostile:
    """One hostile call: what it is (for reports), its request(s), metadata, the documented statuses, and the
    offending value whose echo in the answer is bounded."""

    what: str
    request: Message | tuple[Message, ...]
    metadata: Metadata
    expected: frozenset[grpc.StatusCode]
    value: object = None

    def size(self) -> int:
        requests = self.request if isinstance(self.request, tuple) else (self.request,)
        return max(r.ByteSize() for r in requests) if requests else 0


# ---------------------------------------------------------------------------------------------- values


def _fill(size: int, fill: str, min_chars: int) -> str:
    width = len(fill.encode())
    return fill * max(min_chars, size // width)


def oversize(min_chars: int = 1_100) -> st.SearchStrategy[str]:
    """Text longer than ``min_chars`` (and every bound below it), from 1,100 characters to 7 MiB."""
    return st.builds(
        _fill,
        st.sampled_from([s for s in SIZES if s >= min_chars] or [7 << 20]),
        st.sampled_from(FILLS),
        st.just(min_chars),
    )


def oversize_bytes(min_bytes: int = 1_100) -> st.SearchStrategy[bytes]:
    return st.builds(lambda n: b"\xff" * n, st.sampled_from([s for s in SIZES if s >= min_bytes]))


def bad_name() -> st.SearchStrategy[str]:
    """A value no device name, site or id may take: controls, bidi, paths, upper case, 64+ chars, oversize."""
    return st.one_of(st.sampled_from(BAD_NAMES[:-1]), oversize())


def bad_ref() -> st.SearchStrategy[tuple[str, frozenset[grpc.StatusCode]]]:
    """A value for an id or reference field without a character set (device id or name, rollout id): short
    ones may be refused for their shape or as unknown, oversize ones are past the bound."""
    return st.one_of(
        st.sampled_from(BAD_NAMES[:-1]).map(lambda v: (v, UNKNOWN)), oversize().map(lambda v: (v, INVALID))
    )


def bad_digest() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["sha256:nothex", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 32, "\x00"]),
        oversize(),
    )


def bad_timestamp() -> st.SearchStrategy[Any]:

    return st.builds(Timestamp, seconds=st.sampled_from([-1, -(2**62), 2**62, 253_402_300_800]))


def hostile(
    what: str, request: Any, md: Metadata, expected: frozenset[grpc.StatusCode], value: object = None
) -> Hostile:
    return Hostile(what, request, md, expected, value)


# ---------------------------------------------------------------------------------------------- credentials

#: Which credential each RPC needs (device.proto, fleet.proto): "public", "device" or an operator role.
NEEDS: dict[str, str] = {
    "Enroll": "public",
    **dict.fromkeys(["Sync", "FetchBlob", "ReportEvent", "UploadTelemetry"], "device"),
    **dict.fromkeys(
        "ListBundles GetBundle GetEffectiveConfig GetRollout ListRollouts WatchRollout ListDevices GetDevice "
        "ListSites WatchFleet ListDeviceEvents QueryTelemetry ListReviewSamples ListTrustedKeys ListProfiles".split(),
        "viewer",
    ),
    **dict.fromkeys(
        "PushBundle DeleteBundle ApplyConfig SetDesiredBundle CreateRollout PauseRollout ResumeRollout "
        "ApproveRollout AbortRollout LabelReviewSample".split(),
        "operator",
    ),
    **dict.fromkeys(
        "CreateEnrollmentToken RevokeEnrollmentToken CreateOperatorToken AddTrustedKey ListOperatorTokens "
        "RevokeOperatorToken DisableDevice EnableDevice DeleteDevice RotateDeviceCredential DeleteTelemetry".split(),
        "admin",
    ),
}

GARBAGE_BEARERS = ("hello", "eot_nope.nope", "edc_dev_0000.secret", "eft_x.y", "x" * 4000, "Bearer")


def credential(world: World, rpc: str) -> Metadata:
    need = NEEDS[rpc]
    return {
        "public": (),
        "device": bearer(world.hostile_cred),
        "viewer": bearer(world.viewer),
        "operator": bearer(world.operator),
        "admin": bearer(world.admin),
    }[need]


def wrong_credentials(world: World, rpc: str) -> list[tuple[str, Metadata, frozenset[grpc.StatusCode]]]:
    """Credentials this RPC must refuse, and how: missing and garbage ones, and the wrong kind or role."""
    out: list[tuple[str, Metadata, frozenset[grpc.StatusCode]]] = [("no credential", (), UNAUTH)]
    out += [(f"garbage bearer {b[:12]!r}", bearer(b), UNAUTH) for b in GARBAGE_BEARERS]
    out.append(("non-bearer authorization", (("authorization", "Basic YWRtaW46YWRtaW4="),), UNAUTH))
    need = NEEDS[rpc]
    if need == "device":
        out.append(("admin token on DeviceService", bearer(world.admin), DENIED))
    elif need != "public":
        out.append(("device credential on FleetService", bearer(world.hostile_cred), DENIED))
        lower = {"operator": ["viewer"], "admin": ["viewer", "operator"]}.get(need, [])
        out += [(f"{role} token", bearer(getattr(world, role)), DENIED) for role in lower]
    return out


def with_credentials(world: World, rpc: str, payload: st.SearchStrategy[Hostile]) -> st.SearchStrategy[Hostile]:
    """The payload as drawn (with the right credential), or with a credential the RPC must refuse first."""

    @st.composite
    def draw(d: st.DrawFn) -> Hostile:
        hostile = d(payload)
        if NEEDS[rpc] == "public" or d(st.integers(0, 2)) > 0:
            return hostile
        what, md, expected = d(st.sampled_from(wrong_credentials(world, rpc)))
        return replace(hostile, what=f"{what}; {hostile.what}", metadata=md, expected=expected)

    return draw()


# ---------------------------------------------------------------------------------------------- per message

S = st.SearchStrategy


def text_field(
    world: World, rpc: str, make: Callable[[str], Message], field: str, values: S[str] | None = None
) -> S[Hostile]:
    md = credential(world, rpc)
    return (bad_name() if values is None else values).map(
        lambda v: hostile(f"{field}={label(v)}", make(v), md, INVALID, v)
    )


def label(value: object) -> str:
    """A short one-line name of a drawn value, for reports."""
    if isinstance(value, str | bytes) and len(value) > 24:
        return f"<{len(value)} x {value[:1]!r}>"
    if isinstance(value, Message):
        return f"{value.DESCRIPTOR.name}({text_format.MessageToString(value, as_one_line=True)[:60]})"
    return repr(value)


def enroll(w: World) -> S[Hostile]:
    def req(token: str = w.enroll_token, name: str = "cam-new", **kw: Any) -> device_pb2.EnrollRequest:
        return device_pb2.EnrollRequest(enrollment_token=token, name=name, **kw)

    hw = common_pb2.HardwareProfile
    fields = ["hardware_class", "cpu_model", "gpu_arch", "tensorrt_version", "runtime_version", "platform"]
    return st.one_of(
        bad_name().map(lambda v: hostile(f"name={label(v)}", req(name=v), (), INVALID, v)),
        st.tuples(st.sampled_from(fields), oversize()).map(
            lambda fv: hostile(
                f"hardware.{fv[0]}={label(fv[1])}", req(hardware=hw(**{fv[0]: fv[1]})), (), INVALID, fv[1]
            )
        ),
        st.sampled_from([2**32 - 1, 2**31]).map(
            lambda n: hostile(f"hardware.cpu_cores={n}", req(hardware=hw(cpu_cores=n)), (), INVALID)
        ),
        oversize().map(lambda v: hostile(f"tag value {label(v)}", req(tags={"k": v}), (), INVALID, v)),
        st.integers(65, 3000).map(
            lambda n: hostile(f"{n} tags", req(tags={f"k{i}": "v" for i in range(n)}), (), INVALID)
        ),
        # a name another device of the site holds
        st.just(hostile("duplicate name cam-a in lab", req(name="cam-a"), (), frozenset({Code.ALREADY_EXISTS}))),
        # a bad name with a bad token: the token is checked first
        st.tuples(st.sampled_from(["", "eft_nope.nope", "eft_0000.secret", w.revoked_enroll_token]), bad_name()).map(
            lambda tv: hostile(
                f"token {label(tv[0])} with name {label(tv[1])}", req(token=tv[0], name=tv[1]), (), UNAUTH, tv[1]
            )
        ),
    )


def reported(w: World) -> S[common_pb2.ReportedState]:

    def details(value: Any) -> common_pb2.ReportedState:
        s = Struct()
        s.update({"t": value})
        return common_pb2.ReportedState(details=s)

    text_fields = ["running_bundle_digest", "update_reason", "assignment_id", "candidate_bundle_digest"]
    return st.one_of(
        st.tuples(st.sampled_from(text_fields), oversize()).map(lambda fv: common_pb2.ReportedState(**{fv[0]: fv[1]})),
        oversize(70_000).map(details),
        st.sampled_from([math.nan, math.inf]).map(details),
        st.integers(65, 5000).map(lambda n: common_pb2.ReportedState(slot_digests=["sha256:" + "a" * 64] * n)),
        oversize().map(lambda v: common_pb2.ReportedState(hardware=common_pb2.HardwareProfile(cpu_model=v))),
        st.sampled_from([99, -1]).map(lambda v: common_pb2.ReportedState(health=v)),
        st.sampled_from(HUGE_INTS).map(lambda v: common_pb2.ReportedState(applied_revision=v)),
        st.sampled_from(BAD_FLOATS[:3]).map(
            lambda v: common_pb2.ReportedState(last_verdict=common_pb2.CanaryVerdict(p95_ratio=v))
        ),
    )


def sync(w: World) -> S[Hostile]:
    md = bearer(w.hostile_cred)
    return reported(w).map(
        lambda r: hostile(f"reported {label(r)[:60]}", device_pb2.SyncRequest(reported=r, wait_s=1), md, INVALID)
    )


def fetch_blob(w: World) -> S[Hostile]:
    md = bearer(w.hostile_cred)
    req = device_pb2.FetchBlobRequest
    return st.one_of(
        bad_digest().map(lambda v: hostile(f"digest={label(v)}", req(digest=v), md, INVALID, v)),
        st.just(hostile("another bundle's artifact", req(digest=w.other_digest), md, NOT_FOUND)),
        st.just(hostile("unknown digest", req(digest="sha256:" + "0" * 64), md, NOT_FOUND)),
        st.sampled_from([w.model_size + 1, 2**62, *HUGE_INTS]).map(
            lambda off: hostile(
                f"offset={off}",
                req(digest=w.model_digest, offset=off),
                md,
                frozenset({Code.OUT_OF_RANGE})
                if off < 2**63
                else frozenset({Code.OUT_OF_RANGE, Code.INVALID_ARGUMENT}),
            )
        ),
        st.sampled_from([1, 7, 100, 4095]).map(
            lambda n: hostile(f"chunk_bytes={n}", req(digest=w.model_digest, chunk_bytes=n), md, INVALID)
        ),
    )


Event = telemetry_pb2.DeviceEvent


def bad_event(w: World) -> S[Event]:
    def profile(value: float, hw: str = "x86-avx2") -> Event:
        total = common_pb2.Percentiles(p50_ms=1.0, p95_ms=value, p99_ms=2.0, count=100)
        p = telemetry_pb2.LatencyProfile(bundle_digest=w.bundle_digest, hardware_class=hw, total=total)
        return Event(event_id="ev-profile", kind=Event.KIND_PROFILE, profile=p)

    return st.one_of(
        st.sampled_from(BAD_FLOATS[:4]).map(profile),
        oversize().map(lambda v: Event(event_id="ev-1", kind=Event.KIND_ALERT, reason=v)),
        oversize().map(lambda v: Event(event_id=v, kind=Event.KIND_ALERT)),
        st.sampled_from([99, -5]).map(lambda k: Event(event_id="ev-2", kind=k)),
        st.sampled_from(BAD_FLOATS[:3]).map(lambda v: Event(event_id="ev-3", kind=Event.KIND_ALERT, numbers={"t": v})),
        bad_timestamp().map(lambda ts: Event(event_id="ev-4", kind=Event.KIND_ALERT, at=ts)),
        st.sampled_from(HUGE_INTS).map(lambda v: Event(event_id="ev-5", kind=Event.KIND_ALERT, revision=v)),
    )


def report_event(w: World) -> S[Hostile]:
    md = bearer(w.hostile_cred)
    sound = Event(event_id="ev-sound", kind=Event.KIND_ALERT, reason="fan slow")
    many = st.integers(501, 20_000).map(
        lambda n: hostile(
            f"{n} events",
            device_pb2.ReportEventRequest(events=[Event(event_id=f"e{i}", kind=Event.KIND_ALERT) for i in range(n)]),
            md,
            INVALID,
        )
    )
    # a bad event after a sound one: the whole call is refused, the sound one not stored either
    batch = st.tuples(bad_event(w), st.booleans()).map(
        lambda eb: hostile(
            f"{'sound + ' if eb[1] else ''}{label(eb[0])[:70]}",
            device_pb2.ReportEventRequest(events=[sound, eb[0]] if eb[1] else [eb[0]]),
            md,
            INVALID,
        )
    )
    return st.one_of(batch, many)


def upload_telemetry(w: World, windows: Callable[[str], S[telemetry_pb2.TelemetryBatch]]) -> S[Hostile]:
    """``windows(bundle_digest)``: hostile metric batches (reused from ``test_telemetry_hostile``)."""
    md = bearer(w.hostile_cred)
    Batch, Record, Review = telemetry_pb2.TelemetryBatch, telemetry_pb2.TelemetryRecord, telemetry_pb2.ReviewSample

    def review(**kw: Any) -> Batch:
        sample = Review(sample_id=kw.pop("sample_id", "rs-h1"), bundle_digest=w.bundle_digest, reason="sampled", **kw)
        return Batch(epoch="h", first_seq=1, last_seq=1, records=[Record(seq=1, review=sample)])

    return st.one_of(
        windows(w.bundle_digest).map(lambda b: hostile("hostile metric window", (b,), md, INVALID)),
        st.sampled_from([(2 << 20) + 1, 3 << 20, 7_300_000]).map(
            lambda n: hostile(f"review jpeg of {n} bytes", (review(jpeg=b"\xff" * n),), md, INVALID)
        ),
        oversize().map(lambda v: hostile(f"review sample_id={label(v)}", (review(sample_id=v),), md, INVALID, v)),
        st.sampled_from([math.nan, -1.0, 2.0]).map(
            lambda v: hostile(f"review top_confidence={v}", (review(top_confidence=v),), md, INVALID)
        ),
        oversize(70_000).map(
            lambda v: hostile("review results_json oversize", (review(results_json=v),), md, INVALID, v)
        ),
        oversize().map(
            lambda v: hostile(f"epoch={label(v)}", (Batch(epoch=v, first_seq=1, last_seq=1),), md, INVALID, v)
        ),
    )


def requests_of(hostile: Hostile) -> Sequence[Message]:
    return hostile.request if isinstance(hostile.request, tuple) else (hostile.request,)
