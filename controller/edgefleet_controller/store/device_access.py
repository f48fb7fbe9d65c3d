"""Device access: the credential check behind a device call (one indexed read), and an operator's revocation of a
device: disable/enable (everything else about the device is kept), delete (its rows cascade away and its
name is free for a new enrollment) and credential rotation (the old secret stops matching at once).

Every switch bumps the credential generation in its transaction (``credential_generation``), which is what
lets a replica cache authenticated devices. Enrollment and the device's own data stay in ``devices``; this
module only decides who may call as a device.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
import structlog

from edgefleet_controller.store import credential_generation, credentials
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.arguments import check_now
from edgefleet_controller.store.db import AggregateStore
from edgefleet_controller.store.errors import NotFound

log = structlog.get_logger(__name__)


def _unknown_device(device_id: str) -> NotFound:
    return NotFound("device", device_id, "list devices to see the enrolled ids")


@dataclass(frozen=True, slots=True)
class DeviceAccess:
    """What a device credential proves: which device, and whether an operator has disabled it."""

    device_id: str
    name: str
    site: str
    disabled_at: datetime | None


class DeviceAccessStore(AggregateStore):
    """Device credentials and the operator's switches on them."""

    def check(self, secret: str) -> DeviceAccess | None:
        """The device whose credential is ``secret`` (disabled or not), or None: malformed, unknown, deleted,
        or rotated away."""
        device_id = credentials.parse_secret(credentials.DEVICE_CREDENTIAL_PREFIX, secret)
        if device_id is None:
            return None
        d = t.devices
        query = sa.select(d.c.name, d.c.site, d.c.credential_sha256, d.c.disabled_at).where(d.c.id == device_id)
        with self._db.read() as conn:
            row = conn.execute(query).one_or_none()
        if row is None or not credentials.secret_matches(secret, row.credential_sha256):
            return None
        return DeviceAccess(device_id, row.name, row.site, row.disabled_at)

    def set_disabled(self, device_id: str, now: datetime | None) -> datetime | None:
        """Disable the device at ``now`` (a second disable keeps the first time), or enable it (``now`` None);
        returns ``disabled_at`` after. Raises ``NotFound``."""
        d = t.devices
        where = [d.c.id == device_id]
        if now is not None:
            check_now(now)
            where.append(d.c.disabled_at.is_(None))
        else:  # enabling an enabled device is a no-op: it must not empty every replica's cache
            where.append(d.c.disabled_at.is_not(None))
        with self._db.transaction() as conn:
            if conn.execute(d.update().where(*where).values(disabled_at=now)).rowcount:
                credential_generation.bump_in(conn)
            row = conn.execute(sa.select(d.c.disabled_at).where(d.c.id == device_id)).one_or_none()
        if row is None:
            raise _unknown_device(device_id)
        log.info("store.device_access_changed", device_id=device_id, disabled=row.disabled_at is not None)
        disabled_at: datetime | None = row.disabled_at
        return disabled_at

    def delete(self, device_id: str) -> None:
        """Remove the device: tags, held-bundle refs, desired state, events and telemetry cascade with it;
        canary failure records and latency profiles are kept (they name the device, they do not need it).
        Raises ``NotFound``."""
        with self._db.transaction() as conn:
            result = conn.execute(t.devices.delete().where(t.devices.c.id == device_id))
            if result.rowcount:
                credential_generation.bump_in(conn)
        if result.rowcount != 1:
            raise _unknown_device(device_id)
        log.info("store.device_deleted", device_id=device_id)

    def rotate(self, device_id: str) -> str:
        """A new credential for the device (returned once; only its hash is kept); the old one stops matching
        in the same transaction. Raises ``NotFound``."""
        credential = credentials.mint_secret(credentials.DEVICE_CREDENTIAL_PREFIX, device_id)
        d = t.devices
        with self._db.transaction() as conn:
            result = conn.execute(
                d.update().where(d.c.id == device_id).values(credential_sha256=credentials.secret_hash(credential))
            )
            if result.rowcount:
                credential_generation.bump_in(conn)
        if result.rowcount != 1:
            raise _unknown_device(device_id)
        log.info("store.device_credential_rotated", device_id=device_id)
        return credential
