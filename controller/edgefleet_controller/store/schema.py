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
from typing import Any

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


# ---- column shapes every table spells the same way ------------------------------------------------------
# (a Column belongs to one table, so these build a fresh one per call)

_SHORT = 64  # ids we mint (devices, tokens, rollouts), kinds, epochs, hex sha256 hashes
_DIGEST = 71  # "sha256:" + 64 hex
_TEXT = 255  # names, sites, versions, who did it
PRECISION_CHARS = 100  # a precision variant's name (request_bounds.PRECISION_RE)


def _short(name: str, *args: Any, **options: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.String(_SHORT), *args, **options)


def _text(name: str, *args: Any, **options: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.String(_TEXT), *args, **options)


def _digest(name: str = "bundle_digest", *args: Any, **options: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.String(_DIGEST), *args, **options)


def _time(name: str, *, nullable: bool = False, **options: Any) -> sa.Column[Any]:
    return sa.Column(name, UTCDateTime(), nullable=nullable, **options)


def _json(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    """Canonical JSON text (see the module docstring)."""
    return sa.Column(name, sa.Text(), nullable=nullable)


def _serial_id() -> sa.Column[Any]:
    return sa.Column("id", BigId, primary_key=True, autoincrement=True)


def _owner(table: str, column: str = "id", name: str | None = None, **options: Any) -> sa.Column[Any]:
    """A reference to the row of ``table`` this row belongs to; deleted with it."""
    return _short(
        name or f"{table.removesuffix('s')}_id", sa.ForeignKey(f"{table}.{column}", ondelete="CASCADE"), **options
    )


def _device_upload(*columns: Any) -> list[Any]:
    """A record a device uploads: stored exactly once by ``(device_id, epoch, seq)``, sized and timestamped
    on receipt (see "telemetry" below)."""
    return [
        _serial_id(),
        _owner("devices", nullable=False),
        _short("epoch", nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        *columns,
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        _time("received_at", index=True),
        sa.UniqueConstraint("device_id", "epoch", "seq"),
    ]


enrollment_tokens = sa.Table(
    "enrollment_tokens",
    metadata,
    _short("id", primary_key=True),
    _short("secret_sha256", nullable=False),
    _text("site", nullable=False, index=True),
    _time("created_at"),
    _time("expires_at"),
    _time("revoked_at", nullable=True),
    sa.Column("max_uses", sa.Integer(), nullable=True),
    sa.Column("uses", sa.Integer(), nullable=False),
    _text("created_by", nullable=True),
)

devices = sa.Table(
    "devices",
    metadata,
    _short("id", primary_key=True),
    _text("name", nullable=False),
    _text("site", nullable=False, index=True),
    _json("tags_json"),
    _text("hardware_class", nullable=False),
    _json("facts_json"),
    _short("credential_sha256", nullable=False),
    _short("enrollment_token_id", sa.ForeignKey("enrollment_tokens.id", ondelete="SET NULL"), nullable=True),
    _time("enrolled_at"),
    _time("last_seen", nullable=True, index=True),
    _json("reported_json"),
    _digest("running_bundle", nullable=True, index=True),
    _short("health", nullable=False, index=True),
    # (migration 0005) set while an operator has disabled the device: its credential is refused
    _time("disabled_at", nullable=True),
    # (migration 0007) a device name is unique within its site
    sa.Index(None, "site", "name", unique=True),
)

device_tags = sa.Table(
    "device_tags",
    metadata,
    _owner("devices", primary_key=True),
    _text("key", primary_key=True),
    _text("value", nullable=False),
    sa.Index(None, "key", "value"),
)

device_bundle_refs = sa.Table(
    "device_bundle_refs",
    metadata,
    _owner("devices", primary_key=True),
    # "running" or "slot:<name>"
    _text("source", primary_key=True),
    _digest(nullable=False, index=True),
)

operator_tokens = sa.Table(
    "operator_tokens",
    metadata,
    _short("id", primary_key=True),
    _text("name", nullable=False),
    sa.Column("role", sa.String(16), nullable=False, index=True),
    _short("secret_sha256", nullable=False),
    _time("created_at"),
    _time("expires_at", nullable=True),
    _time("revoked_at", nullable=True),
    # (migration 0005) the last authenticated call, recorded at most once a minute per token
    _time("last_used_at", nullable=True),
)

trusted_keys = sa.Table(
    "trusted_keys",
    metadata,
    _text("key_id", primary_key=True),
    sa.Column("public_key_pem", sa.Text(), nullable=False),
    _time("added_at"),
    _time("revoked_at", nullable=True),
)

bundles = sa.Table(
    "bundles",
    metadata,
    _digest("digest", primary_key=True),
    _text("name", nullable=False),
    _text("version", nullable=False),
    sa.Column("manifest", sa.LargeBinary(), nullable=False),
    sa.Column("signature", sa.LargeBinary(), nullable=False),
    _text("key_id", nullable=False),
    sa.Column("size", sa.BigInteger(), nullable=False),
    _time("created_at"),
    sa.UniqueConstraint("name", "version"),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    _digest("digest", primary_key=True),
    sa.Column("size", sa.BigInteger(), nullable=False),
    _time("created_at"),
)

bundle_artifacts = sa.Table(
    "bundle_artifacts",
    metadata,
    _digest("bundle_digest", sa.ForeignKey("bundles.digest", ondelete="CASCADE"), primary_key=True),
    _text("role", primary_key=True),
    _digest("artifact_digest", sa.ForeignKey("artifacts.digest"), nullable=False, index=True),
)

config_revisions = sa.Table(
    "config_revisions",
    metadata,
    sa.Column("revision", sa.Integer(), primary_key=True, autoincrement=True),
    _text("applied_by", nullable=False),
    _time("applied_at"),
)

config_documents = sa.Table(
    "config_documents",
    metadata,
    _serial_id(),
    _short("kind", nullable=False),
    _text("name", nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    _text("site", nullable=True),
    _json("doc_json", nullable=True),
    _digest("content_digest", nullable=True),
    sa.Column("deleted", sa.Boolean(), nullable=False),
    sa.Column("is_current", sa.Boolean(), nullable=False, index=True),
    sa.Column("revision", sa.Integer(), sa.ForeignKey("config_revisions.revision"), nullable=False),
    _text("applied_by", nullable=False),
    _time("applied_at"),
    sa.UniqueConstraint("kind", "name", "version"),
)

desired_state = sa.Table(
    "desired_state",
    metadata,
    _owner("devices", primary_key=True),
    # RESTRICT: the store refuses such deletes with a readable error first; this is the backstop.
    _digest("bundle_digest", sa.ForeignKey("bundles.digest", ondelete="RESTRICT"), nullable=True, index=True),
    _digest("config_digest", nullable=True),
    sa.Column("revision", sa.BigInteger(), nullable=False),
    sa.Column("change_seq", sa.BigInteger(), nullable=False, index=True),
    _time("updated_at"),
    sa.Column("reason", sa.Text(), nullable=True),
    # deliberately no foreign key to ``rollouts``: the id is provenance ("which rollout asked for this"),
    # and direct assignments and tests may name ids that no rollouts row holds
    _short("rollout_id", nullable=True, index=True),
    # (migration 0004) minted for every change of the desired target; devices echo it with their outcomes
    sa.Column("assignment_id", sa.String(128), nullable=True),
)

change_counters = sa.Table(
    "change_counters",
    metadata,
    _short("name", primary_key=True),
    sa.Column("value", sa.BigInteger(), nullable=False),
)
DESIRED_STATE_COUNTER = "desired_state"

device_events = sa.Table(
    "device_events",
    metadata,
    _serial_id(),
    _owner("devices", nullable=False),
    _short("kind", nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=True),
    _json("payload_json"),
    _time("at"),
    _time("received_at"),
    # NULL seqs never collide on either backend, so events without a sequence are never deduplicated
    sa.UniqueConstraint("device_id", "seq"),
    sa.Index(None, "device_id", "kind", "id"),
    sa.Index(None, "kind", "id"),
)


# ---- rollouts (migration 0002) ---------------------------------------------------------------------------

rollouts = sa.Table(
    "rollouts",
    metadata,
    _short("id", primary_key=True),
    _text("name", nullable=False, index=True),
    _digest(nullable=False, index=True),
    # the operator's spec plus create-time facts (admission lines, forced); never changes after create
    _json("spec_json"),
    # the planner's RolloutState, replaced on every plan that changes it
    _json("state_json"),
    sa.Column("phase", sa.String(32), nullable=False, index=True),
    _time("created_at"),
    _time("updated_at"),
    # optimistic concurrency: every state write is UPDATE ... WHERE version = <the version read>
    sa.Column("version", sa.Integer(), nullable=False),
)

rollout_commands = sa.Table(
    "rollout_commands",
    metadata,
    _serial_id(),
    _owner("rollouts", nullable=False),
    sa.Column("command", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    _text("requested_by", nullable=True),
    _time("created_at"),
    # set in the same transaction that persists the plan which consumed the command
    _time("consumed_at", nullable=True),
    sa.Index(None, "rollout_id", "consumed_at"),
)

rollout_events = sa.Table(
    "rollout_events",
    metadata,
    _serial_id(),
    _owner("rollouts", nullable=False),
    _short("event", nullable=False),
    _json("fields_json"),
    _time("at"),
    sa.Index(None, "rollout_id", "id"),
)

# Bundles an unfinished rollout needs: its target, and every bundle a device it moved may be sent back to.
# Rows go when the rollout reaches a terminal phase; ``BundleStore.delete`` refuses while any row names
# the bundle.
rollout_bundle_refs = sa.Table(
    "rollout_bundle_refs",
    metadata,
    _owner("rollouts", primary_key=True),
    _digest(primary_key=True, index=True),
    # "target" or "previous"
    sa.Column("role", sa.String(16), nullable=False),
)

hardware_profiles = sa.Table(
    "hardware_profiles",
    metadata,
    _serial_id(),
    _text("hardware_class", nullable=False),
    _digest(nullable=False),
    sa.Column("p95_ms", sa.Float(), nullable=False),
    sa.Column("p50_ms", sa.Float(), nullable=True),
    # "canary" (a device's verdict on live frames) or "profile" (a benchmark run by the model pipeline)
    sa.Column("source", sa.String(16), nullable=False),
    _short("device_id", nullable=True),
    _time("measured_at"),
    sa.Index(None, "bundle_digest", "hardware_class"),
)

# ---- rollout truth (migration 0004) ---------------------------------------------------------------------

# A device's failed canary verdict or rollback of a bundle, reported under an assignment: one row per
# (bundle, device, assignment). CreateRollout refuses a bundle with any row unless forced.
bundle_failures = sa.Table(
    "bundle_failures",
    metadata,
    _serial_id(),
    _digest(nullable=False, index=True),
    # no foreign key: the record outlives the device and is shown by name
    _short("device_id", nullable=False),
    _text("device_name", nullable=False),
    _short("rollout_id", nullable=True),
    sa.Column("assignment_id", sa.String(128), nullable=False),
    # "canary_fail" or "rolled_back"
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("summary", sa.Text(), nullable=False),
    _time("at"),
    sa.UniqueConstraint("bundle_digest", "device_id", "assignment_id"),
)

# A config document revision stored staged instead of live: it takes effect only through the rollout that
# claims it (``rollout_id``), and becomes a live version when that rollout completes (discarded otherwise).
staged_configs = sa.Table(
    "staged_configs",
    metadata,
    _short("kind", primary_key=True),
    _text("name", primary_key=True),
    _text("site", nullable=True),
    _json("doc_json"),
    _digest("content_digest", nullable=False),
    _text("staged_by", nullable=False),
    _time("staged_at"),
    _short("rollout_id", nullable=True, index=True),
)

# Named leases for work only one controller replica may do at a time (the rollout reconciler).
leases = sa.Table(
    "leases",
    metadata,
    _short("name", primary_key=True),
    _text("holder", nullable=False),
    _time("expires_at"),
)


# ---- telemetry (migration 0003) --------------------------------------------------------------------------
# Every record a device uploads lands exactly once, by (device_id, epoch, seq), in the table of its kind;
# ``telemetry_marks`` holds the contiguous high-water mark per (device, epoch) and ``telemetry_pending``
# the stored or declared-dropped ranges above it. Both are written in the same transaction as the records.

telemetry_marks = sa.Table(
    "telemetry_marks",
    metadata,
    _owner("devices", primary_key=True),
    _short("epoch", primary_key=True),
    # every seq <= acked_through is stored (or was declared dropped by the device)
    sa.Column("acked_through", sa.BigInteger(), nullable=False),
    sa.Column("records", sa.BigInteger(), nullable=False),
    sa.Column("duplicates", sa.BigInteger(), nullable=False),
    sa.Column("declared_dropped", sa.BigInteger(), nullable=False),
    _time("updated_at"),
)

telemetry_pending = sa.Table(
    "telemetry_pending",
    metadata,
    _owner("devices", primary_key=True),
    _short("epoch", primary_key=True),
    sa.Column("first_seq", sa.BigInteger(), primary_key=True),
    sa.Column("last_seq", sa.BigInteger(), nullable=False),
)

telemetry_windows = sa.Table(
    "telemetry_windows",
    metadata,
    *_device_upload(
        _text("site", nullable=False),
        _digest(nullable=False),
        _time("window_start", index=True),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("frames", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        # serialized edgefleet.v1.LatencySketch, merged at query time (never averaged percentiles)
        sa.Column("latency_e2e", sa.LargeBinary(), nullable=False),
        sa.Column("latency_model", sa.LargeBinary(), nullable=False),
        sa.Column("p95_e2e_ms", sa.Float(), nullable=False),
        _json("confidence_json"),
        _json("sensors_json"),
        _json("dropped_json"),
        _short("provider", nullable=False),
        sa.Column("throttling", sa.Boolean(), nullable=False),
        # the precision variant that served the window (migration 0008): its name as the bundle declares it
        # (request_bounds.PRECISION_RE, at most 100 characters); '' for windows of devices that predate it
        sa.Column("precision", sa.String(PRECISION_CHARS), nullable=False, server_default=""),
    ),
    sa.Index(None, "device_id", "window_start"),
    sa.Index(None, "site", "window_start"),
    sa.Index(None, "bundle_digest", "window_start"),
)

telemetry_events = sa.Table(
    "telemetry_events",
    metadata,
    *_device_upload(
        _short("event_id", nullable=False),
        _short("kind", nullable=False),
        _digest(nullable=False),
        _time("at", index=True),
        # serialized edgefleet.v1.DeviceEvent
        sa.Column("payload", sa.LargeBinary(), nullable=False),
    ),
    sa.Index(None, "device_id", "at"),
)

review_samples = sa.Table(
    "review_samples",
    metadata,
    *_device_upload(
        _short("sample_id", nullable=False, index=True),
        _text("site", nullable=False),
        _digest(nullable=False),
        _time("captured_at", index=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("top_confidence", sa.Float(), nullable=False),
        sa.Column("jpeg", sa.LargeBinary(), nullable=False),
        _json("results_json"),
        # NULL (unlabelled), "tp" or "fp"
        sa.Column("label", sa.String(8), nullable=True),
        _text("labeled_by", nullable=True),
        _time("labeled_at", nullable=True),
    ),
    sa.Index(None, "site", "bundle_digest", "label"),
    # a sample's identity (migration 0006): ids are scoped per device, never global
    sa.Index(None, "device_id", "sample_id", unique=True),
)

# The confidence histogram a device showed right after committing a bundle (see telemetry/drift.py).
telemetry_baselines = sa.Table(
    "telemetry_baselines",
    metadata,
    _owner("devices", primary_key=True),
    _digest(nullable=False),
    sa.Column("windows", sa.Integer(), nullable=False),
    sa.Column("windows_needed", sa.Integer(), nullable=False),
    _json("counts_json"),
    _time("started_at"),
)
