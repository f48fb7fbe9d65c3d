"""The store's tables (SQLAlchemy Core), portable between SQLite and PostgreSQL.

This module describes the schema at migration head; the migrations under ``migrations/versions`` are what
create it, and a test checks that both agree. Portability choices:

- times are ``UTCDateTime``: aware UTC datetimes in Python; SQLite keeps them as naive UTC text, PostgreSQL
  as ``timestamptz``;
- JSON documents are ``Text`` holding canonical JSON (sorted keys, no spaces), so equal documents are equal
  strings on every backend and nothing depends on a backend's JSON operators;
- tags are kept as JSON on the device and mirrored in ``device_tags`` (one row per key), so a ``k=v``
  filter is a plain indexed ``EXISTS``;
- bundle references a device holds (running, and in each slot) live in ``device_bundle_refs`` so deleting a
  bundle can be refused with one indexed query;
- surrogate keys that must auto-increment are ``BIGINT`` on PostgreSQL and ``INTEGER`` (the rowid) on SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC datetime on every backend; naive datetimes are refused, not guessed."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to the store; pass an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


enrollment_tokens = sa.Table(
    "enrollment_tokens",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("site", sa.String(255), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("max_uses", sa.Integer(), nullable=True),
    sa.Column("uses", sa.Integer(), nullable=False),
    sa.Column("created_by", sa.String(255), nullable=True),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("site", sa.String(255), nullable=False, index=True),
    sa.Column("tags_json", sa.Text(), nullable=False),
    sa.Column("hardware_class", sa.String(255), nullable=False),
    sa.Column("facts_json", sa.Text(), nullable=False),
    sa.Column("credential_sha256", sa.String(64), nullable=False),
    sa.Column(
        "enrollment_token_id",
        sa.String(64),
        sa.ForeignKey("enrollment_tokens.id", ondelete="SET NULL"),
        nullable=True,
    ),
    sa.Column("enrolled_at", UTCDateTime(), nullable=False),
    sa.Column("last_seen", UTCDateTime(), nullable=True, index=True),
    sa.Column("reported_json", sa.Text(), nullable=False),
    sa.Column("running_bundle", sa.String(71), nullable=True, index=True),
    sa.Column("health", sa.String(64), nullable=False, index=True),
)

device_tags = sa.Table(
    "device_tags",
    metadata,
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
    sa.Index(None, "key", "value"),
)

device_bundle_refs = sa.Table(
    "device_bundle_refs",
    metadata,
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    # "running" or "slot:<name>"
    sa.Column("source", sa.String(255), primary_key=True),
    sa.Column("bundle_digest", sa.String(71), nullable=False, index=True),
)

operator_tokens = sa.Table(
    "operator_tokens",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False, index=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)

trusted_keys = sa.Table(
    "trusted_keys",
    metadata,
    sa.Column("key_id", sa.String(255), primary_key=True),
    sa.Column("public_key_pem", sa.Text(), nullable=False),
    sa.Column("added_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)

bundles = sa.Table(
    "bundles",
    metadata,
    sa.Column("digest", sa.String(71), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("version", sa.String(255), nullable=False),
    sa.Column("manifest", sa.LargeBinary(), nullable=False),
    sa.Column("signature", sa.LargeBinary(), nullable=False),
    sa.Column("key_id", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("name", "version"),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("digest", sa.String(71), primary_key=True),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

bundle_artifacts = sa.Table(
    "bundle_artifacts",
    metadata,
    sa.Column("bundle_digest", sa.String(71), sa.ForeignKey("bundles.digest", ondelete="CASCADE"), primary_key=True),
    sa.Column("role", sa.String(255), primary_key=True),
    sa.Column("artifact_digest", sa.String(71), sa.ForeignKey("artifacts.digest"), nullable=False, index=True),
)

config_revisions = sa.Table(
    "config_revisions",
    metadata,
    sa.Column("revision", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("applied_by", sa.String(255), nullable=False),
    sa.Column("applied_at", UTCDateTime(), nullable=False),
)

config_documents = sa.Table(
    "config_documents",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("site", sa.String(255), nullable=True),
    sa.Column("doc_json", sa.Text(), nullable=True),
    sa.Column("content_digest", sa.String(71), nullable=True),
    sa.Column("deleted", sa.Boolean(), nullable=False),
    sa.Column("is_current", sa.Boolean(), nullable=False, index=True),
    sa.Column("revision", sa.Integer(), sa.ForeignKey("config_revisions.revision"), nullable=False),
    sa.Column("applied_by", sa.String(255), nullable=False),
    sa.Column("applied_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("kind", "name", "version"),
)

desired_state = sa.Table(
    "desired_state",
    metadata,
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    # RESTRICT: the store refuses such deletes with a readable error first; this is the backstop.
    sa.Column(
        "bundle_digest",
        sa.String(71),
        sa.ForeignKey("bundles.digest", ondelete="RESTRICT"),
        nullable=True,
        index=True,
    ),
    sa.Column("config_digest", sa.String(71), nullable=True),
    sa.Column("revision", sa.BigInteger(), nullable=False),
    sa.Column("change_seq", sa.BigInteger(), nullable=False, index=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    # deliberately no foreign key to ``rollouts``: the id is provenance ("which rollout asked for this"),
    # and direct assignments and tests may name ids that no rollouts row holds
    sa.Column("rollout_id", sa.String(64), nullable=True, index=True),
    # (migration 0004) minted for every change of the desired target; devices echo it with their outcomes
    sa.Column("assignment_id", sa.String(128), nullable=True),
)

change_counters = sa.Table(
    "change_counters",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger(), nullable=False),
)
DESIRED_STATE_COUNTER = "desired_state"

device_events = sa.Table(
    "device_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=True),
    sa.Column("payload_json", sa.Text(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    # NULL seqs never collide on either backend, so events without a sequence are never deduplicated
    sa.UniqueConstraint("device_id", "seq"),
    sa.Index(None, "device_id", "kind", "id"),
    sa.Index(None, "kind", "id"),
)


# ---- rollouts (migration 0002) ---------------------------------------------------------------------------

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, index=True),
    sa.Column("bundle_digest", sa.String(71), nullable=False, index=True),
    # the operator's spec plus create-time facts (admission lines, forced); never changes after create
    sa.Column("spec_json", sa.Text(), nullable=False),
    # the planner's RolloutState, replaced on every plan that changes it
    sa.Column("state_json", sa.Text(), nullable=False),
    sa.Column("phase", sa.String(32), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # optimistic concurrency: every state write is UPDATE ... WHERE version = <the version read>
    sa.Column("version", sa.Integer(), nullable=False),
)

rollout_commands = sa.Table(
    "rollout_commands",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("rollout_id", sa.String(64), sa.ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("command", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("requested_by", sa.String(255), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # set in the same transaction that persists the plan which consumed the command
    sa.Column("consumed_at", UTCDateTime(), nullable=True),
    sa.Index(None, "rollout_id", "consumed_at"),
)

rollout_events = sa.Table(
    "rollout_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("rollout_id", sa.String(64), sa.ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("fields_json", sa.Text(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Index(None, "rollout_id", "id"),
)

# Bundles an unfinished rollout needs: its target, and every bundle a device it moved may be sent back to.
# Rows go when the rollout reaches a terminal phase; ``BundleStore.delete`` refuses while any row names
# the bundle.
rollout_bundle_refs = sa.Table(
    "rollout_bundle_refs",
    metadata,
    sa.Column("rollout_id", sa.String(64), sa.ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("bundle_digest", sa.String(71), primary_key=True, index=True),
    # "target" or "previous"
    sa.Column("role", sa.String(16), nullable=False),
)

hardware_profiles = sa.Table(
    "hardware_profiles",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("hardware_class", sa.String(255), nullable=False),
    sa.Column("bundle_digest", sa.String(71), nullable=False),
    sa.Column("p95_ms", sa.Float(), nullable=False),
    sa.Column("p50_ms", sa.Float(), nullable=True),
    # "canary" (a device's verdict on live frames) or "profile" (a benchmark run by the model pipeline)
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("device_id", sa.String(64), nullable=True),
    sa.Column("measured_at", UTCDateTime(), nullable=False),
    sa.Index(None, "bundle_digest", "hardware_class"),
)

# ---- rollout truth (migration 0004) ---------------------------------------------------------------------

# A device's failed canary verdict or rollback of a bundle, reported under an assignment: one row per
# (bundle, device, assignment). CreateRollout refuses a bundle with any row unless forced.
bundle_failures = sa.Table(
    "bundle_failures",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("bundle_digest", sa.String(71), nullable=False, index=True),
    # no foreign key: the record outlives the device and is shown by name
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("device_name", sa.String(255), nullable=False),
    sa.Column("rollout_id", sa.String(64), nullable=True),
    sa.Column("assignment_id", sa.String(128), nullable=False),
    # "canary_fail" or "rolled_back"
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("summary", sa.Text(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("bundle_digest", "device_id", "assignment_id"),
)

# A config document revision stored staged instead of live: it takes effect only through the rollout that
# claims it (``rollout_id``), and becomes a live version when that rollout completes (discarded otherwise).
staged_configs = sa.Table(
    "staged_configs",
    metadata,
    sa.Column("kind", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("site", sa.String(255), nullable=True),
    sa.Column("doc_json", sa.Text(), nullable=False),
    sa.Column("content_digest", sa.String(71), nullable=False),
    sa.Column("staged_by", sa.String(255), nullable=False),
    sa.Column("staged_at", UTCDateTime(), nullable=False),
    sa.Column("rollout_id", sa.String(64), nullable=True, index=True),
)

# Named leases for work only one controller replica may do at a time (the rollout reconciler).
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)


# ---- telemetry (migration 0003) --------------------------------------------------------------------------
# Every record a device uploads lands exactly once, by (device_id, epoch, seq), in the table of its kind;
# ``telemetry_marks`` holds the contiguous high-water mark per (device, epoch) and ``telemetry_pending``
# the stored or declared-dropped ranges above it. Both are written in the same transaction as the records.

telemetry_marks = sa.Table(
    "telemetry_marks",
    metadata,
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("epoch", sa.String(64), primary_key=True),
    # every seq <= acked_through is stored (or was declared dropped by the device)
    sa.Column("acked_through", sa.BigInteger(), nullable=False),
    sa.Column("records", sa.BigInteger(), nullable=False),
    sa.Column("duplicates", sa.BigInteger(), nullable=False),
    sa.Column("declared_dropped", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

telemetry_pending = sa.Table(
    "telemetry_pending",
    metadata,
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("epoch", sa.String(64), primary_key=True),
    sa.Column("first_seq", sa.BigInteger(), primary_key=True),
    sa.Column("last_seq", sa.BigInteger(), nullable=False),
)

telemetry_windows = sa.Table(
    "telemetry_windows",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    sa.Column("epoch", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("site", sa.String(255), nullable=False),
    sa.Column("bundle_digest", sa.String(71), nullable=False),
    sa.Column("window_start", UTCDateTime(), nullable=False, index=True),
    sa.Column("window_s", sa.Float(), nullable=False),
    sa.Column("frames", sa.BigInteger(), nullable=False),
    sa.Column("errors", sa.BigInteger(), nullable=False),
    # serialized edgefleet.v1.LatencySketch, merged at query time (never averaged percentiles)
    sa.Column("latency_e2e", sa.LargeBinary(), nullable=False),
    sa.Column("latency_model", sa.LargeBinary(), nullable=False),
    sa.Column("p95_e2e_ms", sa.Float(), nullable=False),
    sa.Column("confidence_json", sa.Text(), nullable=False),
    sa.Column("sensors_json", sa.Text(), nullable=False),
    sa.Column("dropped_json", sa.Text(), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("throttling", sa.Boolean(), nullable=False),
    sa.Column("size_bytes", sa.Integer(), nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False, index=True),
    sa.UniqueConstraint("device_id", "epoch", "seq"),
    sa.Index(None, "device_id", "window_start"),
    sa.Index(None, "site", "window_start"),
    sa.Index(None, "bundle_digest", "window_start"),
)

telemetry_events = sa.Table(
    "telemetry_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    sa.Column("epoch", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("bundle_digest", sa.String(71), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False, index=True),
    # serialized edgefleet.v1.DeviceEvent
    sa.Column("payload", sa.LargeBinary(), nullable=False),
    sa.Column("size_bytes", sa.Integer(), nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False, index=True),
    sa.UniqueConstraint("device_id", "epoch", "seq"),
    sa.Index(None, "device_id", "at"),
)

review_samples = sa.Table(
    "review_samples",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    sa.Column("epoch", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("sample_id", sa.String(64), nullable=False, index=True),
    sa.Column("site", sa.String(255), nullable=False),
    sa.Column("bundle_digest", sa.String(71), nullable=False),
    sa.Column("captured_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("top_confidence", sa.Float(), nullable=False),
    sa.Column("jpeg", sa.LargeBinary(), nullable=False),
    sa.Column("results_json", sa.Text(), nullable=False),
    # NULL (unlabelled), "tp" or "fp"
    sa.Column("label", sa.String(8), nullable=True),
    sa.Column("labeled_by", sa.String(255), nullable=True),
    sa.Column("labeled_at", UTCDateTime(), nullable=True),
    sa.Column("size_bytes", sa.Integer(), nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False, index=True),
    sa.UniqueConstraint("device_id", "epoch", "seq"),
    sa.Index(None, "site", "bundle_digest", "label"),
)

# The confidence histogram a device showed right after committing a bundle (see telemetry/drift.py).
telemetry_baselines = sa.Table(
    "telemetry_baselines",
    metadata,
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("bundle_digest", sa.String(71), nullable=False),
    sa.Column("windows", sa.Integer(), nullable=False),
    sa.Column("windows_needed", sa.Integer(), nullable=False),
    sa.Column("counts_json", sa.Text(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
)
