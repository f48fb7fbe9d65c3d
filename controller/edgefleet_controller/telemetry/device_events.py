"""``DeviceEventService``: what devices report as events (ReportEvent), and the reads over them.

Events are stored as their proto's JSON mapping and published on the fleet feed as sent. A canary verdict or
a rollback feeds the rollouts' failure rules; a profile, or a canary's candidate latency, is a latency
measurement admission uses (``list_profiles`` shows them). An event whose reason says a downloaded artifact
did not hash to its digest makes the controller hash its own copy again (``BlobIntegrity.reverify``), which
quarantines it when it is the controller's copy that is corrupt.

A ReportEvent call is checked whole before anything of it is stored (``check_events``, then each event's
time and kind): a refused call stores no event and no profile.

Store calls are synchronous transactions run in worker threads (``asyncio.to_thread``); the clock is injected.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import structlog
from google.protobuf.json_format import MessageToDict, ParseDict

from edgefleet.contract.digests import mismatched_digests
from edgefleet.contract.shown import shown
from edgefleet.v1 import telemetry_pb2
from edgefleet_controller import errors as cerr
from edgefleet_controller.bundles.blob_integrity import BlobIntegrity
from edgefleet_controller.bundles.service import bundle_refs
from edgefleet_controller.clock import Clock
from edgefleet_controller.devices.directory import DeviceDirectory
from edgefleet_controller.devices.hardware_claims import claims_other_class
from edgefleet_controller.fleet_feed import FleetFeed
from edgefleet_controller.metrics import ControllerMetrics
from edgefleet_controller.rollout.service import RolloutService
from edgefleet_controller.store import EventInput
from edgefleet_controller.store import errors as serr
from edgefleet_controller.store.bundles import BundleStore
from edgefleet_controller.store.devices import DeviceStore
from edgefleet_controller.store.events import EventStore

log = structlog.get_logger("edgefleet.controller")

Event = telemetry_pb2.DeviceEvent
_FAILURE_EVENT_KINDS = (Event.KIND_CANARY_VERDICT, Event.KIND_ROLLBACK)
_PROFILE_EVENT_KINDS = (Event.KIND_PROFILE, Event.KIND_CANARY_VERDICT)
#: Events ListDeviceEvents returns when the request sets no limit.
DEFAULT_EVENT_LIMIT = 50


def reported_mismatches(events: Sequence[Event]) -> list[str]:
    """The artifact digests these events say a device's download did not hash to (worded by the runtime's
    verification with ``edgefleet.contract.digests.mismatch_reason``), each once."""
    return list(dict.fromkeys(d for ev in events for d in mismatched_digests(ev.reason)))


_PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")


def _measured_figures(ev: Event) -> Iterator[tuple[str, float]]:
    """Every number an event's latency measurement carries, by field path."""
    if ev.kind == Event.KIND_PROFILE and ev.HasField("profile"):
        p = ev.profile
        yield "profile.seconds", p.seconds
        yield "profile.fps", p.fps
        for part in ("pre", "model", "post", "total"):
            for name in _PERCENTILES:
                yield f"profile.{part}.{name}", getattr(getattr(p, part), name)
    elif ev.kind == Event.KIND_CANARY_VERDICT:
        for name in _PERCENTILES:
            yield f"verdict.candidate_latency.{name}", getattr(ev.verdict.candidate_latency, name)


def check_events(events: Sequence[Event]) -> None:
    """Refuse (``InvalidArgument``, naming the event, the field and the value) a call with a latency
    measurement that is not a finite number >= 0, before any of its events or profiles is stored."""
    for i, ev in enumerate(events):
        for path, value in _measured_figures(ev):
            if not (math.isfinite(value) and value >= 0):
                raise cerr.InvalidArgument(
                    f"ReportEvent: events[{i}] (event_id {shown(ev.event_id)}): {path} must be a finite number "
                    f">= 0, got {value}; nothing of this call was stored"
                )


def event_kind_name(value: int) -> str:
    """``DeviceEvent.Kind`` value → its stored name (``canary_verdict``); ``InvalidArgument`` if unknown."""
    try:
        name = Event.Kind.Name(Event.Kind.ValueType(value))
    except ValueError:
        known = ", ".join(Event.Kind.keys())
        raise cerr.InvalidArgument(f"DeviceEvent.kind must be one of {known}, got {value}") from None
    return name.removeprefix("KIND_").lower()


@dataclass(eq=False)
class DeviceEventService:
    store: EventStore
    devices: DeviceStore
    bundles: BundleStore
    directory: DeviceDirectory
    rollouts: RolloutService
    feed: FleetFeed
    clock: Clock
    integrity: BlobIntegrity
    metrics: ControllerMetrics | None = None

    async def report_events(self, device_id: str, events: Sequence[Event], site: str = "") -> int:
        """Store a device's events (idempotent by ``event_id``); returns how many were new. The whole call is
        checked first: a refused call stores nothing."""
        check_events(events)
        inputs = []
        for ev in events:
            at = cerr.timestamp_arg(ev.at, "DeviceEvent.at") if ev.HasField("at") else self.clock()
            seq = int(hashlib.sha256(ev.event_id.encode()).hexdigest()[:15], 16) if ev.event_id else None
            kind = event_kind_name(ev.kind)
            payload = MessageToDict(ev, preserving_proto_field_name=True)
            inputs.append(EventInput(kind, payload, at, seq))
        stored = await asyncio.to_thread(self.store.record_many, device_id, inputs, self.clock())
        await self._record_profiles(device_id, events)
        # a bundle these events show failing (a FAIL verdict, a rollback) under an assignment is remembered
        failing = [(ev, i) for ev, i in zip(events, inputs, strict=True) if ev.kind in _FAILURE_EVENT_KINDS]
        if failing:
            device = await asyncio.to_thread(self.devices.get, device_id)
            for ev, item in failing:
                if ev.kind == Event.KIND_CANARY_VERDICT:
                    verdict = MessageToDict(ev.verdict, preserving_proto_field_name=True)
                    await self.rollouts.note_verdict(device, verdict, item.at)
                else:
                    await self.rollouts.note_rollback(device, ev.bundle_digest, ev.reason, ev.revision, item.at)
        for ev in events:
            self.feed.publish_event(device_id, ev, site)
        for digest in reported_mismatches(events):
            try:
                await self.integrity.reverify(digest, f"device {device_id} reporting a digest mismatch")
            except (OSError, serr.StoreError):  # the events are stored: a failed re-check must not refuse them
                log.exception("blob.reverify_failed", digest=digest, device_id=device_id)
        self.rollouts.wake()
        return stored

    async def _record_profiles(self, device_id: str, events: Sequence[Event]) -> None:
        """Latency measured on devices feeds admission: explicit profiles, and every canary's candidate p95,
        always under the device's enrolled hardware class; a profile claiming another class is not recorded
        (logged and counted; the device is flagged, ``devices.hardware_claims``)."""
        relevant = [ev for ev in events if ev.kind in _PROFILE_EVENT_KINDS]
        if not relevant:
            return
        device = await asyncio.to_thread(self.devices.get, device_id)
        for ev in relevant:
            at = ev.at.ToDatetime(tzinfo=UTC) if ev.HasField("at") else self.clock()
            if ev.kind == Event.KIND_PROFILE and ev.profile.total.count:
                p = ev.profile
                digest, total, source = p.bundle_digest or ev.bundle_digest, p.total, "profile"
                if claims_other_class(device.hardware_class, p.hardware_class):
                    # the device says it measured other hardware: it counts for neither class (it re-enrolls)
                    log.warning(
                        "profile.hardware_mismatch",
                        device_id=device_id,
                        enrolled=device.hardware_class,
                        claimed=shown(p.hardware_class),
                        bundle=shown(digest),
                    )
                    if self.metrics is not None:
                        self.metrics.profiles_refused.labels(reason="hardware_mismatch").inc()
                    continue
            elif ev.kind == Event.KIND_CANARY_VERDICT and ev.verdict.candidate_latency.count:
                v = ev.verdict
                digest, total, source = v.candidate_digest or ev.bundle_digest, v.candidate_latency, "canary"
            else:
                continue
            if not digest:
                continue
            await asyncio.to_thread(
                functools.partial(
                    self.rollouts.profiles.record,
                    hardware_class=device.hardware_class,
                    bundle_digest=digest,
                    p95_ms=total.p95_ms,
                    p50_ms=total.p50_ms,
                    source=source,
                    measured_at=at,
                    device_id=device_id,
                )
            )

    async def list_profiles(
        self, bundles: Sequence[str], hardware_class: str
    ) -> tuple[list[Mapping[str, Any]], dict[str, str]]:
        """Latency profiles (of these bundles and this hardware class; empty = all) and ``name@version`` by
        bundle digest."""
        digests = [(await asyncio.to_thread(self.bundles.get, ref)).digest for ref in bundles]
        rows = await asyncio.to_thread(self.rollouts.profile_summaries, digests or None, hardware_class or None)
        refs = await asyncio.to_thread(bundle_refs, self.bundles)
        return rows, refs

    async def list_events(self, device: str, limit: int) -> list[Event]:
        """A device's (id or name) newest ``limit`` events, oldest of them first (the newest last)."""
        rec = await self.directory.find_device(device)
        records = await asyncio.to_thread(self.store.latest, rec.id, limit or DEFAULT_EVENT_LIMIT)
        out = []
        for r in records:
            msg = Event()
            ParseDict(dict(r.payload), msg, ignore_unknown_fields=True)
            out.append(msg)
        return out
