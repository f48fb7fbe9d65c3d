"""FleetService's hostile-call strategies, and ``hostile_cases``: the table of every RPC's strategy (DeviceService's
are in ``hostile_strategies``, with the values, credentials and types both use). ``test_hostile_clients`` fails
for an RPC of the generated descriptors that has no entry here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

from edgefleet.v1 import fleet_pb2, telemetry_pb2
from edgefleet_testing.controller import bearer
from tests.integration.hostile_strategies import (
    INVALID,
    NOT_FOUND,
    UNKNOWN,
    Code,
    Hostile,
    S,
    World,
    bad_digest,
    bad_name,
    bad_ref,
    bad_timestamp,
    credential,
    enroll,
    fetch_blob,
    hostile,
    label,
    oversize,
    oversize_bytes,
    report_event,
    sync,
    text_field,
    upload_telemetry,
    with_credentials,
)

# ---------------------------------------------------------------------------------------------- FleetService


def push_bundle(w: World) -> S[Hostile]:
    md = bearer(w.operator)
    P, H, C = fleet_pb2.PushBundleRequest, fleet_pb2.BundleHeader, fleet_pb2.ArtifactChunk
    return st.one_of(
        st.sampled_from([b"{}", b"\x00" * 100, b"not json"]).map(
            lambda m: hostile(f"manifest {m[:10]!r}", (P(header=H(manifest=m, signature=b"{}")),), md, INVALID)
        ),
        oversize_bytes(2 << 20).map(
            lambda m: hostile(f"manifest of {len(m)} bytes", (P(header=H(manifest=m)),), md, INVALID)
        ),
        oversize_bytes(20_000).map(
            lambda s: hostile(f"signature of {len(s)} bytes", (P(header=H(manifest=b"{}", signature=s)),), md, INVALID)
        ),
        st.just(hostile("no header", (P(chunk=C(digest=w.model_digest, data=b"x")),), md, INVALID)),
        st.just(hostile("empty stream", (), md, INVALID)),
        bad_digest().map(
            lambda d: hostile(
                f"chunk digest {label(d)}",
                (P(header=H(manifest=b"{}")), P(chunk=C(digest=d, data=b"x"))),
                md,
                INVALID,
                d,
            )
        ),
    )


def _ref_rpc(w: World, rpc: str, make: Callable[[str], Message], field: str) -> S[Hostile]:
    md = credential(w, rpc)
    return st.one_of(
        text_field(w, rpc, make, field, st.one_of(bad_name(), bad_digest())),
        st.sampled_from(["nosuch@9.9.9", "sha256:" + "0" * 64]).map(
            lambda v: hostile(f"{field}={v}", make(v), md, UNKNOWN)
        ),
    )


def apply_config(w: World) -> S[Hostile]:
    md = bearer(w.operator)
    F = fleet_pb2.ManifestFile

    def req(*files: fleet_pb2.ManifestFile) -> fleet_pb2.ApplyConfigRequest:
        return fleet_pb2.ApplyConfigRequest(files=list(files))

    site = "apiVersion: edgefleet.io/v1\nkind: SiteConfig\nmetadata:\n  name: {n}\n  site: {s}\nspec:\n  config: {{}}\n"
    # aliases nested six deep: 9^6 nodes when expanded (a real billion laughs would only stall the test run)
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcde", "bcdef", strict=True)
    )
    return st.one_of(
        oversize((1 << 20) + 1).map(
            lambda v: hostile("content oversize", req(F(name="a.yaml", content=v)), md, INVALID, v)
        ),
        oversize().map(lambda v: hostile(f"file name {label(v)}", req(F(name=v, content="")), md, INVALID, v)),
        st.just(hostile("1001 files", req(*[F(name=f"f{i}.yaml", content="") for i in range(1001)]), md, INVALID)),
        st.just(hostile("billion laughs", req(F(name="bomb.yaml", content=bomb)), md, INVALID)),
        st.sampled_from(["a\x00b", "\u202esite", "Site One", "../../etc"]).map(
            lambda s: hostile(f"site {s!r}", req(F(name="s.yaml", content=site.format(n="s1", s=s))), md, INVALID, s)
        ),
        st.sampled_from(["kind: [unclosed\n", "\x00\x01\x02", "- - - -\n"]).map(
            lambda c: hostile(f"content {c[:10]!r}", req(F(name="b.yaml", content=c)), md, INVALID)
        ),
    )


def set_desired_bundle(w: World) -> S[Hostile]:
    md = bearer(w.operator)
    R = fleet_pb2.SetDesiredBundleRequest
    return st.one_of(
        bad_ref().map(
            lambda ve: hostile(f"device={label(ve[0])}", R(device=ve[0], bundle=w.bundle_digest), md, ve[1], ve[0])
        ),
        bad_name().map(lambda v: hostile(f"site={label(v)}", R(site=v, bundle=w.bundle_digest), md, INVALID, v)),
        bad_digest().map(lambda v: hostile(f"bundle={label(v)}", R(device=w.victim_id, bundle=v), md, INVALID, v)),
        st.just(hostile("unknown device", R(device="dev_0000000000000000", bundle=w.bundle_digest), md, NOT_FOUND)),
        st.just(hostile("unknown bundle", R(device=w.victim_id, bundle="classifier@9.9.9"), md, NOT_FOUND)),
        st.just(hostile("no target", R(bundle=w.bundle_digest), md, INVALID)),
    )


def create_rollout(w: World) -> S[Hostile]:
    md = bearer(w.operator)

    def req(**kw: Any) -> fleet_pb2.CreateRolloutRequest:
        base: dict[str, Any] = dict(
            name="r",
            bundle=w.bundle_digest,
            selector=fleet_pb2.RolloutSelector(sites=["lab"]),
            strategy=fleet_pb2.RolloutStrategy(waves=["1"]),
        )
        base.update(kw)
        return fleet_pb2.CreateRolloutRequest(**base)

    Sel, Strat, Gates = fleet_pb2.RolloutSelector, fleet_pb2.RolloutStrategy, fleet_pb2.RolloutGates
    return st.one_of(
        oversize().map(lambda v: hostile(f"name={label(v)}", req(name=v), md, INVALID, v)),
        bad_name().map(lambda v: hostile(f"selector.sites=[{label(v)}]", req(selector=Sel(sites=[v])), md, INVALID, v)),
        oversize().map(
            lambda v: hostile("selector tag oversize", req(selector=Sel(sites=["lab"], tags={"k": v})), md, INVALID, v)
        ),
        st.integers(101, 10_000).map(
            lambda n: hostile(f"{n} waves", req(strategy=Strat(waves=["1"] * n)), md, INVALID)
        ),
        st.sampled_from(["0", "-1", "150%", "1e9", "\x00"]).map(
            lambda v: hostile(f"wave {v!r}", req(strategy=Strat(waves=[v])), md, INVALID)
        ),
        st.sampled_from([math.nan, math.inf, -1.0, 1.5]).map(
            lambda v: hostile(f"max_failed_ratio={v}", req(gates=Gates(max_failed_ratio=v)), md, INVALID)
        ),
        oversize().map(lambda v: hostile("on_abort oversize", req(on_abort=v), md, INVALID, v)),
        st.just(hostile("on_abort explode", req(on_abort="explode"), md, INVALID)),
        st.just(hostile("unknown bundle", req(bundle="classifier@9.9.9"), md, NOT_FOUND)),
        st.just(hostile("no selector", req(selector=Sel()), md, INVALID)),
        bad_digest().map(lambda v: hostile(f"bundle={label(v)}", req(bundle=v), md, INVALID, v)),
    )


def rollout_id_rpc(w: World, rpc: str, make: Callable[..., Message]) -> S[Hostile]:
    md = credential(w, rpc)
    out = [
        bad_ref().map(lambda ve: hostile(f"id={label(ve[0])}", make(id=ve[0]), md, ve[1], ve[0])),
        st.just(hostile("unknown rollout", make(id="ro_0000000000000000"), md, NOT_FOUND)),
    ]
    if make is fleet_pb2.RolloutActionRequest:
        out.append(
            oversize().map(
                lambda v: hostile(f"reason={label(v)}", make(id="ro_0000000000000000", reason=v), md, INVALID, v)
            )
        )
    return st.one_of(*out)


def list_devices(w: World) -> S[Hostile]:
    md = bearer(w.viewer)
    R = fleet_pb2.ListDevicesRequest
    return st.one_of(
        bad_name().map(lambda v: hostile(f"site={label(v)}", R(site=v), md, INVALID, v)),
        st.sampled_from(["novalue", "k"]).map(lambda v: hostile(f"tag {v!r}", R(tags=[v]), md, INVALID, v)),
        oversize().map(lambda v: hostile("tag oversize", R(tags=[f"k={v}"]), md, INVALID, v)),
        st.integers(65, 5000).map(
            lambda n: hostile(f"{n} tag filters", R(tags=[f"k{i}=v" for i in range(n)]), md, INVALID)
        ),
        st.sampled_from(["sha256:nothex", "\x00", "nosuch@9.9.9"]).map(
            lambda v: hostile(f"bundle={v!r}", R(bundle=v), md, UNKNOWN, v)
        ),
        oversize().map(lambda v: hostile(f"bundle={label(v)}", R(bundle=v), md, INVALID, v)),
        st.sampled_from([99, -1]).map(lambda v: hostile(f"health={v}", R(health=v), md, INVALID)),
        st.sampled_from(["garbage", "\x00", "eyJ4IjoxfQ"]).map(
            lambda v: hostile(f"page_token={v!r}", R(page_token=v), md, INVALID, v)
        ),
        oversize().map(lambda v: hostile("page_token oversize", R(page_token=v), md, INVALID, v)),
        bad_timestamp().map(lambda ts: hostile(f"seen_since={ts.seconds}", R(seen_since=ts), md, INVALID)),
    )


def _device_ref_rpc(w: World, rpc: str, make: Callable[[str], Message]) -> S[Hostile]:
    md = credential(w, rpc)
    return st.one_of(
        bad_ref().map(lambda ve: hostile(f"device={label(ve[0])}", make(ve[0]), md, ve[1], ve[0])),
        st.sampled_from(["dev_0000000000000000", "no-such-cam"]).map(
            lambda v: hostile(f"device={v}", make(v), md, NOT_FOUND)
        ),
    )


def query_telemetry(w: World) -> S[Hostile]:
    md = bearer(w.viewer)
    R = fleet_pb2.QueryTelemetryRequest

    return st.one_of(
        st.sampled_from(["garbage", "nosuch@1.0.0", "sha256:nothex"]).map(
            lambda v: hostile(f"bundle={v!r}", R(bundle=v), md, INVALID, v)
        ),
        bad_digest().map(lambda v: hostile(f"bundle={label(v)}", R(bundle=v), md, INVALID, v)),
        st.sampled_from(["hour", "DEVICE", "\x00", "x" * 17]).map(
            lambda v: hostile(f"group_by={v!r}", R(group_by=v), md, INVALID, v)
        ),
        bad_name().map(lambda v: hostile(f"site={label(v)}", R(site=v), md, INVALID, v)),
        oversize().map(lambda v: hostile(f"device={label(v)}", R(device=v), md, INVALID, v)),
        bad_timestamp().map(lambda ts: hostile(f"since={ts.seconds}", R(since=ts), md, INVALID)),
    )


def list_review_samples(w: World) -> S[Hostile]:
    md = bearer(w.viewer)
    R = fleet_pb2.ListReviewSamplesRequest
    return st.one_of(
        st.sampled_from(["maybe", "TP", "\x00"]).map(lambda v: hostile(f"label={v!r}", R(label=v), md, INVALID, v)),
        bad_name().map(lambda v: hostile(f"site={label(v)}", R(site=v), md, INVALID, v)),
        bad_digest().map(lambda v: hostile(f"bundle={label(v)}", R(bundle=v), md, INVALID, v)),
    )


def label_review_sample(w: World) -> S[Hostile]:
    md = bearer(w.operator)
    R = fleet_pb2.LabelReviewSampleRequest
    return st.one_of(
        oversize().map(lambda v: hostile(f"sample_id={label(v)}", R(sample_id=v, label="tp"), md, INVALID, v)),
        st.just(hostile("empty sample_id", R(sample_id="", label="tp"), md, INVALID)),
        st.just(hostile("unknown sample", R(sample_id="rs-nope", label="tp"), md, NOT_FOUND)),
        st.sampled_from(["maybe", "TP", "\x00", "x" * 64]).map(
            lambda v: hostile(f"label={label(v)}", R(sample_id=w.sample_id, label=v), md, INVALID, v)
        ),
        # the victim's sample named with another device: nothing of that device's to label
        st.just(
            hostile(
                "sample of another device", R(sample_id=w.sample_id, label="fp", device=w.hostile_id), md, NOT_FOUND
            )
        ),
        bad_ref().map(
            lambda ve: hostile(
                f"device={label(ve[0])}", R(sample_id=w.sample_id, label="tp", device=ve[0]), md, ve[1], ve[0]
            )
        ),
    )


def list_profiles(w: World) -> S[Hostile]:
    md = bearer(w.viewer)
    R = fleet_pb2.ListProfilesRequest
    return st.one_of(
        st.one_of(bad_name(), bad_digest()).map(
            lambda v: hostile(f"bundles=[{label(v)}]", R(bundles=[v]), md, INVALID, v)
        ),
        st.just(hostile("unknown bundle", R(bundles=["nosuch@9.9.9"]), md, UNKNOWN)),
        st.integers(101, 5000).map(lambda n: hostile(f"{n} bundles", R(bundles=[w.bundle_digest] * n), md, INVALID)),
        oversize().map(lambda v: hostile(f"hardware_class={label(v)}", R(hardware_class=v), md, INVALID, v)),
    )


def create_enrollment_token(w: World) -> S[Hostile]:
    md = bearer(w.admin)
    R = fleet_pb2.CreateEnrollmentTokenRequest
    return st.one_of(
        st.sampled_from(["a\x00b", "site one", "zürich", "\u202elab", "../lab", "", "-lab", "Lab"]).map(
            lambda v: hostile(f"site={v!r}", R(site=v), md, INVALID, v)
        ),
        oversize().map(lambda v: hostile(f"site={label(v)}", R(site=v), md, INVALID, v)),
    )


def create_operator_token(w: World) -> S[Hostile]:
    md = bearer(w.admin)
    R = fleet_pb2.CreateOperatorTokenRequest
    cases = [
        oversize().map(lambda v: hostile(f"name={label(v)}", R(name=v, role="viewer"), md, INVALID, v)),
        st.sampled_from(["root", "ADMIN", "\x00", "x" * 17]).map(
            lambda v: hostile(f"role={v!r}", R(name="t", role=v), md, INVALID, v)
        ),
    ]
    if "no_expiry" in R.DESCRIPTOR.fields_by_name:
        cases.append(
            st.just(hostile("ttl_s with no_expiry", R(name="t", role="viewer", ttl_s=60, no_expiry=True), md, INVALID))
        )
    return st.one_of(*cases)


def add_trusted_key(w: World) -> S[Hostile]:
    md = bearer(w.admin)
    R = fleet_pb2.AddTrustedKeyRequest
    return st.one_of(
        oversize().map(lambda v: hostile(f"key_id={label(v)}", R(key_id=v, public_key_pem="x"), md, INVALID, v)),
        st.sampled_from(["", "not a pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"]).map(
            lambda p: hostile(f"pem {p[:12]!r}", R(key_id="k2", public_key_pem=p), md, INVALID)
        ),
        oversize(20_000).map(lambda v: hostile("pem oversize", R(key_id="k3", public_key_pem=v), md, INVALID, v)),
        st.just(
            hostile(
                "existing key id, other key",
                R(key_id=w.key_id, public_key_pem="x"),
                md,
                frozenset({Code.ALREADY_EXISTS, Code.INVALID_ARGUMENT}),
            )
        ),
    )


def delete_telemetry(w: World) -> S[Hostile]:

    md = bearer(w.admin)
    R = _maker("DeleteTelemetryRequest")
    t1, t2 = Timestamp(seconds=1_000_000), Timestamp(seconds=2_000_000)
    return st.one_of(
        bad_ref().map(
            lambda ve: hostile(f"device={label(ve[0])}", R(device=ve[0], since=t1, until=t2), md, ve[1], ve[0])
        ),
        st.just(hostile("unknown device", R(device="dev_0000000000000000", since=t1, until=t2), md, NOT_FOUND)),
        st.just(hostile("until before since", R(device=w.victim_id, since=t2, until=t1), md, INVALID)),
        st.just(hostile("no range", R(device=w.victim_id), md, INVALID)),
        bad_timestamp().map(
            lambda ts: hostile(f"since={ts.seconds}", R(device=w.victim_id, since=ts, until=t2), md, INVALID)
        ),
    )


def auth_only(w: World, rpc: str, request: Message) -> S[Hostile]:
    """An RPC without fields to break (a listing): only its credentials are hostile."""
    md = credential(w, rpc)
    return st.just(hostile("well-formed request", request, md, frozenset({Code.OK})))


def _maker(name: str) -> Callable[..., Message]:
    return getattr(fleet_pb2, name)  # type: ignore[no-any-return]


def hostile_cases(w: World, windows: Callable[[str], S[telemetry_pb2.TelemetryBatch]]) -> dict[str, S[Hostile]]:
    """RPC short name → strategy of hostile calls for it, each also drawn with refused credentials."""
    F = fleet_pb2
    device_action = _maker("DeviceActionRequest") if hasattr(F, "DeviceActionRequest") else None
    cases: dict[str, S[Hostile]] = {
        "Enroll": enroll(w),
        "Sync": sync(w),
        "FetchBlob": fetch_blob(w),
        "ReportEvent": report_event(w),
        "UploadTelemetry": upload_telemetry(w, windows),
        "PushBundle": push_bundle(w),
        "ListBundles": text_field(w, "ListBundles", lambda v: F.ListBundlesRequest(name=v), "name", oversize()),
        "GetBundle": _ref_rpc(w, "GetBundle", lambda v: F.GetBundleRequest(ref=v), "ref"),
        "DeleteBundle": st.one_of(
            _ref_rpc(w, "DeleteBundle", lambda v: F.DeleteBundleRequest(ref=v), "ref"),
            st.just(
                hostile(
                    "a bundle a device wants",
                    F.DeleteBundleRequest(ref=w.bundle_digest),
                    bearer(w.operator),
                    frozenset({Code.FAILED_PRECONDITION}),
                )
            ),
        ),
        "ApplyConfig": apply_config(w),
        "GetEffectiveConfig": _device_ref_rpc(w, "GetEffectiveConfig", lambda v: F.GetEffectiveConfigRequest(device=v)),
        "SetDesiredBundle": set_desired_bundle(w),
        "CreateRollout": create_rollout(w),
        "GetRollout": rollout_id_rpc(w, "GetRollout", F.GetRolloutRequest),
        "WatchRollout": rollout_id_rpc(w, "WatchRollout", F.GetRolloutRequest),
        "ListRollouts": st.sampled_from([99, -1]).map(
            lambda p: hostile(f"phases=[{p}]", F.ListRolloutsRequest(phases=[p]), bearer(w.viewer), INVALID)
        ),
        **{
            name: rollout_id_rpc(w, name, F.RolloutActionRequest)
            for name in ("PauseRollout", "ResumeRollout", "ApproveRollout", "AbortRollout")
        },
        "ListDevices": list_devices(w),
        "GetDevice": _device_ref_rpc(w, "GetDevice", lambda v: F.GetDeviceRequest(device=v)),
        "ListSites": auth_only(w, "ListSites", F.ListSitesRequest()),
        "WatchFleet": bad_name().map(
            lambda v: hostile(
                f"site={label(v)}", F.WatchFleetRequest(site=v, snapshot=True), bearer(w.viewer), INVALID, v
            )
        ),
        "ListDeviceEvents": _device_ref_rpc(w, "ListDeviceEvents", lambda v: F.ListDeviceEventsRequest(device=v)),
        "QueryTelemetry": query_telemetry(w),
        "ListReviewSamples": list_review_samples(w),
        "LabelReviewSample": label_review_sample(w),
        "ListProfiles": list_profiles(w),
        "CreateEnrollmentToken": create_enrollment_token(w),
        "RevokeEnrollmentToken": st.one_of(
            text_field(
                w, "RevokeEnrollmentToken", lambda v: F.RevokeEnrollmentTokenRequest(token_id=v), "token_id", oversize()
            ),
            st.just(
                hostile(
                    "unknown token", F.RevokeEnrollmentTokenRequest(token_id="eft_nope"), bearer(w.admin), NOT_FOUND
                )
            ),
        ),
        "CreateOperatorToken": create_operator_token(w),
        "AddTrustedKey": add_trusted_key(w),
        "ListTrustedKeys": auth_only(w, "ListTrustedKeys", F.ListTrustedKeysRequest()),
    }
    if hasattr(F, "DeleteTelemetryRequest"):
        cases["DeleteTelemetry"] = delete_telemetry(w)
    if hasattr(F, "ListOperatorTokensRequest"):
        cases["ListOperatorTokens"] = auth_only(w, "ListOperatorTokens", _maker("ListOperatorTokensRequest")())
    if hasattr(F, "RevokeOperatorTokenRequest"):
        R = _maker("RevokeOperatorTokenRequest")
        cases["RevokeOperatorToken"] = st.one_of(
            text_field(w, "RevokeOperatorToken", lambda v: R(token_id=v), "token_id", oversize()),
            st.just(hostile("unknown token", R(token_id="nope"), bearer(w.admin), NOT_FOUND)),
        )
    if device_action is not None:
        for name in ("DisableDevice", "EnableDevice", "DeleteDevice", "RotateDeviceCredential"):
            cases[name] = _device_ref_rpc(w, name, lambda v, make=device_action: make(device=v))
    return {rpc: with_credentials(w, rpc, strategy) for rpc, strategy in cases.items()}
