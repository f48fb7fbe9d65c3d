"""proto ⇄ domain at the gRPC edge: requests into the services' values, their records and views into
messages. Nothing here touches the store or decides anything."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_sections import ArtifactRef as BundleArtifact
from edgefleet.v1 import common_pb2, fleet_pb2
from edgefleet_controller import errors as cerr
from edgefleet_controller.bundles.service import QuarantinedArtifact
from edgefleet_controller.devices.delivery import Delivery
from edgefleet_controller.devices.service import DeviceChange, DeviceReport, DeviceView
from edgefleet_controller.fleet_feed import FleetFeed
from edgefleet_controller.store.bundle_failures import BundleFailure
from edgefleet_controller.store.records import (
    BundleRecord,
    DesiredState,
    OperatorRecord,
    SiteSummary,
    TrustedKeyRecord,
)


def to_timestamp(value: datetime | None) -> Timestamp:
    ts = Timestamp()
    if value is not None:
        ts.FromDatetime(value)
    return ts


def health_name(value: int) -> str:
    """``Health`` value → its name (``healthy``); ``ValueError`` if unknown."""
    return common_pb2.Health.Name(common_pb2.Health.ValueType(value)).removeprefix("HEALTH_").lower()


def health_filter(value: int) -> str | None:
    """ListDevices' health filter as a health name (None: no filter); ``InvalidArgument`` if unknown."""
    if not value:
        return None
    try:
        return health_name(value)
    except ValueError:
        known = ", ".join(common_pb2.Health.keys())
        raise cerr.InvalidArgument(f"health filter must be one of {known}, got {value}") from None


def health_value(name: str) -> int:
    try:
        return int(common_pb2.Health.Value(f"HEALTH_{name.upper()}"))
    except ValueError:
        return int(common_pb2.HEALTH_UNSPECIFIED)


# ---------------------------------------------------------------------------------------------- devices


def device_report(reported: common_pb2.ReportedState) -> DeviceReport:
    """The report's digest now; its mappings (``MessageToDict``, the costly part) only if the store needs them."""

    def read() -> tuple[dict[str, Any], dict[str, Any]]:
        state = MessageToDict(reported, preserving_proto_field_name=True)
        document = {
            "running_bundle": reported.running_bundle_digest or None,
            "health": health_name(reported.health) if reported.health else "unknown",
            "slots": {f"slot{i}": {"bundle": d} for i, d in enumerate(reported.slot_digests)},
            "state": state,
        }
        return document, state

    return DeviceReport(hashlib.sha256(reported.SerializeToString(deterministic=True)).hexdigest(), read)


def fill_desired(msg: common_pb2.DesiredState, desired: DesiredState) -> None:
    msg.revision = desired.revision
    msg.bundle_digest = desired.bundle_digest or ""
    msg.config_digest = desired.config_digest or ""
    msg.rollout_id = desired.rollout_id or ""
    msg.reason = desired.reason or ""
    msg.assignment_id = desired.assignment_id or ""


def device_message(view: DeviceView) -> common_pb2.Device:
    rec = view.record
    msg = common_pb2.Device(
        id=rec.id,
        name=rec.name,
        site=rec.site,
        tags=dict(rec.tags),
        enrolled_at=to_timestamp(rec.enrolled_at),
        last_seen=to_timestamp(rec.last_seen),
    )
    if rec.disabled_at is not None:
        msg.disabled_at.FromDatetime(rec.disabled_at)
    ParseDict(dict(rec.facts), msg.hardware, ignore_unknown_fields=True)
    state = rec.reported.get("state")
    if isinstance(state, Mapping):
        ParseDict(dict(state), msg.reported, ignore_unknown_fields=True)
    msg.health = health_value(view.health)  # type: ignore[assignment]
    msg.hardware_mismatch = view.hardware_mismatch
    if view.desired is not None:
        fill_desired(msg.desired, view.desired)
    return msg


def desired_message(delivery: Delivery) -> common_pb2.DesiredState:
    msg = common_pb2.DesiredState()
    fill_desired(msg, delivery.desired)
    if delivery.bundle is not None:
        msg.bundle_manifest = delivery.bundle.manifest
        msg.bundle_signature = delivery.bundle.signature
        msg.artifacts.extend(artifact_refs(delivery.bundle.artifacts))
    if delivery.config_json is not None:
        msg.config_json = delivery.config_json
    return msg


def site_message(s: SiteSummary) -> fleet_pb2.SiteSummary:
    by_bundle = {str(k): n for k, n in s.by_bundle.items()}
    return fleet_pb2.SiteSummary(site=s.site, devices=s.devices, by_bundle=by_bundle, by_health=dict(s.by_health))


_FEED_KINDS = {
    DeviceChange.ENROLLED: fleet_pb2.FleetEvent.KIND_ENROLLED,
    DeviceChange.UPDATED: fleet_pb2.FleetEvent.KIND_UPDATED,
}


class FeedAnnouncer:
    """Device changes onto the fleet feed, as the ``Device`` messages WatchFleet streams."""

    def __init__(self, feed: FleetFeed) -> None:
        self.feed = feed

    def __call__(self, change: DeviceChange, view: DeviceView) -> None:
        self.feed.publish_device(_FEED_KINDS[change], device_message(view))


# ---------------------------------------------------------------------------------------------- bundles


def bundle_summary(rec: BundleRecord) -> common_pb2.BundleSummary:
    manifest = BundleManifest.from_json_bytes(rec.manifest)
    summary = common_pb2.BundleSummary(digest=rec.digest, name=rec.name, version=rec.version, key_id=rec.key_id)
    summary.size_bytes = rec.size
    summary.created_at.CopyFrom(to_timestamp(rec.created_at))
    # what the bundle declares, shown in listings
    summary.sla_ms = manifest.latency.sla_ms
    summary.postprocess_kind = manifest.postprocess.kind
    return summary


def artifact_refs(artifacts: Iterable[BundleArtifact]) -> list[common_pb2.ArtifactRef]:
    return [
        common_pb2.ArtifactRef(role=a.role, path=a.path, digest=a.digest, size_bytes=a.size, media_type=a.media_type)
        for a in artifacts
    ]


def bundle_failure(f: BundleFailure) -> fleet_pb2.BundleFailure:
    return fleet_pb2.BundleFailure(
        bundle_digest=f.bundle_digest,
        device_id=f.device_id,
        device_name=f.device_name,
        rollout_id=f.rollout_id or "",
        assignment_id=f.assignment_id,
        kind=f.kind,
        summary=f.summary,
        at=to_timestamp(f.at),
    )


def quarantined_blob(q: QuarantinedArtifact) -> fleet_pb2.QuarantinedBlob:
    r = q.record
    return fleet_pb2.QuarantinedBlob(
        digest=r.digest,
        actual_digest=r.actual,
        size_bytes=r.size,
        detected_by=r.detected_by,
        at=to_timestamp(r.at),
        quarantine_path=r.path,
        restored=q.restored,
        role=q.role,
    )


# ---------------------------------------------------------------------------------------------- auth, profiles


def operator_token(r: OperatorRecord) -> fleet_pb2.OperatorToken:
    """An operator token as listed; unset times (never expires, never used, not revoked) stay unset."""
    msg = fleet_pb2.OperatorToken(id=r.id, name=r.name, role=r.role.value, created_at=to_timestamp(r.created_at))
    for name, value in (("expires_at", r.expires_at), ("last_used_at", r.last_used_at), ("revoked_at", r.revoked_at)):
        if value is not None:
            getattr(msg, name).FromDatetime(value)
    return msg


def trusted_key(r: TrustedKeyRecord) -> fleet_pb2.TrustedKey:
    return fleet_pb2.TrustedKey(key_id=r.key_id, public_key_pem=r.public_key_pem, added_at=to_timestamp(r.added_at))


def profile_summary(row: Mapping[str, Any], refs: Mapping[str, str]) -> fleet_pb2.ProfileSummary:
    return fleet_pb2.ProfileSummary(
        bundle_digest=row["bundle_digest"],
        bundle_ref=refs.get(row["bundle_digest"], ""),
        hardware_class=row["hardware_class"],
        p95_ms=row["p95_ms"],
        p50_ms=row["p50_ms"],
        samples=row["samples"],
        source=row["source"],
        measured_at=to_timestamp(row["measured_at"]),
        device_id=row["device_id"],
    )
