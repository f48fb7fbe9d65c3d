"""Revocation: ``devices.disabled_at`` (an operator disabled the device; its credential is refused until it
is enabled again) and ``operator_tokens.last_used_at`` (recorded at most once a minute per token).

It also creates the ``credentials`` row of ``change_counters``: the credential generation every revocation
bumps (``store.credential_generation``).

Self-contained on purpose (does not import ``schema.py``), like 0001–0004. Purely additive: existing devices
stay enabled, existing tokens show no last use.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("devices", sa.Column("disabled_at", _TS, nullable=True))
    op.add_column("operator_tokens", sa.Column("last_used_at", _TS, nullable=True))
    counters = sa.table("change_counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger))
    op.bulk_insert(counters, [{"name": "credentials", "value": 0}])


def downgrade() -> None:
    op.execute("DELETE FROM change_counters WHERE name = 'credentials'")
    with op.batch_alter_table("operator_tokens") as batch:
        batch.drop_column("last_used_at")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("disabled_at")
