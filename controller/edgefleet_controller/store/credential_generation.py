"""The credential generation: one counter (``change_counters`` row ``credentials``) that every revocation
bumps in its own transaction (an operator token revoked; a device disabled, enabled, deleted or given a new
credential). A replica may keep authenticated callers in memory only while the generation it last read is
unchanged, so a revocation through any replica is seen by every replica's next read of this one row.

The row is created by migration 0005; a database without it reads 0 and the first bump creates it.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgefleet_controller.store import schema as t
from edgefleet_controller.store.db import AggregateStore

COUNTER: Final = "credentials"


def bump_in(conn: Connection) -> None:
    """Move the generation inside the caller's write transaction (commits with the revocation). Write
    transactions are serialised (``Database.transaction``), so the missing-row insert cannot race."""
    counters = t.change_counters
    moved = conn.execute(counters.update().where(counters.c.name == COUNTER).values(value=counters.c.value + 1))
    if moved.rowcount == 0:
        conn.execute(counters.insert().values(name=COUNTER, value=1))


class CredentialGenerationStore(AggregateStore):
    def read(self) -> int:
        """The current generation (0 before the first revocation)."""
        counters = t.change_counters
        with self._db.read() as conn:
            value = conn.execute(sa.select(counters.c.value).where(counters.c.name == COUNTER)).scalar_one_or_none()
        return int(value or 0)
