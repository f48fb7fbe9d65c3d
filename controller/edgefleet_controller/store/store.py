"""The controller's database, the fleet's source of truth: SQLAlchemy Core; SQLite default, PostgreSQL-ready.

``Store.open(url)`` creates the engine, applies SQLite pragmas on every new connection (WAL, foreign keys,
busy timeout, full fsync on commit since acknowledged telemetry and enrollments must survive power loss) and
migrates the schema to head with Alembic. Every public method is one short transaction; the store is
synchronous and the gRPC layer calls it through ``asyncio.to_thread``.

Concurrency: on SQLite, write transactions start with ``BEGIN IMMEDIATE`` so two writers queue on the busy
timeout instead of deadlocking on a read-to-write lock upgrade; reads use a plain ``BEGIN`` and, under WAL,
never block writers. On PostgreSQL (READ COMMITTED) every write transaction first takes one transaction-scoped
advisory lock, so writers from all replicas queue exactly as SQLite's do (bounded by the same timeout) and the
store's read-check-then-write methods (bundle publish, bootstrap admin, config apply, event dedupe, the
rollout overlap check) stay race-free between replicas; reads never take it and never block. ``migrate``
holds the same lock, so replicas starting together migrate once. The conditional ``UPDATE``s (token uses,
the change counter, leases) and ``SELECT ... FOR UPDATE`` on desired-state rows would be safe without it.

Time is always passed in (``now``: aware UTC datetime); the store never reads the clock.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, Row

from edgefleet.contract.canonical import canonical_json_text
from edgefleet_controller.store import credentials
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.blobs import check_digest, digest_of
from edgefleet_controller.store.errors import (
    Conflict,
    InvalidArgument,
    InvalidDigest,
    InvalidPageToken,
    InvalidToken,
    NotFound,
    StillReferenced,
    TokenExhausted,
    TokenExpired,
    TokenRevoked,
)
from edgefleet_controller.store.records import (
    REPORTED_HEALTH,
    REPORTED_RUNNING_BUNDLE,
    REPORTED_SLOT_BUNDLE,
    REPORTED_SLOTS,
    UNKNOWN_HEALTH,
    ArtifactRecord,
    ArtifactRef,
    BundleRecord,
    ConfigDocInput,
    ConfigDocRecord,
    DesiredState,
    DeviceRecord,
    EnrollmentTokenRecord,
    EventRecord,
    OperatorRecord,
    OperatorRole,
    SiteSummary,
    TrustedKeyRecord,
)

log = structlog.get_logger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
DATABASE_FILE: Final = "controller.db"
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
MAX_PAGE_SIZE: Final = 1000
BOOTSTRAP_ADMIN_NAME: Final = "bootstrap-admin"

_BEGIN_KEY = "edgefleet.begin"
# PostgreSQL advisory lock id serialising the store's writers (an arbitrary constant: ASCII "edgeflt\0");
# another application sharing the database would have to pick the same number to collide
_PG_WRITER_LOCK: Final = 0x656467_65666C74_00
_PG_LOCK_TIMEOUT: Final = f"{SQLITE_BUSY_TIMEOUT_MS}ms"
# another replica's migration may legitimately take longer than a write
_PG_MIGRATION_LOCK_TIMEOUT: Final = "300s"
_IN_CHUNK = 500  # ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
_MAX_TEXT = 255


class _Unset(Enum):
    UNSET = "unset"


UNSET: Final = _Unset.UNSET
"""Marks a ``set_desired`` field the caller leaves as it is (``None`` clears it)."""


def new_assignment_id() -> str:
    """A fresh, opaque assignment id for a desired-state change the caller did not name."""
    return f"asg_{secrets.token_hex(8)}"


class EventInput(NamedTuple):
    """One device event to store; ``seq`` (per device) makes re-sent events idempotent."""

    kind: str
    payload: Mapping[str, Any]
    at: datetime
    seq: int | None = None


# --------------------------------------------------------------------------------------------------------
# migrations


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration's revision id."""
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found under {MIGRATIONS_DIR}; the package is incomplete")
    return head


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest schema (a no-op when already there)."""
    with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            # session-level, held across alembic's own transaction: a second replica waits here, then
            # finds the schema at head
            connection.exec_driver_sql(f"SET lock_timeout = '{_PG_MIGRATION_LOCK_TIMEOUT}'")
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_WRITER_LOCK})")
            connection.commit()
        try:
            connection.info[_BEGIN_KEY] = "BEGIN IMMEDIATE"
            before = MigrationContext.configure(connection).get_current_revision()
            connection.rollback()
            connection.info[_BEGIN_KEY] = "BEGIN IMMEDIATE"
            command.upgrade(_alembic_config(connection), "head")
            connection.commit()
        finally:
            if postgres:
                connection.rollback()
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_WRITER_LOCK})")
                connection.exec_driver_sql("RESET lock_timeout")
                connection.commit()
    head = head_revision()
    if before != head:
        log.info("store.migrated", from_revision=before, to_revision=head)


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # autocommit at the driver level: the "begin" hook below issues BEGIN itself, which pysqlite
        # would otherwise do lazily and only before DML
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # popped, so a connection used outside _read/_write never inherits a stale BEGIN IMMEDIATE
        connection.exec_driver_sql(connection.info.pop(_BEGIN_KEY, "BEGIN"))


# --------------------------------------------------------------------------------------------------------
# argument checks


def _check_now(now: datetime) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValueError(f"the store needs an aware UTC datetime for 'now', got {now!r}")


def _text(field: str, value: object, max_len: int = _MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise InvalidArgument(f"{field} must be a non-empty string of at most {max_len} characters, got {value!r}")
    return value


def _json_text(field: str, value: object) -> str:
    try:
        return canonical_json_text(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{field} must be JSON-serialisable: {exc}") from None


def _digest_arg(field: str, value: object) -> str:
    try:
        return check_digest(value)
    except InvalidDigest:
        raise InvalidArgument(
            f"{field} must be 'sha256:' followed by 64 lowercase hex characters, got {value!r}"
        ) from None


def _check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(tags, Mapping):
        raise InvalidArgument(f"tags must be a mapping of key to value, got {tags!r}")
    checked: dict[str, str] = {}
    for key, value in tags.items():
        _text("tag key", key)
        if "=" in key:
            raise InvalidArgument(f"tag key must not contain '=', got {key!r}; filters are written key=value")
        if not isinstance(value, str) or len(value) > _MAX_TEXT:
            raise InvalidArgument(
                f"tag {key!r} must have a string value of at most {_MAX_TEXT} characters, got {value!r}"
            )
        checked[key] = value
    return checked


def _parse_tag_filter(tag: str) -> tuple[str, str]:
    key, eq, value = tag.partition("=") if isinstance(tag, str) else ("", "", "")
    if not eq or not key:
        raise InvalidArgument(f"tag filter must be 'key=value', got {tag!r}")
    return key, value


def _encode_page_token(after_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"v": 1, "after": after_id}).encode()).decode().rstrip("=")


def _decode_page_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidPageToken(token) from None
    if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("after"), str):
        raise InvalidPageToken(token)
    after: str = data["after"]
    return after


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


# --------------------------------------------------------------------------------------------------------
# row → record


def _enrollment_record(row: Row[Any]) -> EnrollmentTokenRecord:
    return EnrollmentTokenRecord(
        id=row.id,
        site=row.site,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        max_uses=row.max_uses,
        uses=row.uses,
        created_by=row.created_by,
    )


def _operator_record(row: Row[Any]) -> OperatorRecord:
    return OperatorRecord(
        id=row.id,
        name=row.name,
        role=OperatorRole(row.role),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def _device_record(row: Row[Any]) -> DeviceRecord:
    return DeviceRecord(
        id=row.id,
        name=row.name,
        site=row.site,
        tags=json.loads(row.tags_json),
        hardware_class=row.hardware_class,
        facts=json.loads(row.facts_json),
        enrolled_at=row.enrolled_at,
        last_seen=row.last_seen,
        reported=json.loads(row.reported_json),
        health=row.health,
        running_bundle=row.running_bundle,
        enrollment_token_id=row.enrollment_token_id,
    )


def _trusted_key_record(row: Row[Any]) -> TrustedKeyRecord:
    return TrustedKeyRecord(
        key_id=row.key_id, public_key_pem=row.public_key_pem, added_at=row.added_at, revoked_at=row.revoked_at
    )


def _bundle_record(row: Row[Any], artifacts: Iterable[ArtifactRef]) -> BundleRecord:
    return BundleRecord(
        digest=row.digest,
        name=row.name,
        version=row.version,
        manifest=bytes(row.manifest),
        signature=bytes(row.signature),
        key_id=row.key_id,
        size=row.size,
        created_at=row.created_at,
        artifacts=tuple(sorted(artifacts)),
    )


def _config_record(row: Row[Any]) -> ConfigDocRecord:
    return ConfigDocRecord(
        kind=row.kind,
        name=row.name,
        version=row.version,
        site=row.site,
        doc_json=row.doc_json,
        content_digest=row.content_digest,
        deleted=bool(row.deleted),
        revision=row.revision,
        applied_at=row.applied_at,
        applied_by=row.applied_by,
    )


def _desired_record(row: Row[Any]) -> DesiredState:
    return DesiredState(
        device_id=row.device_id,
        bundle_digest=row.bundle_digest,
        config_digest=row.config_digest,
        revision=row.revision,
        updated_at=row.updated_at,
        reason=row.reason,
        rollout_id=row.rollout_id,
        change_seq=row.change_seq,
        assignment_id=row.assignment_id,
    )


def _event_record(row: Row[Any]) -> EventRecord:
    return EventRecord(
        id=row.id,
        device_id=row.device_id,
        kind=row.kind,
        seq=row.seq,
        payload=json.loads(row.payload_json),
        at=row.at,
        received_at=row.received_at,
    )


# --------------------------------------------------------------------------------------------------------


class Store:
    """The controller's state. Create with ``Store.open(url)`` or ``Store.open_data_dir(path)``."""

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine whose database is already at the newest schema (``open`` does both)."""
        self._engine = engine

    # ---- lifecycle -------------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str | sa.URL) -> Store:
        """Connect to ``url`` (``sqlite:///path`` or ``postgresql+driver://...``) and migrate it to head."""
        engine = sa.create_engine(url)
        if engine.dialect.name == "sqlite":
            _install_sqlite_pragmas(engine)
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @classmethod
    def open_data_dir(cls, data_dir: Path | str) -> Store:
        """The embedded default: SQLite file ``<data_dir>/controller.db`` (the directory is created)."""
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        return cls.open(sa.URL.create("sqlite", database=str(path / DATABASE_FILE)))

    @property
    def engine(self) -> Engine:
        return self._engine

    def schema_revision(self) -> str | None:
        with self._read() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.info[_BEGIN_KEY] = "BEGIN"
            with conn.begin():
                yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.info[_BEGIN_KEY] = "BEGIN IMMEDIATE"
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    # PostgreSQL's BEGIN IMMEDIATE (see the module docstring); released at commit/rollback
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{_PG_LOCK_TIMEOUT}'")
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_WRITER_LOCK})")
                yield conn

    # ---- enrollment tokens -----------------------------------------------------------------------------

    def create_enrollment_token(
        self,
        site: str,
        ttl_s: float,
        now: datetime,
        max_uses: int | None = None,
        created_by: str | None = None,
    ) -> tuple[EnrollmentTokenRecord, str]:
        """A new token for ``site``, valid ``ttl_s`` seconds; returns the record and the one-time secret."""
        _check_now(now)
        _text("site", site)
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0:
            raise InvalidArgument(f"enrollment token ttl_s must be > 0 seconds, got {ttl_s!r}")
        if max_uses is not None and (isinstance(max_uses, bool) or not isinstance(max_uses, int) or max_uses < 1):
            raise InvalidArgument(f"enrollment token max_uses must be >= 1 or None (unlimited), got {max_uses!r}")
        if created_by is not None:
            _text("created_by", created_by)
        token_id = credentials.new_token_id()
        secret = credentials.mint_secret(credentials.ENROLLMENT_PREFIX, token_id)
        record = EnrollmentTokenRecord(
            id=token_id,
            site=site,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
            revoked_at=None,
            max_uses=max_uses,
            uses=0,
            created_by=created_by,
        )
        with self._write() as conn:
            conn.execute(
                t.enrollment_tokens.insert().values(
                    id=record.id,
                    secret_sha256=credentials.secret_hash(secret),
                    site=record.site,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                    revoked_at=None,
                    max_uses=record.max_uses,
                    uses=0,
                    created_by=record.created_by,
                )
            )
        return record, secret

    def consume_enrollment_token(self, secret: str, now: datetime) -> EnrollmentTokenRecord:
        """Count one use of the token.

        Raises ``InvalidToken``, ``TokenExpired``, ``TokenRevoked`` or ``TokenExhausted``.
        """
        _check_now(now)
        with self._write() as conn:
            return self._consume_enrollment(conn, secret, now)

    def _consume_enrollment(self, conn: Connection, secret: str, now: datetime) -> EnrollmentTokenRecord:
        token_id = credentials.parse_secret(credentials.ENROLLMENT_PREFIX, secret)
        if token_id is None:
            raise InvalidToken(
                "enrollment token is malformed; expected 'eft_<id>.<secret>' exactly as it was printed "
                "when the token was created"
            )
        row = conn.execute(sa.select(t.enrollment_tokens).where(t.enrollment_tokens.c.id == token_id)).one_or_none()
        if row is None or not credentials.secret_matches(secret, row.secret_sha256):
            raise InvalidToken(
                "enrollment token not recognised; check it was copied whole, or ask an operator for a new one"
            )
        record = _enrollment_record(row)
        if record.revoked_at is not None:
            raise TokenRevoked("enrollment token", record.id, record.revoked_at)
        if now >= record.expires_at:
            raise TokenExpired("enrollment token", record.id, record.expires_at)
        tokens = t.enrollment_tokens
        # conditional increment: two devices racing for the last use cannot both win
        result = conn.execute(
            tokens.update()
            .where(
                tokens.c.id == token_id,
                tokens.c.revoked_at.is_(None),
                sa.or_(tokens.c.max_uses.is_(None), tokens.c.uses < tokens.c.max_uses),
            )
            .values(uses=tokens.c.uses + 1)
        )
        if result.rowcount != 1:
            raise TokenExhausted(record.id, record.uses, record.max_uses or 0)
        updated = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).one()
        return _enrollment_record(updated)

    def get_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord:
        with self._read() as conn:
            row = conn.execute(sa.select(t.enrollment_tokens).where(t.enrollment_tokens.c.id == token_id)).one_or_none()
        if row is None:
            raise NotFound("enrollment token", token_id, "list tokens to see the valid ids")
        return _enrollment_record(row)

    def revoke_enrollment_token(self, token_id: str, now: datetime) -> EnrollmentTokenRecord:
        """Revoke the token (idempotent: a second call keeps the first revocation time)."""
        _check_now(now)
        tokens = t.enrollment_tokens
        with self._write() as conn:
            conn.execute(
                tokens.update().where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None)).values(revoked_at=now)
            )
            row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).one_or_none()
        if row is None:
            raise NotFound("enrollment token", token_id, "list tokens to see the valid ids")
        return _enrollment_record(row)

    def list_enrollment_tokens(self, site: str | None = None) -> list[EnrollmentTokenRecord]:
        tokens = t.enrollment_tokens
        query = sa.select(tokens).order_by(tokens.c.created_at, tokens.c.id)
        if site is not None:
            query = query.where(tokens.c.site == site)
        with self._read() as conn:
            return [_enrollment_record(row) for row in conn.execute(query)]

    # ---- devices ---------------------------------------------------------------------------------------

    def enroll_device(
        self,
        token_secret: str,
        name: str,
        hardware_class: str,
        facts: Mapping[str, Any],
        tags: Mapping[str, str],
        now: datetime,
    ) -> tuple[DeviceRecord, str]:
        """Consume one use of the enrollment token and create the device in the token's site, in one
        transaction. Returns the device and its credential secret (shown once; only its hash is kept)."""
        _check_now(now)
        _text("device name", name)
        _text("hardware_class", hardware_class)
        if not isinstance(facts, Mapping):
            raise InvalidArgument(f"hardware facts must be a mapping, got {facts!r}")
        facts_json = _json_text("hardware facts", facts)
        checked_tags = _check_tags(tags)
        device_id = credentials.new_device_id()
        credential = credentials.mint_secret(credentials.DEVICE_CREDENTIAL_PREFIX, device_id)
        with self._write() as conn:
            token = self._consume_enrollment(conn, token_secret, now)
            conn.execute(
                t.devices.insert().values(
                    id=device_id,
                    name=name,
                    site=token.site,
                    tags_json=canonical_json_text(checked_tags),
                    hardware_class=hardware_class,
                    facts_json=facts_json,
                    credential_sha256=credentials.secret_hash(credential),
                    enrollment_token_id=token.id,
                    enrolled_at=now,
                    last_seen=now,
                    reported_json="{}",
                    running_bundle=None,
                    health=UNKNOWN_HEALTH,
                )
            )
            if checked_tags:
                conn.execute(
                    t.device_tags.insert(),
                    [{"device_id": device_id, "key": k, "value": v} for k, v in checked_tags.items()],
                )
            conn.execute(
                t.desired_state.insert().values(
                    device_id=device_id,
                    bundle_digest=None,
                    config_digest=None,
                    revision=0,
                    change_seq=0,
                    updated_at=now,
                    reason="enrolled",
                    rollout_id=None,
                )
            )
            row = conn.execute(sa.select(t.devices).where(t.devices.c.id == device_id)).one()
        log.info("store.device_enrolled", device_id=device_id, site=token.site, token_id=token.id)
        return _device_record(row), credential

    def authenticate_device(self, secret: str) -> str | None:
        """The id of the device whose credential is ``secret``, or None."""
        device_id = credentials.parse_secret(credentials.DEVICE_CREDENTIAL_PREFIX, secret)
        if device_id is None:
            return None
        with self._read() as conn:
            stored = conn.execute(
                sa.select(t.devices.c.credential_sha256).where(t.devices.c.id == device_id)
            ).scalar_one_or_none()
        if stored is None or not credentials.secret_matches(secret, stored):
            return None
        return device_id

    def get_device(self, device_id: str) -> DeviceRecord:
        with self._read() as conn:
            row = conn.execute(sa.select(t.devices).where(t.devices.c.id == device_id)).one_or_none()
        if row is None:
            raise NotFound("device", device_id, "list devices to see the enrolled ids")
        return _device_record(row)

    def set_device_tags(self, device_id: str, tags: Mapping[str, str]) -> DeviceRecord:
        """Replace the device's tags (operators re-tag devices to target rollouts and config layers)."""
        checked = _check_tags(tags)
        devices = t.devices
        with self._write() as conn:
            result = conn.execute(
                devices.update().where(devices.c.id == device_id).values(tags_json=canonical_json_text(checked))
            )
            if result.rowcount != 1:
                raise NotFound("device", device_id, "list devices to see the enrolled ids")
            conn.execute(t.device_tags.delete().where(t.device_tags.c.device_id == device_id))
            if checked:
                conn.execute(
                    t.device_tags.insert(),
                    [{"device_id": device_id, "key": k, "value": v} for k, v in checked.items()],
                )
            row = conn.execute(sa.select(devices).where(devices.c.id == device_id)).one()
        return _device_record(row)

    def list_devices(
        self,
        *,
        site: str | None = None,
        tag: str | None = None,
        bundle: str | None = None,
        health: str | None = None,
        seen_since: datetime | None = None,
        page_size: int = 100,
        page_token: str | None = None,
        name: str | None = None,
    ) -> tuple[list[DeviceRecord], str | None]:
        """One page of devices matching every given filter, ordered by id; the second value is the token
        of the next page (None on the last page). ``tag`` is ``key=value``; ``bundle`` the running digest."""
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size!r}")
        devices = t.devices
        query = sa.select(devices).order_by(devices.c.id).limit(page_size + 1)
        if page_token:
            query = query.where(devices.c.id > _decode_page_token(page_token))
        if site is not None:
            query = query.where(devices.c.site == site)
        if name is not None:
            query = query.where(devices.c.name == name)
        if tag is not None:
            key, value = _parse_tag_filter(tag)
            tags = t.device_tags
            query = query.where(
                sa.exists().where(tags.c.device_id == devices.c.id, tags.c.key == key, tags.c.value == value)
            )
        if bundle is not None:
            query = query.where(devices.c.running_bundle == _digest_arg("bundle filter", bundle))
        if health is not None:
            query = query.where(devices.c.health == health)
        if seen_since is not None:
            _check_now(seen_since)
            query = query.where(devices.c.last_seen >= seen_since)
        with self._read() as conn:
            rows = conn.execute(query).all()
        page = [_device_record(row) for row in rows[:page_size]]
        next_token = _encode_page_token(page[-1].id) if len(rows) > page_size else None
        return page, next_token

    def record_report(self, device_id: str, reported: Mapping[str, Any], now: datetime) -> DesiredState:
        """Store the device's reported state, mark it seen at ``now``, and return its desired state.

        The store indexes ``running_bundle`` (digest or None), ``health`` (string) and every
        ``slots.<name>.bundle`` digest; the rest of the document is kept as given.
        """
        _check_now(now)
        if not isinstance(reported, Mapping):
            raise InvalidArgument(f"reported state must be a mapping, got {reported!r}")
        reported_json = _json_text("reported state", reported)
        running = reported.get(REPORTED_RUNNING_BUNDLE)
        if running is not None:
            running = _digest_arg(f"reported {REPORTED_RUNNING_BUNDLE!r}", running)
        health = reported.get(REPORTED_HEALTH, UNKNOWN_HEALTH)
        if health is None:
            health = UNKNOWN_HEALTH
        _text(f"reported {REPORTED_HEALTH!r}", health, 64)
        refs = {"running": running} if running is not None else {}
        slots = reported.get(REPORTED_SLOTS) or {}
        if not isinstance(slots, Mapping):
            raise InvalidArgument(f"reported {REPORTED_SLOTS!r} must map slot names to slot states, got {slots!r}")
        for slot_name, slot in slots.items():
            slot_bundle = slot.get(REPORTED_SLOT_BUNDLE) if isinstance(slot, Mapping) else None
            if slot_bundle is not None:
                refs[f"slot:{slot_name}"] = _digest_arg(f"reported slot {slot_name!r} bundle", slot_bundle)
        devices = t.devices
        with self._write() as conn:
            last_seen = conn.execute(
                sa.select(devices.c.last_seen).where(devices.c.id == device_id).with_for_update()
            ).one_or_none()
            if last_seen is None:
                raise NotFound("device", device_id, "the device must enroll again")
            seen = now if last_seen[0] is None else max(now, last_seen[0])
            conn.execute(
                devices.update()
                .where(devices.c.id == device_id)
                .values(reported_json=reported_json, running_bundle=running, health=health, last_seen=seen)
            )
            conn.execute(t.device_bundle_refs.delete().where(t.device_bundle_refs.c.device_id == device_id))
            if refs:
                conn.execute(
                    t.device_bundle_refs.insert(),
                    [{"device_id": device_id, "source": s, "bundle_digest": d} for s, d in refs.items()],
                )
            desired = conn.execute(sa.select(t.desired_state).where(t.desired_state.c.device_id == device_id)).one()
        return _desired_record(desired)

    def site_summary(self) -> dict[str, SiteSummary]:
        """Per site: device count, counts by running bundle digest and by health."""
        devices = t.devices
        count = sa.func.count()
        with self._read() as conn:
            by_bundle = conn.execute(
                sa.select(devices.c.site, devices.c.running_bundle, count).group_by(
                    devices.c.site, devices.c.running_bundle
                )
            ).all()
            by_health = conn.execute(
                sa.select(devices.c.site, devices.c.health, count).group_by(devices.c.site, devices.c.health)
            ).all()
        bundles: dict[str, dict[str | None, int]] = {}
        healths: dict[str, dict[str, int]] = {}
        for site, digest, n in by_bundle:
            bundles.setdefault(site, {})[digest] = n
        for site, health, n in by_health:
            healths.setdefault(site, {})[health] = n
        return {
            site: SiteSummary(
                site=site,
                devices=sum(bundles[site].values()),
                by_bundle=bundles[site],
                by_health=healths.get(site, {}),
            )
            for site in sorted(bundles)
        }

    # ---- operator tokens -------------------------------------------------------------------------------

    def create_operator_token(
        self, name: str, role: OperatorRole | str, ttl_s: float | None, now: datetime
    ) -> tuple[OperatorRecord, str]:
        """A new operator token (``ttl_s`` None: no expiry); returns the record and the one-time secret."""
        _check_now(now)
        _text("operator token name", name)
        try:
            checked_role = OperatorRole(role)
        except ValueError:
            roles = ", ".join(r.value for r in OperatorRole)
            raise InvalidArgument(f"operator role must be one of {roles}, got {role!r}") from None
        if ttl_s is not None and (isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0):
            raise InvalidArgument(f"operator token ttl_s must be > 0 seconds or None (no expiry), got {ttl_s!r}")
        with self._write() as conn:
            return self._insert_operator(conn, name, checked_role, ttl_s, now)

    def _insert_operator(
        self, conn: Connection, name: str, role: OperatorRole, ttl_s: float | None, now: datetime
    ) -> tuple[OperatorRecord, str]:
        token_id = credentials.new_token_id()
        secret = credentials.mint_secret(credentials.OPERATOR_PREFIX, token_id)
        record = OperatorRecord(
            id=token_id,
            name=name,
            role=role,
            created_at=now,
            expires_at=None if ttl_s is None else now + timedelta(seconds=ttl_s),
            revoked_at=None,
        )
        conn.execute(
            t.operator_tokens.insert().values(
                id=record.id,
                name=record.name,
                role=record.role.value,
                secret_sha256=credentials.secret_hash(secret),
                created_at=record.created_at,
                expires_at=record.expires_at,
                revoked_at=None,
            )
        )
        return record, secret

    def authenticate_operator(self, secret: str, now: datetime) -> OperatorRecord:
        """The operator token behind ``secret``; raises ``InvalidToken``/``TokenExpired``/``TokenRevoked``."""
        _check_now(now)
        token_id = credentials.parse_secret(credentials.OPERATOR_PREFIX, secret)
        if token_id is None:
            raise InvalidToken("operator token is malformed; expected 'eot_<id>.<secret>' as it was printed")
        with self._read() as conn:
            row = conn.execute(sa.select(t.operator_tokens).where(t.operator_tokens.c.id == token_id)).one_or_none()
        if row is None or not credentials.secret_matches(secret, row.secret_sha256):
            raise InvalidToken("operator token not recognised; check it was copied whole, or ask an admin")
        record = _operator_record(row)
        if record.revoked_at is not None:
            raise TokenRevoked("operator token", record.id, record.revoked_at)
        if record.expires_at is not None and now >= record.expires_at:
            raise TokenExpired("operator token", record.id, record.expires_at)
        return record

    def revoke_operator_token(self, token_id: str, now: datetime) -> OperatorRecord:
        """Revoke the token (idempotent: a second call keeps the first revocation time)."""
        _check_now(now)
        tokens = t.operator_tokens
        with self._write() as conn:
            conn.execute(
                tokens.update().where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None)).values(revoked_at=now)
            )
            row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).one_or_none()
        if row is None:
            raise NotFound("operator token", token_id, "list operator tokens to see the valid ids")
        return _operator_record(row)

    def list_operator_tokens(self) -> list[OperatorRecord]:
        tokens = t.operator_tokens
        with self._read() as conn:
            rows = conn.execute(sa.select(tokens).order_by(tokens.c.created_at, tokens.c.id))
            return [_operator_record(row) for row in rows]

    def ensure_bootstrap_admin(self, now: datetime) -> str | None:
        """Create a non-expiring admin token when no usable admin token exists; return its secret, else None.

        "Usable" (not revoked, not expired) rather than "any": an installation whose admins were all
        revoked recovers on the next start, and whoever can restart the controller owns its database anyway.
        """
        _check_now(now)
        tokens = t.operator_tokens
        with self._write() as conn:
            usable = conn.execute(
                sa.select(sa.func.count())
                .select_from(tokens)
                .where(
                    tokens.c.role == OperatorRole.ADMIN.value,
                    tokens.c.revoked_at.is_(None),
                    sa.or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now),
                )
            ).scalar_one()
            if usable:
                return None
            record, secret = self._insert_operator(conn, BOOTSTRAP_ADMIN_NAME, OperatorRole.ADMIN, None, now)
        log.warning("store.bootstrap_admin_created", token_id=record.id)
        return secret

    # ---- trusted keys ----------------------------------------------------------------------------------

    def add_trusted_key(self, key_id: str, public_key_pem: str, now: datetime) -> TrustedKeyRecord:
        """Trust a publisher key (idempotent for the same PEM). A revoked key id stays revoked."""
        _check_now(now)
        _text("key_id", key_id)
        if not isinstance(public_key_pem, str) or "-----BEGIN PUBLIC KEY-----" not in public_key_pem:
            raise InvalidArgument(
                f"trusted key {key_id!r} must be a PEM public key ('-----BEGIN PUBLIC KEY-----'), "
                f"got {str(public_key_pem)[:40]!r}"
            )
        keys = t.trusted_keys
        with self._write() as conn:
            row = conn.execute(sa.select(keys).where(keys.c.key_id == key_id)).one_or_none()
            if row is None:
                conn.execute(keys.insert().values(key_id=key_id, public_key_pem=public_key_pem, added_at=now))
                return TrustedKeyRecord(key_id, public_key_pem, now, None)
        existing = _trusted_key_record(row)
        if existing.revoked_at is not None:
            raise Conflict(
                f"trusted key {key_id!r} was revoked at {existing.revoked_at.isoformat()}; revoked keys are "
                "never trusted again — add the new key under a new key id"
            )
        if existing.public_key_pem.strip() != public_key_pem.strip():
            raise Conflict(
                f"trusted key {key_id!r} already exists with a different public key; "
                "use a new key id for a new key (key ids name exactly one key)"
            )
        return existing

    def get_trusted_key(self, key_id: str) -> TrustedKeyRecord:
        with self._read() as conn:
            row = conn.execute(sa.select(t.trusted_keys).where(t.trusted_keys.c.key_id == key_id)).one_or_none()
        if row is None:
            raise NotFound("trusted key", key_id, "add it with the publisher's public key first")
        return _trusted_key_record(row)

    def list_trusted_keys(self, include_revoked: bool = True) -> list[TrustedKeyRecord]:
        keys = t.trusted_keys
        query = sa.select(keys).order_by(keys.c.key_id)
        if not include_revoked:
            query = query.where(keys.c.revoked_at.is_(None))
        with self._read() as conn:
            return [_trusted_key_record(row) for row in conn.execute(query)]

    def revoke_trusted_key(self, key_id: str, now: datetime) -> TrustedKeyRecord:
        _check_now(now)
        keys = t.trusted_keys
        with self._write() as conn:
            conn.execute(
                keys.update().where(keys.c.key_id == key_id, keys.c.revoked_at.is_(None)).values(revoked_at=now)
            )
            row = conn.execute(sa.select(keys).where(keys.c.key_id == key_id)).one_or_none()
        if row is None:
            raise NotFound("trusted key", key_id, "list trusted keys to see the valid ids")
        return _trusted_key_record(row)

    # ---- bundles and artifacts -------------------------------------------------------------------------

    def put_bundle(
        self,
        manifest: bytes,
        signature: bytes,
        *,
        name: str,
        version: str,
        key_id: str,
        artifacts: Sequence[ArtifactRef],
        now: datetime,
    ) -> tuple[BundleRecord, bool]:
        """Record a bundle whose artifacts are already in the blob store. The digest is ``sha256:`` of the
        exact manifest bytes. Returns ``(record, created)``: putting the same bundle again is a no-op;
        another bundle under the same ``name@version`` is a ``Conflict``."""
        _check_now(now)
        if not isinstance(manifest, bytes) or not manifest:
            raise InvalidArgument("bundle manifest must be non-empty bytes (the exact bundle.json)")
        if not isinstance(signature, bytes) or not signature:
            raise InvalidArgument("bundle signature must be non-empty bytes")
        _text("bundle name", name)
        _text("bundle version", version)
        _text("bundle key_id", key_id)
        refs = [ArtifactRef(*ref) for ref in artifacts]
        roles: set[str] = set()
        for ref in refs:
            _text("artifact role", ref.role)
            _digest_arg(f"artifact {ref.role!r} digest", ref.digest)
            if isinstance(ref.size, bool) or not isinstance(ref.size, int) or ref.size < 0:
                raise InvalidArgument(f"artifact {ref.role!r} size must be >= 0 bytes, got {ref.size!r}")
            if ref.role in roles:
                raise InvalidArgument(f"artifact role {ref.role!r} appears twice in bundle {name}@{version}")
            roles.add(ref.role)
        digest = digest_of(manifest)
        size = len(manifest) + sum(ref.size for ref in refs)
        with self._write() as conn:
            existing = self._load_bundle(conn, digest)
            if existing is not None:
                return existing, False
            clash = conn.execute(
                sa.select(t.bundles.c.digest).where(t.bundles.c.name == name, t.bundles.c.version == version)
            ).scalar_one_or_none()
            if clash is not None:
                raise Conflict(
                    f"bundle {name}@{version} already exists as {clash} (this one is {digest}); bundles are "
                    "immutable — publish the change under a new version"
                )
            for ref in refs:
                known = conn.execute(
                    sa.select(t.artifacts.c.size).where(t.artifacts.c.digest == ref.digest)
                ).scalar_one_or_none()
                if known is None:
                    conn.execute(t.artifacts.insert().values(digest=ref.digest, size=ref.size, created_at=now))
                elif known != ref.size:
                    raise Conflict(
                        f"artifact {ref.digest} is stored with {known} bytes but bundle {name}@{version} "
                        f"declares {ref.size}; fix the size in bundle.json"
                    )
            conn.execute(
                t.bundles.insert().values(
                    digest=digest,
                    name=name,
                    version=version,
                    manifest=manifest,
                    signature=signature,
                    key_id=key_id,
                    size=size,
                    created_at=now,
                )
            )
            if refs:
                conn.execute(
                    t.bundle_artifacts.insert(),
                    [{"bundle_digest": digest, "role": r.role, "artifact_digest": r.digest} for r in refs],
                )
        record = BundleRecord(digest, name, version, manifest, signature, key_id, size, now, tuple(sorted(refs)))
        return record, True

    def _load_bundle(self, conn: Connection, digest: str) -> BundleRecord | None:
        row = conn.execute(sa.select(t.bundles).where(t.bundles.c.digest == digest)).one_or_none()
        if row is None:
            return None
        return _bundle_record(row, self._artifact_refs(conn, [digest]).get(digest, []))

    def _artifact_refs(self, conn: Connection, digests: Sequence[str]) -> dict[str, list[ArtifactRef]]:
        ba, art = t.bundle_artifacts, t.artifacts
        refs: dict[str, list[ArtifactRef]] = {}
        for chunk in _chunks(digests):
            rows = conn.execute(
                sa.select(ba.c.bundle_digest, ba.c.role, ba.c.artifact_digest, art.c.size)
                .join(art, art.c.digest == ba.c.artifact_digest)
                .where(ba.c.bundle_digest.in_(chunk))
            )
            for bundle_digest, role, artifact_digest, size in rows:
                refs.setdefault(bundle_digest, []).append(ArtifactRef(role, artifact_digest, size))
        return refs

    def get_bundle(self, ref: str) -> BundleRecord:
        """A bundle by ``sha256:<hex>`` digest or ``name@version``."""
        with self._read() as conn:
            if isinstance(ref, str) and ref.startswith("sha256:"):
                digest = _digest_arg("bundle digest", ref)
            else:
                name, at, version = ref.rpartition("@") if isinstance(ref, str) else ("", "", "")
                if not at or not name or not version:
                    raise InvalidArgument(f"bundle reference must be 'sha256:<64 hex>' or 'name@version', got {ref!r}")
                found = conn.execute(
                    sa.select(t.bundles.c.digest).where(t.bundles.c.name == name, t.bundles.c.version == version)
                ).scalar_one_or_none()
                if found is None:
                    raise NotFound("bundle", ref, "list bundles to see what is published")
                digest = found
            record = self._load_bundle(conn, digest)
        if record is None:
            raise NotFound("bundle", ref, "list bundles to see what is published")
        return record

    def list_bundles(self, name: str | None = None) -> list[BundleRecord]:
        bundles = t.bundles
        query = sa.select(bundles).order_by(bundles.c.name, bundles.c.created_at, bundles.c.version)
        if name is not None:
            query = query.where(bundles.c.name == name)
        with self._read() as conn:
            rows = conn.execute(query).all()
            refs = self._artifact_refs(conn, [row.digest for row in rows])
        return [_bundle_record(row, refs.get(row.digest, [])) for row in rows]

    def get_artifact(self, digest: str) -> ArtifactRecord:
        """An artifact some bundle declares (devices may fetch only these)."""
        _digest_arg("artifact digest", digest)
        with self._read() as conn:
            row = conn.execute(sa.select(t.artifacts).where(t.artifacts.c.digest == digest)).one_or_none()
        if row is None:
            raise NotFound("artifact", digest, "no published bundle declares it")
        return ArtifactRecord(digest=row.digest, size=row.size, created_at=row.created_at)

    def bundle_referrers(self, digest: str) -> list[str]:
        """Who holds bundle ``digest``: ``device <id> (desired|running|slot:<name>)`` entries."""
        with self._read() as conn:
            return self._bundle_referrers(conn, digest)

    def _bundle_referrers(self, conn: Connection, digest: str) -> list[str]:
        desired = conn.execute(
            sa.select(t.desired_state.c.device_id)
            .where(t.desired_state.c.bundle_digest == digest)
            .order_by(t.desired_state.c.device_id)
        ).scalars()
        referrers = [f"device {device_id} (desired)" for device_id in desired]
        held = conn.execute(
            sa.select(t.device_bundle_refs.c.device_id, t.device_bundle_refs.c.source)
            .where(t.device_bundle_refs.c.bundle_digest == digest)
            .order_by(t.device_bundle_refs.c.device_id, t.device_bundle_refs.c.source)
        )
        referrers.extend(f"device {device_id} ({source})" for device_id, source in held)
        # unfinished rollouts: their target, and the bundles their moved devices may be sent back to
        by_rollout = conn.execute(
            sa.select(t.rollout_bundle_refs.c.rollout_id, t.rollout_bundle_refs.c.role)
            .where(t.rollout_bundle_refs.c.bundle_digest == digest)
            .order_by(t.rollout_bundle_refs.c.rollout_id)
        )
        referrers.extend(f"rollout {rollout_id} ({role})" for rollout_id, role in by_rollout)
        return referrers

    def delete_bundle(self, digest: str) -> list[str]:
        """Delete a bundle nobody references; returns the artifact digests no other bundle uses (their
        blobs can now be deleted). Raises ``StillReferenced`` naming the referrers otherwise."""
        _digest_arg("bundle digest", digest)
        ba = t.bundle_artifacts
        with self._write() as conn:
            if conn.execute(sa.select(t.bundles.c.digest).where(t.bundles.c.digest == digest)).first() is None:
                raise NotFound("bundle", digest, "list bundles to see what is published")
            referrers = self._bundle_referrers(conn, digest)
            if referrers:
                raise StillReferenced(digest, referrers)
            artifact_digests = sorted(
                set(conn.execute(sa.select(ba.c.artifact_digest).where(ba.c.bundle_digest == digest)).scalars())
            )
            conn.execute(ba.delete().where(ba.c.bundle_digest == digest))
            conn.execute(t.bundles.delete().where(t.bundles.c.digest == digest))
            orphans = []
            for artifact_digest in artifact_digests:
                if conn.execute(sa.select(ba.c.role).where(ba.c.artifact_digest == artifact_digest)).first() is None:
                    conn.execute(t.artifacts.delete().where(t.artifacts.c.digest == artifact_digest))
                    orphans.append(artifact_digest)
        log.info("store.bundle_deleted", digest=digest, orphaned_artifacts=len(orphans))
        return orphans

    # ---- configs ---------------------------------------------------------------------------------------

    def apply_config_documents(
        self,
        docs: Sequence[ConfigDocInput | tuple[str, str, str | None, str, str]],
        applied_by: str,
        now: datetime,
        removed: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Apply config documents (and remove ``(kind, name)`` pairs) in one transaction.

        Documents whose content digest and site are unchanged are no-ops; if nothing changed, no revision
        is created and the current revision is returned. Otherwise every changed document gets a new
        version under one new config revision, which is returned.
        """
        _check_now(now)
        _text("applied_by", applied_by)
        inputs = [ConfigDocInput(*doc) for doc in docs]
        seen: set[tuple[str, str]] = set()
        for doc in inputs:
            _text("config kind", doc.kind, 64)
            _text("config name", doc.name)
            if doc.site is not None:
                _text(f"config {doc.kind}/{doc.name} site", doc.site)
            if not isinstance(doc.doc_json, str):
                raise InvalidArgument(f"config {doc.kind}/{doc.name}: doc_json must be a JSON string")
            try:
                json.loads(doc.doc_json)
            except ValueError as exc:
                raise InvalidArgument(f"config {doc.kind}/{doc.name}: doc_json is not valid JSON: {exc}") from None
            _digest_arg(f"config {doc.kind}/{doc.name} content_digest", doc.content_digest)
            if (doc.kind, doc.name) in seen:
                raise InvalidArgument(f"config {doc.kind}/{doc.name} appears twice in one apply; keep one")
            seen.add((doc.kind, doc.name))
        removals = [(kind, name) for kind, name in removed]
        for key in removals:
            if key in seen:
                raise InvalidArgument(f"config {key[0]}/{key[1]} is both applied and removed; choose one")
        docs_t = t.config_documents
        with self._write() as conn:
            current = {
                (row.kind, row.name): row
                for row in conn.execute(sa.select(docs_t).where(docs_t.c.is_current.is_(True)))
            }
            # each change: the row it supersedes (None: first version) and the new row's values
            changes: list[tuple[Row[Any] | None, dict[str, Any]]] = []
            for doc in inputs:
                cur = current.get((doc.kind, doc.name))
                if (
                    cur is not None
                    and not cur.deleted
                    and cur.content_digest == doc.content_digest
                    and cur.site == doc.site
                ):
                    continue
                changes.append((cur, {**doc._asdict(), "deleted": False}))
            for kind, name in removals:
                cur = current.get((kind, name))
                if cur is None or cur.deleted:
                    continue
                tombstone = {"kind": kind, "name": name, "site": cur.site, "doc_json": None}
                changes.append((cur, {**tombstone, "content_digest": None, "deleted": True}))
            if not changes:
                return self._config_revision(conn)
            inserted = conn.execute(
                t.config_revisions.insert().values(applied_by=applied_by, applied_at=now)
            ).inserted_primary_key
            revision = int(inserted[0]) if inserted is not None else self._config_revision(conn)
            superseded = [cur.id for cur, _ in changes if cur is not None]
            if superseded:
                conn.execute(docs_t.update().where(docs_t.c.id.in_(superseded)).values(is_current=False))
            conn.execute(
                docs_t.insert(),
                [
                    {
                        **values,
                        "version": 1 if cur is None else cur.version + 1,
                        "is_current": True,
                        "revision": revision,
                        "applied_by": applied_by,
                        "applied_at": now,
                    }
                    for cur, values in changes
                ],
            )
        log.info("store.config_applied", revision=revision, changed=len(changes), applied_by=applied_by)
        return revision

    def _config_revision(self, conn: Connection) -> int:
        value = conn.execute(sa.select(sa.func.max(t.config_revisions.c.revision))).scalar_one_or_none()
        return int(value or 0)

    def config_revision(self) -> int:
        """The newest config revision (0 before the first apply)."""
        with self._read() as conn:
            return self._config_revision(conn)

    def current_config_documents(self) -> list[ConfigDocRecord]:
        docs = t.config_documents
        with self._read() as conn:
            rows = conn.execute(
                sa.select(docs)
                .where(docs.c.is_current.is_(True), docs.c.deleted.is_(False))
                .order_by(docs.c.kind, docs.c.name)
            )
            return [_config_record(row) for row in rows]

    def config_history(self, kind: str, name: str) -> list[ConfigDocRecord]:
        """Every version of one document, oldest first (removals included, ``deleted`` set)."""
        docs = t.config_documents
        with self._read() as conn:
            rows = conn.execute(
                sa.select(docs).where(docs.c.kind == kind, docs.c.name == name).order_by(docs.c.version)
            ).all()
        if not rows:
            raise NotFound("config document", f"{kind}/{name}", "list current config documents to see names")
        return [_config_record(row) for row in rows]

    # ---- desired state ---------------------------------------------------------------------------------

    def set_desired(
        self,
        device_ids: Sequence[str],
        *,
        bundle_digest: str | _Unset | None = UNSET,
        config_digest: str | _Unset | None = UNSET,
        reason: str,
        now: datetime,
        rollout_id: str | None = None,
        assignment_ids: Mapping[str, str] | None = None,
        reassign: bool = False,
    ) -> dict[str, int]:
        """Set what the devices should run; fields left ``UNSET`` stay as they are, ``None`` clears.

        Only devices whose bundle or config actually changes get a new revision (and the store-wide
        change counter moves once for the whole call); returns every device's resulting revision.
        Unknown devices or bundles fail the whole call.

        Every change carries a new assignment id (``DesiredState.assignment_id``): the caller's, from
        ``assignment_ids`` (device id → id; a device named there always changes, even to the same target:
        a new assignment is a new decision the device acts on), else one minted here. ``reassign`` gives
        every device a fresh assignment even where nothing else changes (an operator retrying a bundle).
        """
        with self._write() as conn:
            return self.set_desired_in(
                conn,
                device_ids,
                bundle_digest=bundle_digest,
                config_digest=config_digest,
                reason=reason,
                now=now,
                rollout_id=rollout_id,
                assignment_ids=assignment_ids,
                reassign=reassign,
            )

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction for callers that combine their own tables with ``set_desired_in`` (the
        rollout store persists a plan and the desired states it changes atomically)."""
        with self._write() as conn:
            yield conn

    def set_desired_in(
        self,
        conn: Connection,
        device_ids: Sequence[str],
        *,
        bundle_digest: str | _Unset | None = UNSET,
        config_digest: str | _Unset | None = UNSET,
        reason: str,
        now: datetime,
        rollout_id: str | None = None,
        assignment_ids: Mapping[str, str] | None = None,
        reassign: bool = False,
    ) -> dict[str, int]:
        """``set_desired`` inside the caller's write transaction ``conn`` (see ``transaction``)."""
        _check_now(now)
        _text("reason", reason, 4096)
        given = dict(assignment_ids or {})
        for device_id, assignment_id in given.items():
            _text(f"assignment_id of {device_id}", assignment_id, 128)
        if bundle_digest is UNSET and config_digest is UNSET and not given and not reassign:
            raise InvalidArgument("set_desired needs bundle_digest and/or config_digest; nothing to change")
        if isinstance(bundle_digest, str):
            _digest_arg("desired bundle_digest", bundle_digest)
        if isinstance(config_digest, str):
            _digest_arg("desired config_digest", config_digest)
        if rollout_id is not None:
            _text("rollout_id", rollout_id, 64)
        ids = sorted(set(device_ids))
        desired = t.desired_state
        if (
            isinstance(bundle_digest, str)
            and conn.execute(sa.select(t.bundles.c.digest).where(t.bundles.c.digest == bundle_digest)).first() is None
        ):
            raise NotFound("bundle", bundle_digest, "publish the bundle before assigning it")
        rows: dict[str, Row[Any]] = {}
        for chunk in _chunks(ids):
            for row in conn.execute(sa.select(desired).where(desired.c.device_id.in_(chunk)).with_for_update()):
                rows[row.device_id] = row
        missing = [device_id for device_id in ids if device_id not in rows]
        if missing:
            raise NotFound("device", missing[0], f"{len(missing)} of the given devices are not enrolled")
        revisions = {device_id: int(row.revision) for device_id, row in rows.items()}
        changed = [
            row
            for row in rows.values()
            if reassign
            or row.device_id in given
            or (bundle_digest is not UNSET and row.bundle_digest != bundle_digest)
            or (config_digest is not UNSET and row.config_digest != config_digest)
        ]
        if changed:
            seq = self._bump_counter(conn, t.DESIRED_STATE_COUNTER)
            values: dict[str, Any] = {}
            if bundle_digest is not UNSET:
                values["bundle_digest"] = bundle_digest
            if config_digest is not UNSET:
                values["config_digest"] = config_digest
            statement = (
                desired.update()
                .where(desired.c.device_id == sa.bindparam("b_device_id"))
                .values(
                    revision=sa.bindparam("b_revision"),
                    change_seq=seq,
                    updated_at=now,
                    reason=reason,
                    rollout_id=rollout_id,
                    assignment_id=sa.bindparam("b_assignment_id"),
                    **values,
                )
            )
            conn.execute(
                statement,
                [
                    {
                        "b_device_id": row.device_id,
                        "b_revision": row.revision + 1,
                        "b_assignment_id": given.get(row.device_id) or new_assignment_id(),
                    }
                    for row in changed
                ],
            )
            for row in changed:
                revisions[row.device_id] = int(row.revision) + 1
        return revisions

    def _bump_counter(self, conn: Connection, name: str) -> int:
        counters = t.change_counters
        # UPDATE first: on PostgreSQL the row lock serialises concurrent bumps across replicas
        conn.execute(counters.update().where(counters.c.name == name).values(value=counters.c.value + 1))
        value: int = conn.execute(sa.select(counters.c.value).where(counters.c.name == name)).scalar_one()
        return value

    def get_desired(self, device_id: str) -> DesiredState:
        with self._read() as conn:
            row = conn.execute(sa.select(t.desired_state).where(t.desired_state.c.device_id == device_id)).one_or_none()
        if row is None:
            raise NotFound("device", device_id, "list devices to see the enrolled ids")
        return _desired_record(row)

    def get_desired_many(self, device_ids: Sequence[str]) -> dict[str, DesiredState]:
        """Desired state of several devices in one read (unknown ids are absent from the result)."""
        found: dict[str, DesiredState] = {}
        with self._read() as conn:
            for chunk in _chunks(list(dict.fromkeys(device_ids))):
                rows = conn.execute(sa.select(t.desired_state).where(t.desired_state.c.device_id.in_(chunk))).all()
                found.update((row.device_id, _desired_record(row)) for row in rows)
        return found

    def desired_change_counter(self) -> int:
        """The store-wide desired-state change counter: it moves on every ``set_desired`` that changed
        something, so a long-poll hub (on any replica) can poll this one integer."""
        counters = t.change_counters
        with self._read() as conn:
            value: int = conn.execute(
                sa.select(counters.c.value).where(counters.c.name == t.DESIRED_STATE_COUNTER)
            ).scalar_one()
        return value

    def desired_changes_since(self, change_seq: int) -> list[DesiredState]:
        """Desired states changed after counter value ``change_seq``, oldest change first."""
        desired = t.desired_state
        with self._read() as conn:
            rows = conn.execute(
                sa.select(desired)
                .where(desired.c.change_seq > change_seq)
                .order_by(desired.c.change_seq, desired.c.device_id)
            )
            return [_desired_record(row) for row in rows]

    # ---- device events ---------------------------------------------------------------------------------

    def record_events(self, device_id: str, events: Sequence[EventInput], now: datetime) -> int:
        """Store a device's events; those whose ``seq`` is already stored for the device are skipped
        (re-sent after a lost acknowledgement). Returns how many were stored."""
        _check_now(now)
        rows: list[dict[str, Any]] = []
        seqs: set[int] = set()
        for raw in events:
            ev = EventInput(*raw)
            _text("event kind", ev.kind, 64)
            _check_now(ev.at)
            if not isinstance(ev.payload, Mapping):
                raise InvalidArgument(f"event {ev.kind!r} payload must be a mapping, got {ev.payload!r}")
            if ev.seq is not None:
                if isinstance(ev.seq, bool) or not isinstance(ev.seq, int) or ev.seq < 0:
                    raise InvalidArgument(f"event seq must be an integer >= 0, got {ev.seq!r}")
                if ev.seq in seqs:
                    continue
                seqs.add(ev.seq)
            rows.append(
                {
                    "device_id": device_id,
                    "kind": ev.kind,
                    "seq": ev.seq,
                    "payload_json": _json_text(f"event {ev.kind!r} payload", ev.payload),
                    "at": ev.at,
                    "received_at": now,
                }
            )
        events_t = t.device_events
        with self._write() as conn:
            if conn.execute(sa.select(t.devices.c.id).where(t.devices.c.id == device_id)).first() is None:
                raise NotFound("device", device_id, "the device must enroll again")
            known: set[int] = set()
            ordered = sorted(seqs)
            for start in range(0, len(ordered), _IN_CHUNK):
                known.update(
                    conn.execute(
                        sa.select(events_t.c.seq).where(
                            events_t.c.device_id == device_id,
                            events_t.c.seq.in_(ordered[start : start + _IN_CHUNK]),
                        )
                    ).scalars()
                )
            fresh = [row for row in rows if row["seq"] is None or row["seq"] not in known]
            if fresh:
                conn.execute(events_t.insert(), fresh)
        return len(fresh)

    def record_event(
        self,
        device_id: str,
        kind: str,
        payload: Mapping[str, Any],
        at: datetime,
        now: datetime,
        seq: int | None = None,
    ) -> bool:
        """Store one event; False when its ``seq`` was already stored."""
        return self.record_events(device_id, [EventInput(kind, payload, at, seq)], now) == 1

    def list_events(
        self,
        *,
        device_id: str | None = None,
        kind: str | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[EventRecord]:
        """Events oldest first; page with ``after_id`` = the last id seen."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit!r}")
        events_t = t.device_events
        query = sa.select(events_t).order_by(events_t.c.id).limit(limit)
        if device_id is not None:
            query = query.where(events_t.c.device_id == device_id)
        if kind is not None:
            query = query.where(events_t.c.kind == kind)
        if after_id is not None:
            query = query.where(events_t.c.id > after_id)
        with self._read() as conn:
            return [_event_record(row) for row in conn.execute(query)]
