"""Bundle failures: a device's failed canary or rollback of a bundle, recorded once per (bundle, device,
assignment) so a report or verdict seen twice (or by two replicas) is one record. What counts as a failure
is ``rollout.failures``; this module stores and reads the records.

Time is always passed in; this module never reads the clock.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from edgefleet.contract.shown import shown
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.db import Database, in_chunks
from edgefleet_controller.store.errors import InvalidArgument
from edgefleet_controller.store.records import record_from_row

BUNDLE_FAILURE_KINDS = frozenset({"canary_fail", "rolled_back"})
SUMMARY_MAX = 500


@dataclass(frozen=True, slots=True)
class BundleFailure:
    """A device's failed canary (``kind`` "canary_fail") or rollback ("rolled_back") of a bundle, reported
    under ``assignment_id``; ``summary`` is the verdict's reasons or the rollback reason, truncated."""

    bundle_digest: str
    device_id: str
    device_name: str
    rollout_id: str | None
    assignment_id: str
    kind: str
    summary: str
    at: datetime


class BundleFailureStore:
    """Bundle failure records over the controller's ``Database``. Synchronous; call through ``asyncio.to_thread``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, failure: BundleFailure) -> bool:
        """Record a failed canary / rollback of a bundle; False when (bundle, device, assignment) is known."""
        if failure.kind not in BUNDLE_FAILURE_KINDS:
            raise InvalidArgument(
                f"bundle failure kind must be one of {sorted(BUNDLE_FAILURE_KINDS)}, got {shown(failure.kind)}"
            )
        if not failure.assignment_id:
            raise InvalidArgument("a bundle failure needs the assignment id it was reported under, got ''")
        if failure.at.tzinfo is None:
            raise InvalidArgument(f"bundle failure time must be an aware UTC datetime, got {shown(failure.at)}")
        failures = t.bundle_failures
        try:
            with self._db.transaction() as conn:
                known = conn.execute(
                    sa.select(failures.c.id).where(
                        failures.c.bundle_digest == failure.bundle_digest,
                        failures.c.device_id == failure.device_id,
                        failures.c.assignment_id == failure.assignment_id,
                    )
                ).first()
                if known is not None:
                    return False
                conn.execute(
                    failures.insert().values(
                        bundle_digest=failure.bundle_digest,
                        device_id=failure.device_id,
                        device_name=failure.device_name[:255],
                        rollout_id=failure.rollout_id,
                        assignment_id=failure.assignment_id[:128],
                        kind=failure.kind,
                        summary=failure.summary[:SUMMARY_MAX],
                        at=failure.at,
                    )
                )
        except IntegrityError:
            return False  # recorded concurrently by another replica
        return True

    def of_bundles(self, digests: Collection[str]) -> list[BundleFailure]:
        """Recorded failures of these bundles, oldest first."""
        failures = t.bundle_failures
        out: list[BundleFailure] = []
        with self._db.read() as conn:
            for chunk in in_chunks(sorted(set(digests))):
                rows = conn.execute(
                    sa.select(failures).where(failures.c.bundle_digest.in_(chunk)).order_by(failures.c.id)
                )
                out.extend(record_from_row(BundleFailure, r) for r in rows)
        out.sort(key=lambda f: (f.at, f.device_id))
        return out
