"""A comparable picture of every table of a controller's database, to prove that a refused call stored nothing.

``StoreReader(engine).snapshot()`` reads every row of every table the database holds (reflected, so a table a
newer migration adds is compared too, without this module knowing it); two snapshots compare equal when no row
was added, removed or changed. ``diff`` says which tables moved and how, with values shown truncated.

Columns that change while nothing is stored are left out (``VOLATILE``), each for its reason:

- ``leases.expires_at``: the rollout reconciler renews its lease on every pass, whatever the calls;
- ``operator_tokens.last_used_at``: the last use of a token is recorded when it authenticates (at most once a
  minute), and a refused call is authenticated first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa

#: Table → columns left out of a snapshot (see the module docstring for why each).
VOLATILE: Mapping[str, frozenset[str]] = {
    "leases": frozenset({"expires_at"}),
    "operator_tokens": frozenset({"last_used_at"}),
}
#: Values longer than this are kept as their length and digest, so a snapshot stays small.
_INLINE = 200


def _cell(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview | str):
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
        if len(data) > _INLINE:
            return f"<{len(data)} bytes sha256:{hashlib.sha256(data).hexdigest()[:16]}>"
    return repr(value)


@dataclass(frozen=True)
class StoreSnapshot:
    """Every table's rows (volatile columns left out), each row as a tuple of shown cells, sorted."""

    tables: Mapping[str, tuple[tuple[str, ...], ...]]

    def diff(self, after: StoreSnapshot) -> list[str]:
        """One line per table that differs: the rows only before (-) and only after (+), a few shown."""
        lines = []
        for name in sorted(set(self.tables) | set(after.tables)):
            old, new = set(self.tables.get(name, ())), set(after.tables.get(name, ()))
            if old == new:
                continue
            gone, added = sorted(old - new), sorted(new - old)
            lines.append(f"{name}: -{len(gone)} +{len(added)} rows; -{gone[:2]} +{added[:2]}"[:600])
        return lines


class StoreReader:
    """Reads snapshots of ``engine``'s database; the tables are reflected once, when the reader is made (after
    the controller migrated the database)."""

    def __init__(self, engine: sa.Engine, volatile: Mapping[str, frozenset[str]] = VOLATILE) -> None:
        self.engine = engine
        meta = sa.MetaData()
        meta.reflect(engine)
        self._selects = {
            name: sa.select(*[c for c in table.columns if c.name not in volatile.get(name, frozenset())])
            for name, table in meta.tables.items()
        }

    def snapshot(self) -> StoreSnapshot:
        """Every table's rows as they are now."""
        tables = {}
        with self.engine.connect() as conn:
            for name, select in self._selects.items():
                rows = conn.execute(select).all()
                tables[name] = tuple(sorted(tuple(_cell(v) for v in row) for row in rows))
        return StoreSnapshot(tables)
