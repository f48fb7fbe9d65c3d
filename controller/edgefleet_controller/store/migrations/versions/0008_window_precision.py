"""The precision variant that served each metric window: ``telemetry_windows.precision``.

Devices send the served variant's name (``MetricWindow.precision``: ``fp32``, ``int8-u8s8``, …; at most 100
characters, ``request_bounds.PRECISION_RE``) so a query can say which variant produced which latency.
Purely additive: the column is ``NOT NULL`` with the server default ``''``, so every existing row (and a
window from a device that predates the field) reads as "variant not known" without a rewrite of the table
on either backend.

Self-contained on purpose (does not import ``schema.py``), like 0001–0007.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "telemetry_windows", sa.Column("precision", sa.String(100), nullable=False, server_default=sa.text("''"))
    )


def downgrade() -> None:
    with op.batch_alter_table("telemetry_windows") as batch:
        batch.drop_column("precision")
