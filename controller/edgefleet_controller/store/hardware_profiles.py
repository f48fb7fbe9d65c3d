"""Hardware latency profiles: every latency measurement of a bundle on a hardware class, as stored. How
admission reads them (the upper median of the devices' newest figures per class) is ``rollout.profiles``.

Time is always passed in; this module never reads the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from edgefleet.contract.shown import shown
from edgefleet_controller.rollout.profiles import PROFILE_SOURCES, ProfileMeasurement
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.db import Database
from edgefleet_controller.store.errors import InvalidArgument
from edgefleet_controller.store.records import record_from_row


class HardwareProfileStore:
    """Profile measurements over the controller's ``Database``. Synchronous; call through ``asyncio.to_thread``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self,
        *,
        hardware_class: str,
        bundle_digest: str,
        p95_ms: float,
        measured_at: datetime,
        p50_ms: float | None = None,
        source: str = "profile",
        device_id: str | None = None,
    ) -> None:
        """Record one latency measurement (pre + model + post) of a bundle on a hardware class."""
        if not isinstance(hardware_class, str) or not hardware_class.strip():
            raise InvalidArgument(f"hardware_class must be a non-empty string, got {shown(hardware_class)}")
        if source not in PROFILE_SOURCES:
            raise InvalidArgument(f"profile source must be 'canary' or 'profile', got {shown(source)}")
        for field, value in (("p95_ms", p95_ms), ("p50_ms", p50_ms)):
            if value is None and field == "p50_ms":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise InvalidArgument(
                    f"profile {field} must be a finite number of milliseconds >= 0, got {shown(value)}"
                )
        if measured_at.tzinfo is None:
            raise InvalidArgument(f"measured_at must be an aware UTC datetime, got {shown(measured_at)}")
        with self._db.transaction() as conn:
            conn.execute(
                t.hardware_profiles.insert().values(
                    hardware_class=hardware_class,
                    bundle_digest=bundle_digest,
                    p95_ms=float(p95_ms),
                    p50_ms=None if p50_ms is None else float(p50_ms),
                    source=source,
                    device_id=device_id,
                    measured_at=measured_at,
                )
            )

    def measurements(
        self, bundle_digests: Sequence[str] | None = None, hardware_class: str | None = None
    ) -> list[ProfileMeasurement]:
        """Measurements oldest first; only of ``bundle_digests`` / ``hardware_class`` when given."""
        profiles = t.hardware_profiles
        query = sa.select(profiles).order_by(profiles.c.measured_at, profiles.c.id)
        if bundle_digests:
            query = query.where(profiles.c.bundle_digest.in_(list(bundle_digests)))
        if hardware_class:
            query = query.where(profiles.c.hardware_class == hardware_class)
        with self._db.read() as conn:
            return [
                record_from_row(
                    ProfileMeasurement,
                    r,
                    p95_ms=float(r.p95_ms),
                    p50_ms=float(r.p50_ms) if r.p50_ms is not None else None,
                )
                for r in conn.execute(query)
            ]
