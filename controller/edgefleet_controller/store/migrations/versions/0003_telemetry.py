"""Telemetry: contiguous marks and pending ranges per (device, epoch), metric windows, telemetry events,
review samples and confidence baselines.

Self-contained on purpose (does not import ``schema.py``), like 0001 and 0002. Purely additive.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)
_DIGEST = sa.String(71)
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _device_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["device_id"], ["devices.id"], name=f"fk_{table}_device_id_devices", ondelete="CASCADE"
    )


def _record_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "telemetry_marks",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.String(64), nullable=False),
        sa.Column("acked_through", sa.BigInteger(), nullable=False),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("declared_dropped", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("device_id", "epoch", name="pk_telemetry_marks"),
        _device_fk("telemetry_marks"),
    )
    op.create_table(
        "telemetry_pending",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.String(64), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "epoch", "first_seq", name="pk_telemetry_pending"),
        _device_fk("telemetry_pending"),
    )
    op.create_table(
        "telemetry_windows",
        *_record_columns(),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("bundle_digest", _DIGEST, nullable=False),
        sa.Column("window_start", _TS, nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("frames", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency_e2e", sa.LargeBinary(), nullable=False),
        sa.Column("latency_model", sa.LargeBinary(), nullable=False),
        sa.Column("p95_e2e_ms", sa.Float(), nullable=False),
        sa.Column("confidence_json", sa.Text(), nullable=False),
        sa.Column("sensors_json", sa.Text(), nullable=False),
        sa.Column("dropped_json", sa.Text(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("throttling", sa.Boolean(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_windows"),
        _device_fk("telemetry_windows"),
        sa.UniqueConstraint("device_id", "epoch", "seq", name="uq_telemetry_windows_device_id_epoch_seq"),
    )
    op.create_index("ix_telemetry_windows_window_start", "telemetry_windows", ["window_start"])
    op.create_index("ix_telemetry_windows_received_at", "telemetry_windows", ["received_at"])
    op.create_index("ix_telemetry_windows_device_id_window_start", "telemetry_windows", ["device_id", "window_start"])
    op.create_index("ix_telemetry_windows_site_window_start", "telemetry_windows", ["site", "window_start"])
    op.create_index(
        "ix_telemetry_windows_bundle_digest_window_start", "telemetry_windows", ["bundle_digest", "window_start"]
    )

    op.create_table(
        "telemetry_events",
        *_record_columns(),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("bundle_digest", _DIGEST, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_events"),
        _device_fk("telemetry_events"),
        sa.UniqueConstraint("device_id", "epoch", "seq", name="uq_telemetry_events_device_id_epoch_seq"),
    )
    op.create_index("ix_telemetry_events_at", "telemetry_events", ["at"])
    op.create_index("ix_telemetry_events_received_at", "telemetry_events", ["received_at"])
    op.create_index("ix_telemetry_events_device_id_at", "telemetry_events", ["device_id", "at"])

    op.create_table(
        "review_samples",
        *_record_columns(),
        sa.Column("sample_id", sa.String(64), nullable=False),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("bundle_digest", _DIGEST, nullable=False),
        sa.Column("captured_at", _TS, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("top_confidence", sa.Float(), nullable=False),
        sa.Column("jpeg", sa.LargeBinary(), nullable=False),
        sa.Column("results_json", sa.Text(), nullable=False),
        sa.Column("label", sa.String(8), nullable=True),
        sa.Column("labeled_by", sa.String(255), nullable=True),
        sa.Column("labeled_at", _TS, nullable=True),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_review_samples"),
        _device_fk("review_samples"),
        sa.UniqueConstraint("device_id", "epoch", "seq", name="uq_review_samples_device_id_epoch_seq"),
    )
    op.create_index("ix_review_samples_sample_id", "review_samples", ["sample_id"])
    op.create_index("ix_review_samples_captured_at", "review_samples", ["captured_at"])
    op.create_index("ix_review_samples_received_at", "review_samples", ["received_at"])
    op.create_index("ix_review_samples_site_bundle_digest_label", "review_samples", ["site", "bundle_digest", "label"])

    op.create_table(
        "telemetry_baselines",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("bundle_digest", _DIGEST, nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("windows_needed", sa.Integer(), nullable=False),
        sa.Column("counts_json", sa.Text(), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_telemetry_baselines"),
        _device_fk("telemetry_baselines"),
    )


def downgrade() -> None:
    for table in ("telemetry_baselines", "review_samples", "telemetry_events", "telemetry_windows"):
        op.drop_table(table)
    op.drop_table("telemetry_pending")
    op.drop_table("telemetry_marks")
