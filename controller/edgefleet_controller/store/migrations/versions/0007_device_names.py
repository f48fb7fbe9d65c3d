"""Device names unique per site: a unique index on ``devices (site, name)``.

Older versions accepted a second device of the same name in one site. So that this migration never fails on
such a database, it first renames every later duplicate (by ``enrolled_at``, then id; the first enrolled
keeps its name) to ``<name>-<first 8 hex of its id>`` (longer if that is taken too) and logs each rename as
``store.migration_device_renamed`` with the device id, site, old and new name. The device keeps its id and
credential; only the name operators see changes. Not undone by ``downgrade`` (which drops the index only).

Self-contained on purpose (does not import ``schema.py``), like 0001–0006.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
import structlog
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_INDEX = "ix_devices_site_name"

log = structlog.get_logger(__name__)


def _free_name(name: str, device_id: str, taken: set[tuple[str, str]], site: str) -> str:
    """``name-<8 hex of the id>``, or with more of the id until no device of ``site`` has it."""
    hex_part = device_id.split("_", 1)[-1]
    for width in (8, len(hex_part)):
        candidate = f"{name}-{hex_part[:width]}"
        if (site, candidate) not in taken:
            return candidate
    n = 2
    while (site, f"{name}-{hex_part}-{n}") in taken:
        n += 1
    return f"{name}-{hex_part}-{n}"


def upgrade() -> None:
    conn = op.get_bind()
    devices = sa.table(
        "devices",
        sa.column("id", sa.String),
        sa.column("site", sa.String),
        sa.column("name", sa.String),
        sa.column("enrolled_at", sa.DateTime(timezone=True)),
    )
    rows = conn.execute(
        sa.select(devices.c.id, devices.c.site, devices.c.name).order_by(
            devices.c.site, devices.c.name, devices.c.enrolled_at, devices.c.id
        )
    ).all()
    taken = {(row.site, row.name) for row in rows}
    kept: set[tuple[str, str]] = set()
    for row in rows:
        if (row.site, row.name) not in kept:
            kept.add((row.site, row.name))
            continue
        new_name = _free_name(row.name, row.id, taken, row.site)
        taken.add((row.site, new_name))
        conn.execute(devices.update().where(devices.c.id == row.id).values(name=new_name))
        log.warning(
            "store.migration_device_renamed",
            device_id=row.id,
            site=row.site,
            old_name=row.name,
            new_name=new_name,
            why="device names are unique per site from schema 0007; the first enrolled kept the name",
        )
    op.create_index(_INDEX, "devices", ["site", "name"], unique=True)


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="devices")
