"""Who may talk to the controller: enrollment tokens (a device's one-time way in), operator tokens (with
the bootstrap admin) and the publishers' trusted keys.

Only ``sha256(secret)`` of a token is stored (see ``credentials``); the secret is returned once, next to its
record, by the call that mints it. Revoking is idempotent everywhere: a second revoke keeps the first time.
``consume_enrollment_in`` runs inside the caller's write transaction, so a device's enrollment consumes the
token and creates the device atomically (``DeviceStore.enroll``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Row

from edgefleet.contract.shown import shown
from edgefleet_controller.store import credential_generation, credentials
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.arguments import check_now, check_text, is_int, is_positive_seconds
from edgefleet_controller.store.db import AggregateStore, Database
from edgefleet_controller.store.errors import (
    Conflict,
    InvalidArgument,
    InvalidToken,
    LastAdminToken,
    NotFound,
    TokenExhausted,
    TokenExpired,
    TokenRevoked,
)
from edgefleet_controller.store.records import (
    EnrollmentTokenRecord,
    OperatorRecord,
    OperatorRole,
    TrustedKeyRecord,
    record_from_row,
    record_values,
)

log = structlog.get_logger(__name__)

BOOTSTRAP_ADMIN_NAME: Final = "bootstrap-admin"
#: An operator token's last use is recorded at most this often (the first call after it is written).
LAST_USE_EVERY: Final = timedelta(minutes=1)


def _revoke(
    db: Database,
    table: sa.Table,
    key: str,
    value: str,
    now: datetime,
    missing: NotFound,
    *,
    authenticates: bool = False,
    precondition: Callable[[Connection], None] | None = None,
) -> Row[Any]:
    """Set ``revoked_at`` on the row whose ``key`` is ``value`` unless already set (a second revoke keeps the
    first time); the row after. Raises ``missing`` when there is no such row. ``authenticates``: the row is a
    credential callers authenticate with, so the credential generation moves with the revocation.
    ``precondition`` runs first in the same transaction and may raise to refuse the revocation."""
    check_now(now)
    key_column = table.c[key]
    with db.transaction() as conn:
        if precondition is not None:
            precondition(conn)
        update = table.update().where(key_column == value, table.c.revoked_at.is_(None)).values(revoked_at=now)
        if conn.execute(update).rowcount and authenticates:
            credential_generation.bump_in(conn)
        row = conn.execute(sa.select(table).where(key_column == value)).one_or_none()
    if row is None:
        raise missing
    return row


def _usable_admin(now: datetime) -> list[sa.ColumnElement[bool]]:
    """The WHERE conditions of an operator token that can act as admin at ``now``: unrevoked, unexpired."""
    tokens = t.operator_tokens
    return [
        tokens.c.role == OperatorRole.ADMIN.value,
        tokens.c.revoked_at.is_(None),
        sa.or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now),
    ]


def _get(db: Database, table: sa.Table, key: str, value: str, missing: NotFound) -> Row[Any]:
    with db.read() as conn:
        row = conn.execute(sa.select(table).where(table.c[key] == value)).one_or_none()
    if row is None:
        raise missing
    return row


def _unknown_enrollment(token_id: str) -> NotFound:
    return NotFound(
        "enrollment token",
        token_id,
        "operator tokens: fleetctl token list; enrollment tokens are shown once when created",
    )


def _enrollment_record(row: Row[Any]) -> EnrollmentTokenRecord:
    return record_from_row(EnrollmentTokenRecord, row)


def _operator_record(row: Row[Any]) -> OperatorRecord:
    return record_from_row(OperatorRecord, row, role=OperatorRole(row.role))


def _trusted_key_record(row: Row[Any]) -> TrustedKeyRecord:
    return record_from_row(TrustedKeyRecord, row)


def usable_enrollment_in(conn: Connection, secret: str, now: datetime) -> EnrollmentTokenRecord:
    """The enrollment token ``secret`` names, if it may be used now; reads only.

    Raises ``InvalidToken``, ``TokenExpired``, ``TokenRevoked`` or ``TokenExhausted``.
    """
    token_id = credentials.parse_secret(credentials.ENROLLMENT_PREFIX, secret)
    if token_id is None:
        raise InvalidToken(
            "enrollment token is malformed; expected 'eft_<id>.<secret>' exactly as it was printed "
            "when the token was created"
        )
    tokens = t.enrollment_tokens
    row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).one_or_none()
    if row is None or not credentials.secret_matches(secret, row.secret_sha256):
        raise InvalidToken(
            "enrollment token not recognised; check it was copied whole, or ask an operator for a new one"
        )
    record = _enrollment_record(row)
    if record.revoked_at is not None:
        raise TokenRevoked("enrollment token", record.id, record.revoked_at)
    if now >= record.expires_at:
        raise TokenExpired("enrollment token", record.id, record.expires_at)
    if record.max_uses is not None and record.uses >= record.max_uses:
        raise TokenExhausted(record.id, record.uses, record.max_uses)
    return record


def consume_enrollment_in(conn: Connection, secret: str, now: datetime) -> EnrollmentTokenRecord:
    """Count one use of the enrollment token inside the caller's write transaction ``conn``.

    Raises ``InvalidToken``, ``TokenExpired``, ``TokenRevoked`` or ``TokenExhausted``.
    """
    record = usable_enrollment_in(conn, secret, now)
    token_id = record.id
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


class EnrollmentTokenStore(AggregateStore):
    """Enrollment tokens: minted for a site by an operator, consumed by enrolling devices."""

    def create(
        self,
        site: str,
        ttl_s: float,
        now: datetime,
        max_uses: int | None = None,
        created_by: str | None = None,
    ) -> tuple[EnrollmentTokenRecord, str]:
        """A new token for ``site``, valid ``ttl_s`` seconds; returns the record and the one-time secret."""
        check_now(now)
        check_text("site", site)
        if not is_positive_seconds(ttl_s):
            raise InvalidArgument(f"enrollment token ttl_s must be > 0 seconds, got {shown(ttl_s)}")
        if max_uses is not None and (not is_int(max_uses) or max_uses < 1):
            raise InvalidArgument(f"enrollment token max_uses must be >= 1 or None (unlimited), got {shown(max_uses)}")
        if created_by is not None:
            check_text("created_by", created_by)
        token_id, secret = credentials.new_token(credentials.ENROLLMENT_PREFIX)
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
        with self._db.transaction() as conn:
            values = record_values(record, secret_sha256=credentials.secret_hash(secret))
            conn.execute(t.enrollment_tokens.insert().values(values))
        return record, secret

    def consume(self, secret: str, now: datetime) -> EnrollmentTokenRecord:
        """Count one use of the token.

        Raises ``InvalidToken``, ``TokenExpired``, ``TokenRevoked`` or ``TokenExhausted``.
        """
        check_now(now)
        with self._db.transaction() as conn:
            return consume_enrollment_in(conn, secret, now)

    def check(self, secret: str, now: datetime) -> EnrollmentTokenRecord:
        """The token, if it may be used now (a read: ``consume`` counts the use, in the enrolment's write).

        Raises ``InvalidToken``, ``TokenExpired``, ``TokenRevoked`` or ``TokenExhausted``.
        """
        check_now(now)
        with self._db.read() as conn:
            return usable_enrollment_in(conn, secret, now)

    def get(self, token_id: str) -> EnrollmentTokenRecord:
        return _enrollment_record(_get(self._db, t.enrollment_tokens, "id", token_id, _unknown_enrollment(token_id)))

    def revoke(self, token_id: str, now: datetime) -> EnrollmentTokenRecord:
        """Revoke the token (idempotent: a second call keeps the first revocation time)."""
        row = _revoke(self._db, t.enrollment_tokens, "id", token_id, now, _unknown_enrollment(token_id))
        return _enrollment_record(row)

    def all(self, site: str | None = None) -> list[EnrollmentTokenRecord]:
        """Every token (of ``site``), oldest first."""
        tokens = t.enrollment_tokens
        query = sa.select(tokens).order_by(tokens.c.created_at, tokens.c.id)
        if site is not None:
            query = query.where(tokens.c.site == site)
        with self._db.read() as conn:
            return [_enrollment_record(row) for row in conn.execute(query)]


class OperatorTokenStore(AggregateStore):
    """Operator tokens (a name and a role each), including the bootstrap admin of a fresh installation."""

    def create(
        self, name: str, role: OperatorRole | str, ttl_s: float | None, now: datetime
    ) -> tuple[OperatorRecord, str]:
        """A new operator token (``ttl_s`` None: no expiry); returns the record and the one-time secret."""
        check_now(now)
        check_text("operator token name", name)
        try:
            checked_role = OperatorRole(role)
        except ValueError:
            roles = ", ".join(r.value for r in OperatorRole)
            raise InvalidArgument(f"operator role must be one of {roles}, got {shown(role)}") from None
        if ttl_s is not None and not is_positive_seconds(ttl_s):
            raise InvalidArgument(f"operator token ttl_s must be > 0 seconds or None (no expiry), got {shown(ttl_s)}")
        with self._db.transaction() as conn:
            return self._insert(conn, name, checked_role, ttl_s, now)

    def _insert(
        self, conn: Connection, name: str, role: OperatorRole, ttl_s: float | None, now: datetime
    ) -> tuple[OperatorRecord, str]:
        token_id, secret = credentials.new_token(credentials.OPERATOR_PREFIX)
        record = OperatorRecord(
            id=token_id,
            name=name,
            role=role,
            created_at=now,
            expires_at=None if ttl_s is None else now + timedelta(seconds=ttl_s),
            revoked_at=None,
        )
        values = record_values(record, role=record.role.value, secret_sha256=credentials.secret_hash(secret))
        conn.execute(t.operator_tokens.insert().values(values))
        return record, secret

    def authenticate(self, secret: str, now: datetime) -> OperatorRecord:
        """The operator token behind ``secret``; raises ``InvalidToken``/``TokenExpired``/``TokenRevoked``."""
        check_now(now)
        token_id = credentials.parse_secret(credentials.OPERATOR_PREFIX, secret)
        if token_id is None:
            raise InvalidToken("operator token is malformed; expected 'eot_<id>.<secret>' as it was printed")
        with self._db.read() as conn:
            row = conn.execute(sa.select(t.operator_tokens).where(t.operator_tokens.c.id == token_id)).one_or_none()
        if row is None or not credentials.secret_matches(secret, row.secret_sha256):
            raise InvalidToken("operator token not recognised; check it was copied whole, or ask an admin")
        record = _operator_record(row)
        if record.revoked_at is not None:
            raise TokenRevoked("operator token", record.id, record.revoked_at)
        if record.expires_at is not None and now >= record.expires_at:
            raise TokenExpired("operator token", record.id, record.expires_at)
        if record.last_used_at is None or now - record.last_used_at >= LAST_USE_EVERY:
            self.record_use(record.id, now)
        return record

    def record_use(self, token_id: str, now: datetime) -> None:
        """Set ``last_used_at`` unless it was set less than ``LAST_USE_EVERY`` ago (by any replica): at most one
        write a minute per token however many calls it makes."""
        tokens = t.operator_tokens
        stale = sa.or_(tokens.c.last_used_at.is_(None), tokens.c.last_used_at <= now - LAST_USE_EVERY)
        with self._db.transaction() as conn:
            conn.execute(tokens.update().where(tokens.c.id == token_id, stale).values(last_used_at=now))

    def revoke(self, token_id: str, now: datetime, *, allow_last_admin: bool = False) -> OperatorRecord:
        """Revoke the token (idempotent: a second call keeps the first revocation time). ``LastAdminToken``,
        nothing changed, when it is the last usable admin token, unless ``allow_last_admin``."""
        missing = NotFound("operator token", token_id, "list them with fleetctl token list")

        def keep_an_admin(conn: Connection) -> None:
            tokens = t.operator_tokens
            usable = conn.execute(sa.select(tokens.c.id).where(*_usable_admin(now)).limit(2)).scalars().all()
            if list(usable) == [token_id]:
                raise LastAdminToken(token_id)

        check = None if allow_last_admin else keep_an_admin
        row = _revoke(self._db, t.operator_tokens, "id", token_id, now, missing, authenticates=True, precondition=check)
        return _operator_record(row)

    def all(self) -> list[OperatorRecord]:
        """Every operator token, oldest first."""
        tokens = t.operator_tokens
        with self._db.read() as conn:
            rows = conn.execute(sa.select(tokens).order_by(tokens.c.created_at, tokens.c.id))
            return [_operator_record(row) for row in rows]

    def ensure_bootstrap_admin(self, now: datetime) -> str | None:
        """Create a non-expiring admin token when no usable admin token exists; return its secret, else None.

        "Usable" (not revoked, not expired) rather than "any": an installation whose admins were all
        revoked recovers on the next start, and whoever can restart the controller owns its database anyway.
        """
        check_now(now)
        tokens = t.operator_tokens
        with self._db.transaction() as conn:
            usable = conn.execute(
                sa.select(sa.func.count()).select_from(tokens).where(*_usable_admin(now))
            ).scalar_one()
            if usable:
                return None
            record, secret = self._insert(conn, BOOTSTRAP_ADMIN_NAME, OperatorRole.ADMIN, None, now)
        log.warning("store.bootstrap_admin_created", token_id=record.id)
        return secret


class TrustedKeyStore(AggregateStore):
    """Publisher public keys a bundle signature may name. A revoked key id is never trusted again."""

    def add(self, key_id: str, public_key_pem: str, now: datetime) -> TrustedKeyRecord:
        """Trust a publisher key (idempotent for the same PEM). A revoked key id stays revoked."""
        check_now(now)
        check_text("key_id", key_id)
        if not isinstance(public_key_pem, str) or "-----BEGIN PUBLIC KEY-----" not in public_key_pem:
            raise InvalidArgument(
                f"trusted key {shown(key_id)} must be a PEM public key ('-----BEGIN PUBLIC KEY-----'), "
                f"got {shown(str(public_key_pem))}"
            )
        keys = t.trusted_keys
        with self._db.transaction() as conn:
            row = conn.execute(sa.select(keys).where(keys.c.key_id == key_id)).one_or_none()
            if row is None:
                conn.execute(keys.insert().values(key_id=key_id, public_key_pem=public_key_pem, added_at=now))
                return TrustedKeyRecord(key_id, public_key_pem, now, None)
        existing = _trusted_key_record(row)
        if existing.revoked_at is not None:
            raise Conflict(
                f"trusted key {shown(key_id)} was revoked at {existing.revoked_at.isoformat()}; revoked keys are "
                "never trusted again — add the new key under a new key id"
            )
        if existing.public_key_pem.strip() != public_key_pem.strip():
            raise Conflict(
                f"trusted key {shown(key_id)} already exists with a different public key; "
                "use a new key id for a new key (key ids name exactly one key)"
            )
        return existing

    def get(self, key_id: str) -> TrustedKeyRecord:
        missing = NotFound("trusted key", key_id, "add it with the publisher's public key first")
        return _trusted_key_record(_get(self._db, t.trusted_keys, "key_id", key_id, missing))

    def all(self, include_revoked: bool = True) -> list[TrustedKeyRecord]:
        """Every trusted key (revoked ones too unless ``include_revoked`` is False), by key id."""
        keys = t.trusted_keys
        query = sa.select(keys).order_by(keys.c.key_id)
        if not include_revoked:
            query = query.where(keys.c.revoked_at.is_(None))
        with self._db.read() as conn:
            return [_trusted_key_record(row) for row in conn.execute(query)]

    def revoke(self, key_id: str, now: datetime) -> TrustedKeyRecord:
        missing = NotFound("trusted key", key_id, "list trusted keys to see the valid ids")
        return _trusted_key_record(_revoke(self._db, t.trusted_keys, "key_id", key_id, now, missing))
