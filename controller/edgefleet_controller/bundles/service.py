"""``BundleService``: signed model bundles. PushBundle verifies the signature against the trusted keys,
stages each artifact (``intake.StagedPush``: digest and size checked) and stores the bundle only once the
request stream ended cleanly and every check passed — a refused or abandoned push leaves nothing; FetchBlob streams an
artifact, or a config, to a device whose desired state includes it, once ``BlobIntegrity`` knows the file
hashes to its digest (a corrupt one is quarantined and refused with DATA_LOSS; ``get_bundle`` lists it).

Store calls are synchronous transactions run in worker threads (``asyncio.to_thread``); the clock is injected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import BinaryIO

import structlog

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_layout import MANIFEST_NAME
from edgefleet.contract.bundle_limits import check_declared_sizes
from edgefleet.contract.errors import ContractError
from edgefleet.contract.request_bounds import FETCH_CHUNK_MAX_BYTES, FETCH_CHUNK_MIN_BYTES
from edgefleet.contract.shown import shown
from edgefleet.contract.signing import verify_signature
from edgefleet_controller import errors as cerr
from edgefleet_controller.auth.service import AuthService
from edgefleet_controller.bundles.blob_integrity import BlobIntegrity, data_loss
from edgefleet_controller.bundles.intake import StagedPush, run_to_end
from edgefleet_controller.clock import Clock
from edgefleet_controller.devices.desired import DesiredStates
from edgefleet_controller.metrics import ControllerMetrics
from edgefleet_controller.rollout.service import RolloutService
from edgefleet_controller.store import BlobStore
from edgefleet_controller.store import errors as serr
from edgefleet_controller.store.blob_quarantine import QuarantineRecord
from edgefleet_controller.store.blobs import stat_key_of
from edgefleet_controller.store.bundle_failures import BundleFailure
from edgefleet_controller.store.bundles import BundleStore
from edgefleet_controller.store.devices import DeviceStore
from edgefleet_controller.store.records import ArtifactRef, BundleRecord

log = structlog.get_logger("edgefleet.controller")

DEFAULT_CHUNK = 1 << 20
#: A push's temp file untouched this long was left by a dead controller: a live push writes each chunk,
#: and publishes within moments of its last one.
ABANDONED_UPLOAD_S = 3600.0
MAX_CHUNK = FETCH_CHUNK_MAX_BYTES
# Below this a device's adaptive chunk would cost more in per-message overhead than a reset re-sends. Both bounds
# are FetchBlobRequest.chunk_bytes's in request_bounds: a request outside them is refused before it gets here.
MIN_CHUNK = FETCH_CHUNK_MIN_BYTES


@dataclass(frozen=True)
class PushOutcome:
    """A pushed bundle's record; ``created`` False when it was stored already; ``deduplicated``: the
    artifacts already stored (sent and discarded after verification, or not sent); ``restored``: the
    quarantined artifacts (found corrupt on disk) this push stored again."""

    bundle: BundleRecord
    created: bool
    deduplicated: list[str]
    restored: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BundleDetail:
    bundle: BundleRecord
    manifest: BundleManifest
    running_devices: int
    failures: list[BundleFailure]
    quarantined: list[QuarantinedArtifact]


@dataclass(frozen=True)
class QuarantinedArtifact:
    """A quarantine record of the bundle's artifact ``role``; ``restored`` once good bytes are stored again."""

    role: str
    record: QuarantineRecord
    restored: bool


@dataclass(frozen=True)
class BlobPiece:
    offset: int
    data: bytes
    total_size: int


def bundle_refs(bundles: BundleStore) -> dict[str, str]:
    """Every stored bundle's ``name@version`` by digest (synchronous: call through ``asyncio.to_thread``)."""
    return {r.digest: r.ref for r in bundles.all(None)}


@dataclass(eq=False)
class BundleService:
    store: BundleStore
    devices: DeviceStore
    blobs: BlobStore
    auth: AuthService
    desired: DesiredStates
    rollouts: RolloutService
    metrics: ControllerMetrics
    clock: Clock
    integrity: BlobIntegrity

    # ------------------------------------------------------------------ publishing

    async def push(
        self, manifest_bytes: bytes, sig_bytes: bytes, chunks: AsyncIterator[tuple[str, bytes]]
    ) -> PushOutcome:
        """Verify the signed manifest, then store the artifacts ``chunks`` carries as (digest, data) runs."""
        if not sig_bytes.strip():
            self.metrics.bundles_rejected.labels("Unsigned").inc()
            raise cerr.InvalidArgument(
                "bundle refused: PushBundleRequest.header.signature is empty, the bundle is unsigned; "
                "sign it with 'fleetctl bundle sign --key KEY' and push again"
            )
        try:
            manifest = BundleManifest.from_json_bytes(manifest_bytes)
            key_id = verify_signature(manifest_bytes, sig_bytes, await self.auth.trusted_keys())
            check_declared_sizes(manifest, source=MANIFEST_NAME)  # before any chunk is read
        except ContractError as exc:
            self.metrics.bundles_rejected.labels(type(exc).__name__).inc()
            raise cerr.InvalidArgument(f"bundle refused: {exc}") from None
        staging = StagedPush(self.blobs, {a.digest: a for a in manifest.artifacts.values()})
        try:
            async for digest, data in chunks:
                await staging.add(digest, data)
            missing = await staging.finish()
            deduplicated = staging.deduplicated()
            if missing:
                names = ", ".join(f"{shown(a.role)} ({a.path})" for a in missing)
                raise cerr.InvalidArgument(
                    f"bundle refused: the stream ended before these artifacts were sent: {names}; nothing was "
                    "stored, push the whole archive again"
                )
            refs = [ArtifactRef(a.role, a.digest, a.size) for a in manifest.artifacts.values()]
            record, created, restored = await run_to_end(
                lambda: self._publish(staging, manifest_bytes, sig_bytes, manifest, key_id, refs)
            )
        except cerr.InvalidArgument:
            self.metrics.bundles_rejected.labels("ArtifactRefused").inc()
            raise
        except asyncio.CancelledError:
            log.info("bundle.push_abandoned", ref=manifest.ref, reason="the client cancelled or disconnected")
            raise
        finally:
            staging.discard()
        if created:
            self.metrics.bundles_pushed.inc()
        if restored:  # devices refused these artifacts: hand them their desired state again, now
            woken = await self.desired.redeliver_artifacts(restored)
            log.info("bundle.restored_redelivered", digest=record.digest, restored=restored, devices=woken)
        log.info("bundle.pushed", digest=record.digest, ref=record.ref, created=created, restored=restored)
        return PushOutcome(record, created, deduplicated, restored)

    def _publish(
        self,
        staging: StagedPush,
        manifest_bytes: bytes,
        sig_bytes: bytes,
        manifest: BundleManifest,
        key_id: str,
        refs: list[ArtifactRef],
    ) -> tuple[BundleRecord, bool, list[str]]:
        """Make the staged artifacts visible, then record the bundle; if the record is refused (another
        bundle under the same name@version), the blobs this push added and no bundle declares are removed.
        Returns (record, created, the added artifacts that had been quarantined: restored)."""
        added = staging.publish()
        restored = [d for d in added if self.blobs.quarantined.records(d)]
        try:
            record, created = self.store.put(
                manifest_bytes,
                sig_bytes,
                name=manifest.name,
                version=manifest.version,
                key_id=key_id,
                artifacts=refs,
                now=self.clock(),
            )
            return record, created, restored
        except BaseException:
            for digest in added:
                try:
                    self.store.get_artifact(digest)  # declared by a bundle stored meanwhile: keep it
                except serr.NotFound:
                    self.blobs.delete(digest)
            raise

    async def remove_abandoned_uploads(self) -> int:
        """Remove the temp files that a controller killed mid-push left in the blob directory (called at
        start); only those untouched for ``ABANDONED_UPLOAD_S``, so a replica's push in progress is spared."""
        cutoff = self.clock().timestamp() - ABANDONED_UPLOAD_S
        removed = await asyncio.to_thread(self.blobs.remove_stale_temp, cutoff)
        if removed:
            log.info("bundle.abandoned_uploads_removed", files=removed, untouched_for_s=ABANDONED_UPLOAD_S)
        return removed

    # ------------------------------------------------------------------ catalogue

    async def get_bundle(self, ref: str) -> BundleDetail:
        rec = await asyncio.to_thread(self.store.get, ref)
        running, _ = await asyncio.to_thread(lambda: self.devices.page(bundle=rec.digest, page_size=1000))
        failures = await self.rollouts.bundle_failures(rec.digest)
        manifest = BundleManifest.from_json_bytes(rec.manifest)
        return BundleDetail(rec, manifest, len(running), failures, await asyncio.to_thread(self._quarantined, manifest))

    def _quarantined(self, manifest: BundleManifest) -> list[QuarantinedArtifact]:
        return [
            QuarantinedArtifact(a.role, record, self.blobs.has(a.digest))
            for a in manifest.artifacts.values()
            for record in self.blobs.quarantined.records(a.digest)
        ]

    async def list_bundles(self, name: str) -> list[BundleRecord]:
        return await asyncio.to_thread(self.store.all, name or None)

    async def delete_bundle(self, ref: str) -> None:
        rec = await asyncio.to_thread(self.store.get, ref)
        orphans = await asyncio.to_thread(self.store.delete, rec.digest)
        self.desired.pieces.forget_bundle(rec.digest)
        for digest in orphans:
            await asyncio.to_thread(self.blobs.delete, digest)
        log.info("bundle.deleted", digest=rec.digest, blobs_removed=len(orphans))

    # ------------------------------------------------------------------ downloads

    async def _open_verified(self, digest: str, offset: int) -> tuple[BinaryIO, int]:
        """Blob ``digest`` opened at ``offset`` and its size, once its bytes are known to match its digest
        (``BlobIntegrity``: hashed now unless this very file was verified before); DATA_LOSS when corrupt."""
        for _ in range(3):  # the file may be replaced between open and verify (quarantined and pushed again)
            f: BinaryIO = await asyncio.to_thread(self.blobs.open_range, digest, offset)
            key = stat_key_of(f)
            if self.integrity.is_verified(digest, key):
                return f, key[1]
            f.close()
            record = await self.integrity.verify(digest)
            if record is not None:
                raise data_loss(record)
        raise cerr.Unavailable(f"artifact {digest} kept changing on the controller's disk while verified; retry")

    async def fetch_blob(self, device_id: str, digest: str, offset: int, chunk_bytes: int) -> AsyncIterator[BlobPiece]:
        """Stream an artifact or config of the device's desired state from ``offset``."""
        try:
            stored = self.blobs.has(digest)
        except serr.InvalidDigest as exc:
            raise cerr.InvalidArgument(f"FetchBlobRequest.digest: {exc}") from None
        if not await self.desired.pieces.may_fetch(await self.desired.desired_of(device_id), digest):
            raise cerr.NotFoundError(
                f"artifact {digest} is not part of this device's desired bundle or config; "
                "Sync again for the current desired state"
            )
        if not stored and (record := await self.integrity.quarantine_record(digest)) is not None:
            raise data_loss(record)
        chunk = chunk_bytes or DEFAULT_CHUNK  # 0 or within [MIN_CHUNK, MAX_CHUNK]: request_bounds
        f, total = await self._open_verified(digest, offset)
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
                yield BlobPiece(offset, data, total)
                offset += len(data)
        finally:
            if pending is not None:
                # The read runs in a thread and cannot be cancelled: let it finish before closing the file.
                with contextlib.suppress(Exception):
                    await asyncio.shield(pending)
            f.close()
