"""Review sample ids scoped per device: a sample is identified by ``(device_id, sample_id)``, enforced by the
unique index ``ix_review_samples_device_id_sample_id``; the plain ``sample_id`` index stays for a look-up by
id alone (which is refused when several devices have that id).

Existing rows keep working: a device that stored one id twice before (an earlier controller accepted it)
keeps its oldest sample under the id, and each later one is renamed ``<id, cut to 40>~<row id>`` so the
index can be built; ids unique per device are untouched.

Self-contained on purpose (does not import ``schema.py``), like 0001–0005.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

_INDEX = "ix_review_samples_device_id_sample_id"


def _renamed(sample_id: str, row_id: int) -> str:
    return f"{sample_id[:40]}~{row_id}"


def upgrade() -> None:
    conn = op.get_bind()
    rv = sa.table("review_samples", sa.column("id"), sa.column("device_id"), sa.column("sample_id"))
    keep = (
        sa.select(sa.func.min(rv.c.id).label("id"), rv.c.device_id, rv.c.sample_id)
        .group_by(rv.c.device_id, rv.c.sample_id)
        .having(sa.func.count() > 1)
        .subquery()
    )
    later = conn.execute(
        sa.select(rv.c.id, rv.c.sample_id)
        .join(keep, sa.and_(rv.c.device_id == keep.c.device_id, rv.c.sample_id == keep.c.sample_id))
        .where(rv.c.id != keep.c.id)
    ).all()
    for row_id, sample_id in later:
        conn.execute(rv.update().where(rv.c.id == row_id).values(sample_id=_renamed(sample_id, int(row_id))))
    op.create_index(_INDEX, "review_samples", ["device_id", "sample_id"], unique=True)


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="review_samples")
