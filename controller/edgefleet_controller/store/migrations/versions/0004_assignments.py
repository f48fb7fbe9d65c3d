"""Rollout truth: the assignment id of every desired state, the canary failures recorded per bundle, and
config document revisions staged for a config rollout.

- ``desired_state.assignment_id``: minted for every change of a device's desired target; the device echoes it
  and a rollout counts only outcomes under the assignments it made. Existing rows keep NULL (no assignment
  yet: nothing a device reports can be counted for any rollout until its desired state changes again).
- ``bundle_failures``: one row per (bundle, device, assignment) whose canary failed or that rolled back.
- ``staged_configs``: at most one staged revision per config document, claimed by at most one rollout.

Self-contained on purpose (does not import ``schema.py``), like 0001–0003. Purely additive.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)
_DIGEST = sa.String(71)
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("desired_state", sa.Column("assignment_id", sa.String(128), nullable=True))

    op.create_table(
        "bundle_failures",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("bundle_digest", _DIGEST, nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("device_name", sa.String(255), nullable=False),
        sa.Column("rollout_id", sa.String(64), nullable=True),
        sa.Column("assignment_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bundle_failures"),
        sa.UniqueConstraint(
            "bundle_digest",
            "device_id",
            "assignment_id",
            name="uq_bundle_failures_bundle_digest_device_id_assignment_id",
        ),
    )
    op.create_index("ix_bundle_failures_bundle_digest", "bundle_failures", ["bundle_digest"])

    op.create_table(
        "staged_configs",
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("site", sa.String(255), nullable=True),
        sa.Column("doc_json", sa.Text(), nullable=False),
        sa.Column("content_digest", _DIGEST, nullable=False),
        sa.Column("staged_by", sa.String(255), nullable=False),
        sa.Column("staged_at", _TS, nullable=False),
        sa.Column("rollout_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("kind", "name", name="pk_staged_configs"),
    )
    op.create_index("ix_staged_configs_rollout_id", "staged_configs", ["rollout_id"])


def downgrade() -> None:
    op.drop_index("ix_staged_configs_rollout_id", table_name="staged_configs")
    op.drop_table("staged_configs")
    op.drop_index("ix_bundle_failures_bundle_digest", table_name="bundle_failures")
    op.drop_table("bundle_failures")
    with op.batch_alter_table("desired_state") as batch:
        batch.drop_column("assignment_id")
