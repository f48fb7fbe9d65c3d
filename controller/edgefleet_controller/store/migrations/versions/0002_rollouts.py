"""Rollouts: rollouts (spec + planner state, versioned), queued operator commands, rollout history, the
bundles unfinished rollouts need, hardware latency profiles for admission, and named leases (reconciler
leadership across controller replicas).

Self-contained on purpose (does not import ``schema.py``), like 0001.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)
_DIGEST = sa.String(71)
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _rollout_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["rollout_id"], ["rollouts.id"], name=f"fk_{table}_rollout_id_rollouts", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("bundle_digest", _DIGEST, nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("state_json", sa.Text(), nullable=False),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
    )
    op.create_index("ix_rollouts_name", "rollouts", ["name"])
    op.create_index("ix_rollouts_bundle_digest", "rollouts", ["bundle_digest"])
    op.create_index("ix_rollouts_phase", "rollouts", ["phase"])

    op.create_table(
        "rollout_commands",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.String(64), nullable=False),
        sa.Column("command", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(255), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("consumed_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rollout_commands"),
        _rollout_fk("rollout_commands"),
    )
    op.create_index("ix_rollout_commands_rollout_id_consumed_at", "rollout_commands", ["rollout_id", "consumed_at"])

    op.create_table(
        "rollout_events",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("fields_json", sa.Text(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rollout_events"),
        _rollout_fk("rollout_events"),
    )
    op.create_index("ix_rollout_events_rollout_id_id", "rollout_events", ["rollout_id", "id"])

    op.create_table(
        "rollout_bundle_refs",
        sa.Column("rollout_id", sa.String(64), nullable=False),
        sa.Column("bundle_digest", _DIGEST, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", "bundle_digest", name="pk_rollout_bundle_refs"),
        _rollout_fk("rollout_bundle_refs"),
    )
    op.create_index("ix_rollout_bundle_refs_bundle_digest", "rollout_bundle_refs", ["bundle_digest"])

    op.create_table(
        "hardware_profiles",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("hardware_class", sa.String(255), nullable=False),
        sa.Column("bundle_digest", _DIGEST, nullable=False),
        sa.Column("p95_ms", sa.Float(), nullable=False),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.Column("measured_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hardware_profiles"),
    )
    op.create_index(
        "ix_hardware_profiles_bundle_digest_hardware_class", "hardware_profiles", ["bundle_digest", "hardware_class"]
    )

    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_hardware_profiles_bundle_digest_hardware_class", table_name="hardware_profiles")
    op.drop_table("hardware_profiles")
    op.drop_index("ix_rollout_bundle_refs_bundle_digest", table_name="rollout_bundle_refs")
    op.drop_table("rollout_bundle_refs")
    op.drop_index("ix_rollout_events_rollout_id_id", table_name="rollout_events")
    op.drop_table("rollout_events")
    op.drop_index("ix_rollout_commands_rollout_id_consumed_at", table_name="rollout_commands")
    op.drop_table("rollout_commands")
    op.drop_index("ix_rollouts_phase", table_name="rollouts")
    op.drop_index("ix_rollouts_bundle_digest", table_name="rollouts")
    op.drop_index("ix_rollouts_name", table_name="rollouts")
    op.drop_table("rollouts")
