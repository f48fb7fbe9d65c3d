"""The controller's service layer: every operation the servicers delegate to, over the store, the blob
directory, the long-poll hub and the fleet event feed.

Store calls are synchronous SQLAlchemy transactions; they run in worker threads (``asyncio.to_thread``)
so the event loop only ever waits. The clock is injected (``now``) so tests can move time.

What a Sync costs: a device that re-syncs with an unchanged report and an unchanged desired state costs
no database access and no thread hop. Three caches make that so:

- desired state per device (``_DesiredCache``), evicted by ``SyncHub.notify`` — the signal every writer
  of desired state already has to send to wake waiting devices; a read that raced an eviction is dropped;
- the immutable pieces of desired-state messages (bundle manifest, signature, artifact list by bundle
  digest; effective config JSON by config digest), content-addressed and so never stale;
- the last report per device (``_ReportMemo``): an identical report is written at most every
  ``REPORT_REFRESH_S`` seconds, to keep ``last_seen`` fresh.

``SyncRequest.wait_s = 0`` means the default (30 s): proto3 cannot tell 0 from unset. A device that wants
an immediate answer sends a ``known_revision`` it knows to be stale (e.g. 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import grpc
import structlog
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.errors import ContractError, ManifestError
from edgefleet.contract.manifest import (
    DeviceFacts,
    EffectiveConfig,
    ManifestDoc,
    ManifestKind,
    check_document_set,
    config_layers,
    effective_config,
    parse_manifests,
)
from edgefleet.contract.precedence import resolve_policy
from edgefleet.contract.signing import TrustedKeys, check_key_id, verify_signature
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2, telemetry_pb2
from edgefleet_controller import errors as cerr
from edgefleet_controller.auth import CredentialCache, Principal, Role
from edgefleet_controller.fleet_feed import FleetFeed
from edgefleet_controller.hub import SyncHub
from edgefleet_controller.metrics import ControllerMetrics
from edgefleet_controller.replicas import ChangeRelay
from edgefleet_controller.rollout.configs import StoreConfigTargets, resolve_config_ref, with_staged
from edgefleet_controller.rollout.service import RolloutService
from edgefleet_controller.store import BlobStore, EventInput, Store
from edgefleet_controller.store import errors as serr
from edgefleet_controller.store.records import (
    ArtifactRef,
    BundleRecord,
    ConfigDocInput,
    DesiredState,
    DeviceRecord,
    OperatorRole,
)
from edgefleet_controller.telemetry.ingest import BatchError
from edgefleet_controller.telemetry.query import QueryError
from edgefleet_controller.telemetry.review import ReviewQueryError
from edgefleet_controller.telemetry.service import TelemetryService

log = structlog.get_logger("edgefleet.controller")

DEFAULT_WAIT_S = 30
MAX_WAIT_S = 300
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 4 << 20
#: A device that has not synced for this long is shown as offline.
OFFLINE_AFTER = timedelta(seconds=120)
#: Reported state is written when it changes, and at least this often to keep last_seen fresh.
REPORT_REFRESH_S = 15.0

Clock = Callable[[], datetime]
_FAILURE_EVENT_KINDS = (telemetry_pb2.DeviceEvent.KIND_CANARY_VERDICT, telemetry_pb2.DeviceEvent.KIND_ROLLBACK)


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_timestamp(value: datetime | None) -> Timestamp:
    ts = Timestamp()
    if value is not None:
        ts.FromDatetime(value)
    return ts


def health_name(value: int) -> str:
    return common_pb2.Health.Name(common_pb2.Health.ValueType(value)).removeprefix("HEALTH_").lower()


def event_kind_name(value: int) -> str:
    """``DeviceEvent.Kind`` value → its stored name (``canary_verdict``); ``InvalidArgument`` if unknown."""
    try:
        name = telemetry_pb2.DeviceEvent.Kind.Name(telemetry_pb2.DeviceEvent.Kind.ValueType(value))
    except ValueError:
        known = ", ".join(telemetry_pb2.DeviceEvent.Kind.keys())
        raise cerr.InvalidArgument(f"DeviceEvent.kind must be one of {known}, got {value}") from None
    return name.removeprefix("KIND_").lower()


def health_value(name: str) -> int:
    try:
        return int(common_pb2.Health.Value(f"HEALTH_{name.upper()}"))
    except ValueError:
        return int(common_pb2.HEALTH_UNSPECIFIED)


#: Typed refusals of bad input besides ``ControllerError`` (which carries its own code): INVALID_ARGUMENT with
#: their message (telemetry's: a batch, a query, a review-sample filter).
_INPUT_ERRORS = (
    serr.InvalidArgument,
    serr.BlobIntegrityError,
    ContractError,
    BatchError,
    QueryError,
    ReviewQueryError,
)


def map_error(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """Map store, contract and telemetry input errors to gRPC statuses; None for anything unexpected.

    Only typed errors are bad input: a bare ``ValueError`` (or ``KeyError``, a SQL error...) is the
    controller's own bug, which the interceptor reports as INTERNAL with a request id, never its text.
    """
    code: grpc.StatusCode | None = None
    if isinstance(exc, serr.TokenRejected):
        code = grpc.StatusCode.UNAUTHENTICATED
    elif isinstance(exc, serr.NotFound):
        code = grpc.StatusCode.NOT_FOUND
    elif isinstance(exc, serr.StillReferenced):
        code = grpc.StatusCode.FAILED_PRECONDITION
    elif isinstance(exc, serr.Conflict):
        code = grpc.StatusCode.ALREADY_EXISTS
    elif isinstance(exc, serr.OffsetOutOfRange):
        code = grpc.StatusCode.OUT_OF_RANGE
    elif isinstance(exc, _INPUT_ERRORS):
        code = grpc.StatusCode.INVALID_ARGUMENT
    return (code, str(exc)) if code is not None else None


@dataclass
class _ReportMemo:
    digest: str
    written_at: float


class _DesiredCache:
    """Last known desired state per device. ``evict`` bumps a generation; a value read from the store
    before an eviction is not stored after it (it may predate the change that caused the eviction)."""

    def __init__(self) -> None:
        self._by_device: dict[str, DesiredState] = {}
        self.generation = 0

    def get(self, device_id: str) -> DesiredState | None:
        return self._by_device.get(device_id)

    def put(self, desired: DesiredState, generation: int) -> None:
        if generation == self.generation:
            self._by_device[desired.device_id] = desired

    def evict(self, device_ids: Collection[str] | None) -> None:
        self.generation += 1
        if device_ids is None:
            self._by_device.clear()
            return
        for device_id in device_ids:
            self._by_device.pop(device_id, None)


@dataclass(frozen=True)
class _BundlePieces:
    manifest: bytes
    signature: bytes
    artifacts: tuple[common_pb2.ArtifactRef, ...]

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(a.digest for a in self.artifacts)


#: Content-addressed pieces kept in memory (bundles and configs in use at once are few).
PIECES_MAX = 256


def replica_id(data_dir: Path) -> str:
    """This controller's stable identity for database leases, kept in ``DATA_DIR/replica.id``.

    A controller restarted on the same data dir is the same replica, so it takes its reconciler lease back
    at once instead of waiting for the dead process's lease to expire; replicas sharing one PostgreSQL
    database each have their own data dir, hence their own id.
    """
    path = data_dir / "replica.id"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        ident = f"{socket.gethostname()}-{secrets.token_hex(4)}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(ident + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return ident


class ControllerApp:
    """Everything the controller does, behind the servicers."""

    def __init__(self, data_dir: Path, *, clock: Clock = utcnow, store_url: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.store = Store.open(store_url) if store_url else Store.open_data_dir(self.data_dir)
        self.blobs = BlobStore(self.data_dir / "blobs")
        self.hub = SyncHub()
        self.feed = FleetFeed()
        self.rollouts = RolloutService(
            self.store,
            self.hub,
            self.clock,
            holder=replica_id(self.data_dir),
            configs=StoreConfigTargets(self.store, self.blobs),
            on_configs_changed=self._assign_all_configs,
        )
        self.telemetry = TelemetryService(self.store, self.clock, self.feed)
        self.relay: ChangeRelay | None = None
        if self.store.db.engine.dialect.name == "postgresql":
            self.relay = ChangeRelay(self.store.db.engine.url, self.hub, replica_id(self.data_dir))
        self.metrics = ControllerMetrics()
        self.metrics.watch_waiting(lambda: self.hub.waiting)
        self.metrics.watch_devices(self._devices_by_state)
        self._credentials = CredentialCache()
        self._reports: dict[str, _ReportMemo] = {}
        self._shutting_down = False
        self._device_counts: dict[tuple[str, str], int] = {}
        self._device_counts_stale = True
        self._desired = _DesiredCache()
        self.hub.on_change(self._desired.evict)
        self._bundle_pieces: dict[str, _BundlePieces] = {}
        self._config_json: dict[str, bytes] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        secret = await asyncio.to_thread(self.store.operator_tokens.ensure_bootstrap_admin, self.clock())
        if secret is not None:
            path = self.data_dir / "admin.token"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret + "\n")
            os.chmod(path, 0o600)
            log.info("controller.bootstrap_admin_token", path=str(path))
        if self.relay is not None:
            await self.relay.start()
        self.rollouts.start()
        self.telemetry.start()

    def begin_shutdown(self) -> None:
        self._shutting_down = True
        self.hub.notify_all()
        self.feed.close()

    async def stop(self) -> None:
        await self.rollouts.stop()
        await self.telemetry.stop()
        if self.relay is not None:
            await self.relay.stop()
        await asyncio.to_thread(self.store.close)

    def _device_counts_changed(self) -> None:
        self._device_counts_stale = True

    def _devices_by_state(self) -> Mapping[tuple[str, str], int]:
        # Computed when scraped (in the metrics server's thread), not on every enrollment or report:
        # a site summary scans every device, which per report would make N reports cost O(N²).
        if self._device_counts_stale:
            self._device_counts_stale = False
            summary = self.store.devices.site_summary()
            self._device_counts = {
                (site, health): count for site, s in summary.items() for health, count in s.by_health.items()
            }
        return self._device_counts

    # ------------------------------------------------------------------ cached reads

    async def desired_of(self, device_id: str) -> DesiredState:
        """The device's desired state, from the cache when this controller has not changed it since."""
        cached = self._desired.get(device_id)
        if cached is not None:
            return cached
        generation = self._desired.generation
        desired = await asyncio.to_thread(self.store.desired.get, device_id)
        self._desired.put(desired, generation)
        return desired

    async def desired_of_many(self, device_ids: Sequence[str]) -> dict[str, DesiredState]:
        """``desired_of`` for several devices: cached ones from memory, the rest in one store read."""
        found = {i: d for i in device_ids if (d := self._desired.get(i)) is not None}
        missing = [i for i in device_ids if i not in found]
        if missing:
            generation = self._desired.generation
            fetched = await asyncio.to_thread(self.store.desired.get_many, missing)
            for desired in fetched.values():
                self._desired.put(desired, generation)
            found.update(fetched)
        return found

    @staticmethod
    def _remember(cache: dict[str, Any], key: str, value: Any) -> None:
        if len(cache) >= PIECES_MAX:
            cache.pop(next(iter(cache)))
        cache[key] = value

    async def _pieces_of(self, bundle_digest: str) -> _BundlePieces:
        pieces = self._bundle_pieces.get(bundle_digest)
        if pieces is None:
            bundle = await asyncio.to_thread(self.store.bundles.get, bundle_digest)
            manifest = BundleManifest.from_json_bytes(bundle.manifest)
            pieces = _BundlePieces(bundle.manifest, bundle.signature, tuple(self.artifact_refs(manifest)))
            self._remember(self._bundle_pieces, bundle_digest, pieces)
        return pieces

    async def _config_bytes(self, config_digest: str) -> bytes | None:
        data = self._config_json.get(config_digest)
        if data is None:
            if not self.blobs.has(config_digest):
                return None
            data = await asyncio.to_thread(self.blobs.path(config_digest).read_bytes)
            self._remember(self._config_json, config_digest, data)
        return data

    # ------------------------------------------------------------------ auth

    async def authenticate(self, token: str) -> Principal:
        cached = self._credentials.get(token)
        if cached is not None and (cached.expires_at is None or self.clock() < cached.expires_at):
            return cached
        if token.startswith("edc_"):
            device_id = await asyncio.to_thread(self.store.devices.authenticate, token)
            if device_id is None:
                raise cerr.Unauthenticated("unknown device credential; the device must enroll again")
            device = await asyncio.to_thread(self.store.devices.get, device_id)
            principal = Principal("device", device_id, device.name, site=device.site)
        elif token.startswith("eot_"):
            try:
                op = await asyncio.to_thread(self.store.operator_tokens.authenticate, token, self.clock())
            except serr.TokenRejected as exc:
                raise cerr.Unauthenticated(f"operator token refused: {exc}") from None
            principal = Principal("operator", op.id, op.name, role=Role.parse(op.role.value), expires_at=op.expires_at)
        else:
            raise cerr.Unauthenticated("credential must be an operator token (eot_…) or a device credential (edc_…)")
        self._credentials.put(token, principal)
        return principal

    @staticmethod
    def map_error(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
        return map_error(exc)

    # ------------------------------------------------------------------ conversions

    async def trusted_keys(self) -> TrustedKeys:
        records = await asyncio.to_thread(self.store.trusted_keys.all, False)
        return TrustedKeys.from_pem_map({r.key_id: r.public_key_pem for r in records})

    def device_message(self, rec: DeviceRecord, desired: DesiredState | None = None) -> common_pb2.Device:
        msg = common_pb2.Device(
            id=rec.id,
            name=rec.name,
            site=rec.site,
            tags=dict(rec.tags),
            enrolled_at=to_timestamp(rec.enrolled_at),
            last_seen=to_timestamp(rec.last_seen),
        )
        ParseDict(dict(rec.facts), msg.hardware, ignore_unknown_fields=True)
        state = rec.reported.get("state")
        if isinstance(state, Mapping):
            ParseDict(dict(state), msg.reported, ignore_unknown_fields=True)
        msg.health = health_value(rec.health)  # type: ignore[assignment]
        if rec.last_seen is None or self.clock() - rec.last_seen > OFFLINE_AFTER:
            msg.health = common_pb2.HEALTH_OFFLINE
        if desired is not None:
            msg.desired.revision = desired.revision
            msg.desired.bundle_digest = desired.bundle_digest or ""
            msg.desired.config_digest = desired.config_digest or ""
            msg.desired.rollout_id = desired.rollout_id or ""
            msg.desired.reason = desired.reason or ""
            msg.desired.assignment_id = desired.assignment_id or ""
        return msg

    @staticmethod
    def bundle_summary(rec: BundleRecord) -> common_pb2.BundleSummary:
        manifest = BundleManifest.from_json_bytes(rec.manifest)
        return common_pb2.BundleSummary(
            digest=rec.digest,
            name=rec.name,
            version=rec.version,
            key_id=rec.key_id,
            size_bytes=rec.size,
            created_at=to_timestamp(rec.created_at),
            sla_ms=manifest.latency.sla_ms,
            postprocess_kind=manifest.postprocess.kind,
        )

    @staticmethod
    def artifact_refs(manifest: BundleManifest) -> list[common_pb2.ArtifactRef]:
        return [
            common_pb2.ArtifactRef(
                role=a.role, path=a.path, digest=a.digest, size_bytes=a.size, media_type=a.media_type
            )
            for a in manifest.artifacts.values()
        ]

    # ------------------------------------------------------------------ enrollment

    async def enroll(self, request: device_pb2.EnrollRequest) -> device_pb2.EnrollResponse:
        if not request.enrollment_token:
            raise cerr.Unauthenticated("EnrollRequest.enrollment_token is empty; create one with fleetctl token create")
        facts = MessageToDict(request.hardware, preserving_proto_field_name=True)
        now = self.clock()
        try:
            device, credential = await asyncio.to_thread(
                self.store.devices.enroll,
                request.enrollment_token,
                request.name,
                request.hardware.hardware_class or "unknown",
                facts,
                dict(request.tags),
                now,
            )
        except serr.TokenRejected as exc:
            raise cerr.Unauthenticated(f"enrollment refused: {exc}") from None
        await self._assign_configs([device])
        keys = await asyncio.to_thread(self.store.trusted_keys.all, False)
        log.info("device.enrolled", device_id=device.id, name=device.name, site=device.site)
        self.feed.publish_device(fleet_pb2.FleetEvent.KIND_ENROLLED, self.device_message(device))
        self._device_counts_changed()
        return device_pb2.EnrollResponse(
            device_id=device.id,
            device_credential=credential,
            site=device.site,
            trusted_keys={k.key_id: k.public_key_pem for k in keys},
        )

    # ------------------------------------------------------------------ sync

    @staticmethod
    def _reported_document(reported: common_pb2.ReportedState) -> dict[str, Any]:
        return {
            "running_bundle": reported.running_bundle_digest or None,
            "health": health_name(reported.health) if reported.health else "unknown",
            "slots": {f"slot{i}": {"bundle": d} for i, d in enumerate(reported.slot_digests)},
            "state": MessageToDict(reported, preserving_proto_field_name=True),
        }

    async def _record_report(self, device_id: str, reported: common_pb2.ReportedState) -> DesiredState:
        """Write the report when it changed or is due for a last_seen refresh; otherwise only read."""
        payload = reported.SerializeToString(deterministic=True)
        digest = hashlib.sha256(payload).hexdigest()
        loop_now = asyncio.get_running_loop().time()
        memo = self._reports.get(device_id)
        if memo is not None and memo.digest == digest and loop_now - memo.written_at < REPORT_REFRESH_S:
            return await self.desired_of(device_id)
        generation = self._desired.generation
        desired = await asyncio.to_thread(
            self.store.devices.record_report, device_id, self._reported_document(reported), self.clock()
        )
        self._desired.put(desired, generation)
        self._reports[device_id] = _ReportMemo(digest, loop_now)
        if memo is None or memo.digest != digest:
            device = await asyncio.to_thread(self.store.devices.get, device_id)
            self.feed.publish_device(fleet_pb2.FleetEvent.KIND_UPDATED, self.device_message(device, desired))
            self._device_counts_changed()
            # a bundle this report shows failing (FAIL verdict or rollback under an assignment) is remembered
            await self.rollouts.note_report(device, MessageToDict(reported, preserving_proto_field_name=True))
        return desired

    async def desired_message(self, desired: DesiredState) -> common_pb2.DesiredState:
        msg = common_pb2.DesiredState(
            revision=desired.revision,
            bundle_digest=desired.bundle_digest or "",
            config_digest=desired.config_digest or "",
            rollout_id=desired.rollout_id or "",
            reason=desired.reason or "",
            assignment_id=desired.assignment_id or "",
        )
        if desired.bundle_digest:
            pieces = await self._pieces_of(desired.bundle_digest)
            msg.bundle_manifest = pieces.manifest
            msg.bundle_signature = pieces.signature
            msg.artifacts.extend(pieces.artifacts)
        if desired.config_digest:
            config = await self._config_bytes(desired.config_digest)
            if config is not None:
                msg.config_json = config
        return msg

    async def sync(self, device_id: str, request: device_pb2.SyncRequest) -> device_pb2.SyncResponse:
        wait_s = min(request.wait_s or DEFAULT_WAIT_S, MAX_WAIT_S)
        with self.hub.subscribe(device_id) as woken:
            desired = await self._record_report(device_id, request.reported)
            if (
                desired.revision == request.known_revision
                and not self._shutting_down
                and await self.hub.wait(woken, wait_s)
            ):
                desired = await self.desired_of(device_id)
        if desired.revision == request.known_revision:
            return device_pb2.SyncResponse(changed=False)
        return device_pb2.SyncResponse(changed=True, desired=await self.desired_message(desired))

    # ------------------------------------------------------------------ blobs

    async def _device_may_fetch(self, device_id: str, digest: str) -> bool:
        desired = await self.desired_of(device_id)
        if digest == desired.config_digest:
            return True
        if desired.bundle_digest:
            return digest in (await self._pieces_of(desired.bundle_digest)).digests
        return False

    async def fetch_blob(
        self, device_id: str, request: device_pb2.FetchBlobRequest
    ) -> AsyncIterator[device_pb2.BlobChunk]:
        digest = request.digest
        try:
            stored = self.blobs.has(digest)
        except serr.InvalidDigest as exc:
            raise cerr.InvalidArgument(f"FetchBlobRequest.digest: {exc}") from None
        if not stored or not await self._device_may_fetch(device_id, digest):
            raise cerr.NotFoundError(
                f"artifact {digest} is not part of this device's desired bundle or config; "
                "Sync again for the current desired state"
            )
        chunk = min(request.chunk_bytes or DEFAULT_CHUNK, MAX_CHUNK)
        f: BinaryIO = await asyncio.to_thread(self.blobs.open_range, digest, request.offset)
        total = self.blobs.size(digest)
        offset = request.offset
        # The next chunk is read from disk (in a worker thread) while the current one is being sent.
        pending: asyncio.Future[bytes] | None = (
            asyncio.ensure_future(asyncio.to_thread(f.read, chunk)) if offset < total else None
        )
        try:
            while pending is not None:
                data = await pending
                pending = None
                if not data:
                    break
                if offset + len(data) < total:
                    pending = asyncio.ensure_future(asyncio.to_thread(f.read, chunk))
                self.metrics.blob_bytes_served.inc(len(data))
                yield device_pb2.BlobChunk(offset=offset, data=data, total_size=total)
                offset += len(data)
        finally:
            if pending is not None:
                # The read runs in a thread and cannot be cancelled: let it finish before closing the file.
                with contextlib.suppress(Exception):
                    await asyncio.shield(pending)
            f.close()

    # ------------------------------------------------------------------ events

    async def report_events(self, device_id: str, events: Sequence[telemetry_pb2.DeviceEvent], site: str = "") -> int:
        inputs = []
        for ev in events:
            at = cerr.timestamp_arg(ev.at, "DeviceEvent.at") if ev.HasField("at") else self.clock()
            seq = int(hashlib.sha256(ev.event_id.encode()).hexdigest()[:15], 16) if ev.event_id else None
            kind = event_kind_name(ev.kind)
            payload = MessageToDict(ev, preserving_proto_field_name=True)
            inputs.append(EventInput(kind, payload, at, seq))
        stored = await asyncio.to_thread(self.store.events.record_many, device_id, inputs, self.clock())
        await self._record_profiles(device_id, events)
        # a bundle these events show failing (a FAIL verdict, a rollback) under an assignment is remembered
        failing = [(ev, i) for ev, i in zip(events, inputs, strict=True) if ev.kind in _FAILURE_EVENT_KINDS]
        if failing:
            device = await asyncio.to_thread(self.store.devices.get, device_id)
            for ev, item in failing:
                if ev.kind == telemetry_pb2.DeviceEvent.KIND_CANARY_VERDICT:
                    verdict = MessageToDict(ev.verdict, preserving_proto_field_name=True)
                    await self.rollouts.note_verdict(device, verdict, item.at)
                else:
                    await self.rollouts.note_rollback(device, ev.bundle_digest, ev.reason, ev.revision, item.at)
        for ev in events:
            self.feed.publish_event(device_id, ev, site)
        self.rollouts.wake()
        return stored

    async def _record_profiles(self, device_id: str, events: Sequence[telemetry_pb2.DeviceEvent]) -> None:
        """Latency measured on devices feeds admission: explicit profiles, and every canary's candidate p95."""
        kinds = (telemetry_pb2.DeviceEvent.KIND_PROFILE, telemetry_pb2.DeviceEvent.KIND_CANARY_VERDICT)
        relevant = [ev for ev in events if ev.kind in kinds]
        if not relevant:
            return
        device = await asyncio.to_thread(self.store.devices.get, device_id)
        for ev in relevant:
            at = ev.at.ToDatetime(tzinfo=UTC) if ev.HasField("at") else self.clock()
            if ev.kind == telemetry_pb2.DeviceEvent.KIND_PROFILE and ev.profile.total.count:
                p = ev.profile
                hw, digest, total, source = p.hardware_class, p.bundle_digest or ev.bundle_digest, p.total, "profile"
            elif ev.kind == telemetry_pb2.DeviceEvent.KIND_CANARY_VERDICT and ev.verdict.candidate_latency.count:
                v = ev.verdict
                hw, digest, total, source = "", v.candidate_digest or ev.bundle_digest, v.candidate_latency, "canary"
            else:
                continue
            if not digest:
                continue
            await asyncio.to_thread(
                functools.partial(
                    self.rollouts.rollouts.record_profile,
                    hardware_class=hw or device.hardware_class,
                    bundle_digest=digest,
                    p95_ms=total.p95_ms,
                    p50_ms=total.p50_ms,
                    source=source,
                    measured_at=at,
                    device_id=device_id,
                )
            )

    async def list_profiles(self, request: fleet_pb2.ListProfilesRequest) -> fleet_pb2.ListProfilesResponse:
        digests = [(await asyncio.to_thread(self.store.bundles.get, ref)).digest for ref in request.bundles]
        rows = await asyncio.to_thread(
            self.rollouts.rollouts.list_profiles, digests or None, request.hardware_class or None
        )
        refs = {r.digest: f"{r.name}@{r.version}" for r in await asyncio.to_thread(self.store.bundles.all, None)}
        out = fleet_pb2.ListProfilesResponse()
        for row in rows:
            out.profiles.append(
                fleet_pb2.ProfileSummary(
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
            )
        return out

    async def list_events(self, device: str, limit: int) -> list[telemetry_pb2.DeviceEvent]:
        rec = await self.find_device(device)
        records = await asyncio.to_thread(self.store.events.query, device_id=rec.id, limit=limit or 50)
        out = []
        for r in records:
            msg = telemetry_pb2.DeviceEvent()
            ParseDict(dict(r.payload), msg, ignore_unknown_fields=True)
            out.append(msg)
        return out

    # ------------------------------------------------------------------ bundles

    async def push_bundle(self, requests: AsyncIterator[fleet_pb2.PushBundleRequest]) -> fleet_pb2.PushBundleResponse:
        first = await anext(aiter(requests), None)
        if first is None or not first.HasField("header"):
            raise cerr.InvalidArgument("PushBundle: the first message must be a header (manifest + signature)")
        manifest_bytes, sig_bytes = first.header.manifest, first.header.signature
        if not sig_bytes.strip():
            self.metrics.bundles_rejected.labels("Unsigned").inc()
            raise cerr.InvalidArgument(
                "bundle refused: PushBundleRequest.header.signature is empty, the bundle is unsigned; "
                "sign it with 'fleetctl bundle sign --key KEY' and push again"
            )
        try:
            manifest = BundleManifest.from_json_bytes(manifest_bytes)
            key_id = verify_signature(manifest_bytes, sig_bytes, await self.trusted_keys())
        except ContractError as exc:
            self.metrics.bundles_rejected.labels(type(exc).__name__).inc()
            raise cerr.InvalidArgument(f"bundle refused: {exc}") from None
        expected = {a.digest: a for a in manifest.artifacts.values()}
        received: dict[str, tuple[str, int]] = {}
        writer = None
        current = ""
        stored_before: set[str] = set()
        try:
            async for req in requests:
                if not req.HasField("chunk"):
                    raise cerr.InvalidArgument("PushBundle: only the first message may be a header")
                digest = req.chunk.digest
                if digest != current:
                    if writer is not None:
                        received[current] = await self._commit_artifact(writer, current, expected[current])
                        writer = None
                    if digest not in expected:
                        raise cerr.InvalidArgument(f"PushBundle: chunk for {digest}, which bundle.json does not list")
                    if digest in received:
                        raise cerr.InvalidArgument(f"PushBundle: artifact {digest} sent twice")
                    current = digest
                    if await asyncio.to_thread(self.blobs.has, digest):
                        stored_before.add(digest)  # still verified; the commit then discards the bytes
                    writer = self.blobs.open_writer(max_size=expected[digest].size)
                assert writer is not None
                await asyncio.to_thread(writer.write, req.chunk.data)
            if writer is not None:
                received[current] = await self._commit_artifact(writer, current, expected[current])
                writer = None
        except serr.BlobIntegrityError as exc:
            self.metrics.bundles_rejected.labels(type(exc).__name__).inc()
            role = expected[current].role if current in expected else "?"
            raise cerr.InvalidArgument(f"bundle refused: artifact {role!r}: {exc}") from None
        finally:
            if writer is not None:
                writer.abort()
        missing = [f"{a.role} ({d})" for d, a in expected.items() if d not in received and not self.blobs.has(d)]
        if missing:
            raise cerr.InvalidArgument(f"bundle refused: artifacts not sent: {', '.join(missing)}")
        # Already stored: sent and discarded after verification, or not sent because the store has them.
        deduplicated = [d for d in expected if d in stored_before or d not in received]
        refs = [ArtifactRef(a.role, a.digest, a.size) for a in manifest.artifacts.values()]
        record, created = await asyncio.to_thread(
            lambda: self.store.bundles.put(
                manifest_bytes,
                sig_bytes,
                name=manifest.name,
                version=manifest.version,
                key_id=key_id,
                artifacts=refs,
                now=self.clock(),
            )
        )
        if created:
            self.metrics.bundles_pushed.inc()
        log.info("bundle.pushed", digest=record.digest, ref=f"{record.name}@{record.version}", created=created)
        return fleet_pb2.PushBundleResponse(
            bundle=self.bundle_summary(record), created=created, deduplicated_artifacts=deduplicated
        )

    async def _commit_artifact(self, writer: Any, digest: str, ref: Any) -> tuple[str, int]:
        got_digest, size = await asyncio.to_thread(writer.commit, digest)
        if size != ref.size:
            raise cerr.InvalidArgument(
                f"bundle refused: artifact {ref.role} is {size} bytes, bundle.json says {ref.size}"
            )
        return got_digest, size

    async def get_bundle(self, ref: str) -> fleet_pb2.GetBundleResponse:
        rec = await asyncio.to_thread(self.store.bundles.get, ref)
        manifest = BundleManifest.from_json_bytes(rec.manifest)
        running, _ = await asyncio.to_thread(lambda: self.store.devices.page(bundle=rec.digest, page_size=1000))
        failures = await self.rollouts.bundle_failures(rec.digest)
        return fleet_pb2.GetBundleResponse(
            bundle=self.bundle_summary(rec),
            manifest=rec.manifest,
            signature=rec.signature,
            artifacts=self.artifact_refs(manifest),
            running_devices=len(running),
            canary_failures=[
                fleet_pb2.BundleFailure(
                    bundle_digest=f.bundle_digest,
                    device_id=f.device_id,
                    device_name=f.device_name,
                    rollout_id=f.rollout_id or "",
                    assignment_id=f.assignment_id,
                    kind=f.kind,
                    summary=f.summary,
                    at=to_timestamp(f.at),
                )
                for f in failures
            ],
        )

    async def list_bundles(self, name: str) -> list[common_pb2.BundleSummary]:
        records = await asyncio.to_thread(self.store.bundles.all, name or None)
        return [self.bundle_summary(r) for r in records]

    async def delete_bundle(self, ref: str) -> None:
        rec = await asyncio.to_thread(self.store.bundles.get, ref)
        orphans = await asyncio.to_thread(self.store.bundles.delete, rec.digest)
        self._bundle_pieces.pop(rec.digest, None)
        for digest in orphans:
            await asyncio.to_thread(self.blobs.delete, digest)
        log.info("bundle.deleted", digest=rec.digest, blobs_removed=len(orphans))

    # ------------------------------------------------------------------ configs

    async def config_documents(self) -> list[ManifestDoc]:
        records = await asyncio.to_thread(self.store.configs.current)
        docs = []
        for r in records:
            if r.deleted or r.doc_json is None:
                continue
            docs.append(ManifestDoc.from_dict(json.loads(r.doc_json), source=f"{r.kind}/{r.name}"))
        return docs

    @staticmethod
    def facts_of(device: DeviceRecord) -> DeviceFacts:
        return DeviceFacts(device_id=device.id, name=device.name, site=device.site, tags=dict(device.tags))

    async def _store_config(self, config: EffectiveConfig) -> str:
        data = config.to_json_bytes()
        digest, _ = await asyncio.to_thread(self.blobs.put_bytes, data)
        if digest != config.digest:
            raise RuntimeError(f"effective config digest {config.digest} differs from its blob digest {digest}")
        return digest

    async def _assign_configs(
        self, devices: Sequence[DeviceRecord], docs: Sequence[ManifestDoc] | None = None
    ) -> list[str]:
        """Compute each device's effective config; give a new desired revision to those that changed.

        A device a running config rollout has moved keeps that rollout's target: its config is computed with
        the rollout's staged revision in place (``RolloutService.config_overrides``), and the change stays the
        rollout's (``rollout_id``), so its outcome under the new assignment still counts for the rollout."""
        if docs is None:
            docs = await self.config_documents()
        overrides = await self.rollouts.config_overrides()
        changed: list[str] = []
        by_target: dict[tuple[str, str | None], list[str]] = {}
        desired = await self.desired_of_many([d.id for d in devices])
        for device in devices:
            override = overrides.get(device.id)
            layered = with_staged(docs, override[1]) if override is not None else docs
            config = effective_config(layered, self.facts_of(device))
            current = desired.get(device.id)
            if current is None or current.config_digest != config.digest:
                await self._store_config(config)
                by_target.setdefault((config.digest, override[0] if override else None), []).append(device.id)
        for (digest, rollout_id), ids in by_target.items():
            now = self.clock()
            reason = "config applied" if rollout_id is None else f"config applied (rollout {rollout_id} target kept)"
            await asyncio.to_thread(
                functools.partial(
                    self.store.desired.assign, ids, config_digest=digest, reason=reason, now=now, rollout_id=rollout_id
                )
            )
            changed.extend(ids)
        self.hub.notify(changed)
        return changed

    async def _assign_all_configs(self) -> list[str]:
        """Every device's config recomputed (after a config rollout made its staged revision live)."""
        return await self._assign_configs(await self.all_devices())

    async def all_devices(self, **filters: Any) -> list[DeviceRecord]:
        out: list[DeviceRecord] = []
        token = None
        while True:
            page, token = await asyncio.to_thread(
                functools.partial(self.store.devices.page, page_size=500, page_token=token, **filters)
            )
            out.extend(page)
            if token is None:
                return out

    async def apply_config(
        self, request: fleet_pb2.ApplyConfigRequest, applied_by: str
    ) -> fleet_pb2.ApplyConfigResponse:
        docs: list[ManifestDoc] = []
        for f in request.files:
            docs.extend(parse_manifests(f.content, source=f.name or "<request>"))
        if not docs:
            raise cerr.InvalidArgument("ApplyConfig: no manifest documents in the request")
        config_docs = [d for d in docs if d.kind != ManifestKind.ROLLOUT]
        rollout_docs = [d for d in docs if d.kind == ManifestKind.ROLLOUT]
        # Config documents a Rollout of this request targets (or all of them, with ``stage``) are stored
        # staged, not live: they take effect through that rollout, device by device.
        refs = [d.ref for d in config_docs]
        targeted = {resolve_config_ref(RolloutService.manifest_config_target(d), refs) for d in rollout_docs}
        staged_docs = [d for d in config_docs if request.stage or d.ref in targeted]
        live_docs = [d for d in config_docs if d not in staged_docs]
        claimed = {s.ref: s.rollout_id for s in await self.rollouts.staged() if s.rollout_id}
        for d in live_docs:
            if d.ref in claimed:
                raise cerr.FailedPrecondition(
                    f"{d.location}: {d.ref} has a revision staged for rollout {claimed[d.ref]}, which makes it live "
                    "when it completes; wait for it or abort it before applying another live version"
                )
        current = {(d.kind, d.name): d for d in await self.config_documents()}
        merged = dict(current)
        for d in live_docs:
            merged[(d.kind, d.name)] = d
        try:
            check_document_set(list(merged.values()))
            for d in staged_docs:
                check_document_set(with_staged(list(merged.values()), d))
        except ManifestError as exc:
            raise cerr.InvalidArgument(str(exc)) from None
        devices = await self.all_devices()
        # Validate every device's merged config before anything is stored: a bad layer changes nothing.
        for device in devices:
            effective_config(list(merged.values()), self.facts_of(device))
            for d in staged_docs:
                effective_config(with_staged(list(merged.values()), d), self.facts_of(device))
        results = []
        for d in live_docs:
            old = current.get((d.kind, d.name))
            status = (
                "created" if old is None else ("unchanged" if old.content_digest == d.content_digest else "configured")
            )
            results.append(f"{d.kind}/{d.name} {status}")
        # Rollout documents are checked (target bundle or staged config, strategy, admission) before anything
        # is stored.
        for d in rollout_docs:
            await self.rollouts.check_manifest(d, staged_here=[c.ref for c in staged_docs])
        if request.dry_run:
            results.extend(f"{d.ref} valid (not staged: dry run)" for d in staged_docs)
            results.extend(f"Rollout/{d.name} valid (not created: dry run)" for d in rollout_docs)
            revision = await asyncio.to_thread(self.store.configs.revision)
            return fleet_pb2.ApplyConfigResponse(revision=revision, results=results)

        def stored(docs: Sequence[ManifestDoc]) -> list[ConfigDocInput]:
            return [
                ConfigDocInput(
                    kind=str(d.kind),
                    name=d.name,
                    site=d.site,
                    doc_json=json.dumps(d.to_dict(), sort_keys=True, separators=(",", ":")),
                    content_digest=d.content_digest,
                )
                for d in docs
            ]

        inputs = stored(live_docs)
        if staged_docs:
            outcomes = await self.rollouts.stage_configs(stored(staged_docs), applied_by)
            results.extend(
                f"{d.ref} {outcome} (live when a Rollout of it completes)"
                for d, outcome in zip(staged_docs, outcomes, strict=True)
            )
        revision = await asyncio.to_thread(lambda: self.store.configs.apply(inputs, applied_by, self.clock()))
        changed = await self._assign_configs(devices, list(merged.values()))
        rollout_ids = []
        for d in rollout_docs:
            rollout = await self.rollouts.create_from_manifest(d, requested_by=applied_by)
            rollout_ids.append(rollout.id)
            results.append(f"Rollout/{d.name} created as {rollout.id}")
        log.info(
            "config.applied",
            revision=revision,
            documents=len(inputs),
            staged=len(staged_docs),
            devices_changed=len(changed),
        )
        return fleet_pb2.ApplyConfigResponse(
            revision=revision, results=results, devices_changed=len(changed), rollout_ids=rollout_ids
        )

    async def find_device(self, ref: str) -> DeviceRecord:
        if not ref:
            raise cerr.InvalidArgument("device must be a device id (dev_…) or name; got ''")
        if ref.startswith("dev_"):
            return await asyncio.to_thread(self.store.devices.get, ref)
        matches = await self.all_devices(name=ref)
        if not matches:
            raise cerr.NotFoundError(f"no device named {ref!r}; list them with fleetctl get devices")
        if len(matches) > 1:
            raise cerr.InvalidArgument(
                f"device name {ref!r} is ambiguous ({', '.join(d.id + '@' + d.site for d in matches)}); use the id"
            )
        return matches[0]

    async def _policy_bundle(self, rec: DeviceRecord) -> BundleManifest | None:
        """The bundle whose declared policy sits under the device's config: desired, else running."""
        desired = await self.desired_of(rec.id)
        for digest in (desired.bundle_digest, rec.running_bundle):
            if not digest:
                continue
            try:
                return BundleManifest.from_json_bytes((await self._pieces_of(digest)).manifest)
            except serr.NotFound:
                continue  # deleted since: the next one, or no bundle layer
        return None

    async def get_effective_config(self, device: str) -> fleet_pb2.GetEffectiveConfigResponse:
        """``config_json``/``digest``: the operator config the device receives (no defaults, no bundle
        policy); ``values``/``sources``: the policy it runs with, per key, resolved by
        ``precedence.resolve_policy`` over the desired (else running) bundle."""
        rec = await self.find_device(device)
        docs = await self.config_documents()
        facts = self.facts_of(rec)
        config = effective_config(docs, facts)
        resolved = resolve_policy(config_layers(docs, facts), bundle=await self._policy_bundle(rec))
        return fleet_pb2.GetEffectiveConfigResponse(
            device_id=rec.id,
            digest=config.digest,
            config_json=config.to_json_bytes(),
            sources=list(resolved.layers),
            values=[
                fleet_pb2.ConfigValueSource(path=leaf.dotted, value_json=leaf.value_json, layer=leaf.layer)
                for leaf in resolved.leaves
            ],
        )

    # ------------------------------------------------------------------ desired state

    async def set_desired_bundle(self, request: fleet_pb2.SetDesiredBundleRequest) -> dict[str, int]:
        bundle = await asyncio.to_thread(self.store.bundles.get, request.bundle)
        if request.HasField("device") or request.device:
            ids = [(await self.find_device(request.device)).id]
        elif request.site:
            ids = [d.id for d in await self.all_devices(site=request.site)]
            if not ids:
                raise cerr.NotFoundError(f"site {request.site!r} has no devices")
        else:
            raise cerr.InvalidArgument("SetDesiredBundle needs a device or a site")
        revisions = await asyncio.to_thread(
            lambda: self.store.desired.assign(
                ids,
                bundle_digest=bundle.digest,
                reason=f"set-bundle {bundle.name}@{bundle.version}",
                now=self.clock(),
                # every SetDesiredBundle is a new decision: a bundle a device rejected is retried under it
                reassign=True,
            )
        )
        woken = self.hub.notify(ids)
        log.info("desired.bundle_set", bundle=bundle.digest, devices=len(ids), woken=woken)
        return revisions

    # ------------------------------------------------------------------ fleet

    async def list_devices(self, request: fleet_pb2.ListDevicesRequest) -> fleet_pb2.ListDevicesResponse:
        bundle = None
        if request.bundle:
            bundle = (await asyncio.to_thread(self.store.bundles.get, request.bundle)).digest
        health = None
        if request.health and request.health != common_pb2.HEALTH_OFFLINE:
            try:
                health = health_name(request.health)
            except ValueError:
                known = ", ".join(common_pb2.Health.keys())
                raise cerr.InvalidArgument(f"health filter must be one of {known}, got {request.health}") from None
        seen_since = cerr.timestamp_arg(request.seen_since, "seen_since") if request.HasField("seen_since") else None
        for tag in request.tags:
            if "=" not in tag:
                raise cerr.InvalidArgument(f"tag filter must be key=value, got {tag!r}")
        page, token = await asyncio.to_thread(
            lambda: self.store.devices.page(
                site=request.site or None,
                tag=request.tags[0] if request.tags else None,
                bundle=bundle,
                health=health,
                seen_since=seen_since,
                page_size=min(request.page_size or 100, 1000),
                page_token=request.page_token or None,
            )
        )
        # The store filters by the first tag; any further tags are checked here.
        extra = [tuple(t.split("=", 1)) for t in request.tags[1:]]
        out = fleet_pb2.ListDevicesResponse(next_page_token=token or "")
        desired = await self.desired_of_many([rec.id for rec in page])
        for rec in page:
            if any(rec.tags.get(k) != v for k, v in extra):
                continue
            msg = self.device_message(rec, desired.get(rec.id))
            if request.health and msg.health != request.health:
                continue
            out.devices.append(msg)
        out.total = len(out.devices)
        return out

    async def get_device(self, ref: str) -> common_pb2.Device:
        rec = await self.find_device(ref)
        desired = await self.desired_of(rec.id)
        return self.device_message(rec, desired)

    async def list_sites(self) -> list[fleet_pb2.SiteSummary]:
        summary = await asyncio.to_thread(self.store.devices.site_summary)
        names: dict[str, str] = {}
        for rec in await asyncio.to_thread(self.store.bundles.all, None):
            names[rec.digest] = f"{rec.name}@{rec.version}"
        out = []
        for site, s in sorted(summary.items()):
            out.append(
                fleet_pb2.SiteSummary(
                    site=site,
                    devices=s.devices,
                    by_bundle={(names.get(d, d) if d else "none"): n for d, n in s.by_bundle.items()},
                    by_health=dict(s.by_health),
                )
            )
        return out

    # ------------------------------------------------------------------ administration

    async def create_enrollment_token(
        self, request: fleet_pb2.CreateEnrollmentTokenRequest, created_by: str
    ) -> fleet_pb2.CreateEnrollmentTokenResponse:
        if not request.site:
            raise cerr.InvalidArgument("CreateEnrollmentToken: site is required (e.g. --site warehouse-a)")
        rec, secret = await asyncio.to_thread(
            lambda: self.store.enrollment_tokens.create(
                request.site,
                request.ttl_s or 86400,
                self.clock(),
                max_uses=request.max_uses or None,
                created_by=created_by,
            )
        )
        return fleet_pb2.CreateEnrollmentTokenResponse(
            token_id=rec.id, token=secret, expires_at=to_timestamp(rec.expires_at)
        )

    async def revoke_enrollment_token(self, token_id: str) -> None:
        await asyncio.to_thread(self.store.enrollment_tokens.revoke, token_id.removeprefix("eft_"), self.clock())

    async def create_operator_token(
        self, request: fleet_pb2.CreateOperatorTokenRequest
    ) -> fleet_pb2.CreateOperatorTokenResponse:
        try:
            role = OperatorRole(request.role or "viewer")
        except ValueError:
            raise cerr.InvalidArgument(f"role must be viewer, operator or admin; got {request.role!r}") from None
        rec, secret = await asyncio.to_thread(
            lambda: self.store.operator_tokens.create(request.name, role, request.ttl_s or None, self.clock())
        )
        return fleet_pb2.CreateOperatorTokenResponse(token_id=rec.id, token=secret)

    async def revoke_operator_token(self, token_id: str) -> None:
        await asyncio.to_thread(self.store.operator_tokens.revoke, token_id, self.clock())
        self._credentials.evict_subject(token_id)

    async def add_trusted_key(self, key_id: str, pem: str) -> str:
        try:
            check_key_id(key_id)
            TrustedKeys.from_pem_map({key_id: pem})
        except ContractError as exc:
            raise cerr.InvalidArgument(f"trusted key refused: {exc}") from None
        rec = await asyncio.to_thread(self.store.trusted_keys.add, key_id, pem, self.clock())
        return rec.key_id

    async def list_trusted_keys(self) -> list[fleet_pb2.TrustedKey]:
        records = await asyncio.to_thread(self.store.trusted_keys.all, False)
        return [
            fleet_pb2.TrustedKey(key_id=r.key_id, public_key_pem=r.public_key_pem, added_at=to_timestamp(r.added_at))
            for r in records
        ]

    # ------------------------------------------------------------------ telemetry

    async def ingest_telemetry(
        self, device_id: str, batches: AsyncIterator[telemetry_pb2.TelemetryBatch]
    ) -> AsyncIterator[telemetry_pb2.TelemetryAck]:
        async for ack in self.telemetry.ingest(device_id, batches):
            yield ack
