"""Named leases: which controller replica may act alone (the rollout reconciler's leadership).

``acquire`` is one portable conditional ``UPDATE leases SET holder, expires_at WHERE name = :name AND
(holder = :me OR expires_at <= :now)`` (plus an ``INSERT`` the first time). Exactly one caller can win an
expired or free lease because the database serialises the two updates of one row (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL: the row lock); the loser's ``UPDATE`` matches no row. A lease is not a fence on
its own: writers behind it (``RolloutStore.persist_plan``) still check versions.

Time is always passed in; this module never reads the clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from edgefleet_controller.store import schema as t
from edgefleet_controller.store.db import Database


class LeaseStore:
    """Leases over the controller's ``Database``. Synchronous; call through ``asyncio.to_thread``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def acquire(self, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
        """Take or renew lease ``name`` for ``holder`` until ``now + ttl_s``; False while another holder's
        lease has not expired."""
        leases = t.leases
        expires = now + timedelta(seconds=ttl_s)
        try:
            with self._db.transaction() as conn:
                result = conn.execute(
                    leases.update()
                    .where(leases.c.name == name, sa.or_(leases.c.holder == holder, leases.c.expires_at <= now))
                    .values(holder=holder, expires_at=expires)
                )
                if result.rowcount == 1:
                    return True
                if conn.execute(sa.select(leases.c.name).where(leases.c.name == name)).first() is not None:
                    return False
                conn.execute(leases.insert().values(name=name, holder=holder, expires_at=expires))
                return True
        except IntegrityError:
            # another replica inserted the first row concurrently: it holds the lease
            return False

    def release(self, name: str, holder: str, now: datetime) -> None:
        """Give the lease up (only if ``holder`` holds it) so a successor need not wait for expiry."""
        leases = t.leases
        with self._db.transaction() as conn:
            conn.execute(leases.update().where(leases.c.name == name, leases.c.holder == holder).values(expires_at=now))

    def holder(self, name: str, now: datetime) -> str | None:
        """Who holds lease ``name`` at ``now`` (None when free or expired)."""
        leases = t.leases
        with self._db.read() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.name == name)).one_or_none()
        if row is None or row.expires_at <= now:
            return None
        holder: str = row.holder
        return holder
