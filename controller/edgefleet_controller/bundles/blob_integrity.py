"""``BlobIntegrity``: the controller serves a blob only once its bytes are known to hash to its digest, and
quarantines one that does not.

A *mark* is the blob file's ``StatKey`` (inode, size, mtime, ctime) as it was when its bytes hashed to its
name. FetchBlob serves a file whose key equals the mark without reading it twice; a file without a valid
mark (first serve since start, or the file changed: written, chmod-ed, replaced) is hashed in full first, so
an unchanged blob is hashed at most once per controller process, and concurrent fetches of one digest share
that hash (single flight). A device's report that a download did not hash to its digest (``reverify``)
drops the mark and hashes again, unless the unchanged file was hashed less than ``REVERIFY_AFTER_S`` ago (a
burst of reports, or a device repeating one, costs one hash).

A mismatch moves the blob aside (``BlobStore.quarantine``: never served again under its name), logs
``blob.quarantined``, counts it (``edgefleet_blobs_quarantined``; every hash is counted in
``edgefleet_blob_verifications`` by result) and keeps a record ``GetBundle`` shows;
fetches are refused with DATA_LOSS naming the digest and the cure: push the bundle again, which stores good
bytes under the name. A device is never sent a corrupt byte of a blob this check can see.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from edgefleet_controller import errors as cerr
from edgefleet_controller.clock import Clock
from edgefleet_controller.metrics import ControllerMetrics
from edgefleet_controller.store import BlobStore
from edgefleet_controller.store import errors as serr
from edgefleet_controller.store.blob_quarantine import QuarantineRecord
from edgefleet_controller.store.blobs import StatKey

log = structlog.get_logger("edgefleet.controller")

REVERIFY_AFTER_S = 10.0


def data_loss(record: QuarantineRecord) -> cerr.DataLoss:
    """The refusal a fetch of the quarantined blob ``record.digest`` gets."""
    return cerr.DataLoss(
        f"artifact {record.digest} is corrupt on the controller's disk: its bytes hash to {record.actual} "
        f"(found by {record.detected_by} at {record.at.isoformat()}); it was quarantined and is not served. "
        "Push the bundle again (fleetctl bundle push) to restore it"
    )


@dataclass(eq=False)
class BlobIntegrity:
    blobs: BlobStore
    metrics: ControllerMetrics
    clock: Clock
    _marks: dict[str, StatKey] = field(default_factory=dict, init=False)
    _marked_at: dict[str, datetime] = field(default_factory=dict, init=False)
    _inflight: dict[str, asyncio.Future[QuarantineRecord | None]] = field(default_factory=dict, init=False)

    def is_verified(self, digest: str, key: StatKey) -> bool:
        """Whether the blob file with ``key`` is the one whose bytes were found to hash to ``digest``."""
        return self._marks.get(digest) == key

    async def verify(self, digest: str, detected_by: str = "serve") -> QuarantineRecord | None:
        """Hash blob ``digest`` unless another call is hashing it already; the quarantine record when it is
        corrupt (moved aside now, or by whoever got there first), else None (also when it is absent, or was
        replaced by another file while it was hashed: the caller opens it again)."""
        pending = self._inflight.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._hash_and_judge(digest, detected_by))
            self._inflight[digest] = pending
            pending.add_done_callback(lambda done: self._forget(digest, done))
        return await asyncio.shield(pending)

    async def reverify(self, digest: str, detected_by: str) -> QuarantineRecord | None:
        """Drop the mark of ``digest`` and hash it again (a device reported a download that did not match),
        unless this unchanged file was hashed less than ``REVERIFY_AFTER_S`` ago."""
        key = await asyncio.to_thread(self.blobs.stat_key, digest)
        marked_at = self._marked_at.get(digest)
        recent = marked_at is not None and (self.clock() - marked_at).total_seconds() < REVERIFY_AFTER_S
        if recent and key is not None and self.is_verified(digest, key):
            return None
        self._marks.pop(digest, None)
        return await self.verify(digest, detected_by)

    async def quarantine_record(self, digest: str) -> QuarantineRecord | None:
        """The latest quarantine record of ``digest``, or None."""
        records = await asyncio.to_thread(self.blobs.quarantined.records, digest)
        return records[-1] if records else None

    def _forget(self, digest: str, done: asyncio.Future[QuarantineRecord | None]) -> None:
        if self._inflight.get(digest) is done:
            del self._inflight[digest]

    async def _hash_and_judge(self, digest: str, detected_by: str) -> QuarantineRecord | None:
        try:
            actual, key = await asyncio.to_thread(self.blobs.hash_blob, digest)
        except serr.NotFound:
            return await self.quarantine_record(digest)
        if actual == digest:
            self.metrics.blob_verifications.labels("ok").inc()
            self._marks[digest] = key
            self._marked_at[digest] = self.clock()
            return None
        self.metrics.blob_verifications.labels("corrupt").inc()
        self._marks.pop(digest, None)
        record = await asyncio.to_thread(self.blobs.quarantine, digest, actual, detected_by, self.clock(), key)
        if record is None:
            if await asyncio.to_thread(self.blobs.stat_key, digest) is not None:
                return None  # replaced since it was hashed (pushed again): a serve hashes the new file next
            return await self.quarantine_record(digest)  # moved aside meanwhile (another replica)
        self.metrics.blobs_quarantined.inc()
        log.error(
            "blob.quarantined",
            digest=digest,
            actual=actual,
            size=record.size,
            detected_by=detected_by,
            path=record.path,
            action="push the bundle again to restore the blob",
        )
        return record
