"""Initial schema: enrollment/operator tokens, devices, trusted keys, bundles and artifacts, configs,
desired state with its change counter, device events.

Self-contained on purpose (does not import ``schema.py``), so later edits to the head schema cannot change
what this step creates. Rollouts, telemetry and review samples arrive in later migrations.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)
_DIGEST = sa.String(71)
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_enrollment_tokens"),
    )
    op.create_index("ix_enrollment_tokens_site", "enrollment_tokens", ["site"])

    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("tags_json", sa.Text(), nullable=False),
        sa.Column("hardware_class", sa.String(255), nullable=False),
        sa.Column("facts_json", sa.Text(), nullable=False),
        sa.Column("credential_sha256", sa.String(64), nullable=False),
        sa.Column("enrollment_token_id", sa.String(64), nullable=True),
        sa.Column("enrolled_at", _TS, nullable=False),
        sa.Column("last_seen", _TS, nullable=True),
        sa.Column("reported_json", sa.Text(), nullable=False),
        sa.Column("running_bundle", _DIGEST, nullable=True),
        sa.Column("health", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.ForeignKeyConstraint(
            ["enrollment_token_id"],
            ["enrollment_tokens.id"],
            name="fk_devices_enrollment_token_id_enrollment_tokens",
            ondelete="SET NULL",
        ),
    )
    op.create_index("ix_devices_site", "devices", ["site"])
    op.create_index("ix_devices_last_seen", "devices", ["last_seen"])
    op.create_index("ix_devices_running_bundle", "devices", ["running_bundle"])
    op.create_index("ix_devices_health", "devices", ["health"])

    op.create_table(
        "device_tags",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "key", name="pk_device_tags"),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_tags_device_id_devices", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_device_tags_key_value", "device_tags", ["key", "value"])

    op.create_table(
        "device_bundle_refs",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("bundle_digest", _DIGEST, nullable=False),
        sa.PrimaryKeyConstraint("device_id", "source", name="pk_device_bundle_refs"),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_bundle_refs_device_id_devices", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_device_bundle_refs_bundle_digest", "device_bundle_refs", ["bundle_digest"])

    op.create_table(
        "operator_tokens",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_operator_tokens"),
    )
    op.create_index("ix_operator_tokens_role", "operator_tokens", ["role"])

    op.create_table(
        "trusted_keys",
        sa.Column("key_id", sa.String(255), nullable=False),
        sa.Column("public_key_pem", sa.Text(), nullable=False),
        sa.Column("added_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_trusted_keys"),
    )

    op.create_table(
        "bundles",
        sa.Column("digest", _DIGEST, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.String(255), nullable=False),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_bundles"),
        sa.UniqueConstraint("name", "version", name="uq_bundles_name_version"),
    )

    op.create_table(
        "artifacts",
        sa.Column("digest", _DIGEST, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_artifacts"),
    )

    op.create_table(
        "bundle_artifacts",
        sa.Column("bundle_digest", _DIGEST, nullable=False),
        sa.Column("role", sa.String(255), nullable=False),
        sa.Column("artifact_digest", _DIGEST, nullable=False),
        sa.PrimaryKeyConstraint("bundle_digest", "role", name="pk_bundle_artifacts"),
        sa.ForeignKeyConstraint(
            ["bundle_digest"],
            ["bundles.digest"],
            name="fk_bundle_artifacts_bundle_digest_bundles",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["artifact_digest"], ["artifacts.digest"], name="fk_bundle_artifacts_artifact_digest_artifacts"
        ),
    )
    op.create_index("ix_bundle_artifacts_artifact_digest", "bundle_artifacts", ["artifact_digest"])

    op.create_table(
        "config_revisions",
        sa.Column("revision", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("applied_by", sa.String(255), nullable=False),
        sa.Column("applied_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("revision", name="pk_config_revisions"),
    )

    op.create_table(
        "config_documents",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(255), nullable=True),
        sa.Column("doc_json", sa.Text(), nullable=True),
        sa.Column("content_digest", _DIGEST, nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("applied_by", sa.String(255), nullable=False),
        sa.Column("applied_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_config_documents"),
        sa.UniqueConstraint("kind", "name", "version", name="uq_config_documents_kind_name_version"),
        sa.ForeignKeyConstraint(
            ["revision"],
            ["config_revisions.revision"],
            name="fk_config_documents_revision_config_revisions",
        ),
    )
    op.create_index("ix_config_documents_is_current", "config_documents", ["is_current"])

    op.create_table(
        "desired_state",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("bundle_digest", _DIGEST, nullable=True),
        sa.Column("config_digest", _DIGEST, nullable=True),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("rollout_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("device_id", name="pk_desired_state"),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_desired_state_device_id_devices", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["bundle_digest"],
            ["bundles.digest"],
            name="fk_desired_state_bundle_digest_bundles",
            ondelete="RESTRICT",
        ),
    )
    op.create_index("ix_desired_state_bundle_digest", "desired_state", ["bundle_digest"])
    op.create_index("ix_desired_state_change_seq", "desired_state", ["change_seq"])
    op.create_index("ix_desired_state_rollout_id", "desired_state", ["rollout_id"])

    counters = op.create_table(
        "change_counters",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_change_counters"),
    )
    op.bulk_insert(counters, [{"name": "desired_state", "value": 0}])

    op.create_table(
        "device_events",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_events"),
        sa.UniqueConstraint("device_id", "seq", name="uq_device_events_device_id_seq"),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_events_device_id_devices", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_device_events_device_id_kind_id", "device_events", ["device_id", "kind", "id"])
    op.create_index("ix_device_events_kind_id", "device_events", ["kind", "id"])


def downgrade() -> None:
    for table in (
        "device_events",
        "change_counters",
        "desired_state",
        "config_documents",
        "config_revisions",
        "bundle_artifacts",
        "artifacts",
        "bundles",
        "trusted_keys",
        "operator_tokens",
        "device_bundle_refs",
        "device_tags",
        "devices",
        "enrollment_tokens",
    ):
        op.drop_table(table)
