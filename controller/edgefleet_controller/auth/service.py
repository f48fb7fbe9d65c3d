"""``AuthService``: credentials and trust. It authenticates bearer tokens (device credentials and operator
tokens), issues, lists and revokes enrollment and operator tokens, keeps the trusted publisher keys, and
writes the bootstrap admin token at first start.

A revocation, a disabled or deleted device or a rotated credential is refused on the very next call, on every
replica that shares the database: authenticated callers are kept in memory only under the credential
generation that every revocation moves, read at most 0.1 s before each call, and a revocation answers only
after that bound (``auth.credential_cache``). Device actions (disable, delete, rotate) live in
``auth.revocation``.

Store calls are synchronous transactions run in worker threads (``asyncio.to_thread``); the clock is injected.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from edgefleet.contract.errors import ContractError
from edgefleet.contract.shown import shown
from edgefleet.contract.signing import TrustedKeys, check_key_id
from edgefleet_controller import errors as cerr
from edgefleet_controller.auth.credential_cache import CredentialCache, GenerationReads, settle
from edgefleet_controller.auth.principals import Principal, Role
from edgefleet_controller.clock import Clock
from edgefleet_controller.store import errors as serr
from edgefleet_controller.store.auth import LAST_USE_EVERY, EnrollmentTokenStore, OperatorTokenStore, TrustedKeyStore
from edgefleet_controller.store.credential_generation import CredentialGenerationStore
from edgefleet_controller.store.device_access import DeviceAccessStore
from edgefleet_controller.store.records import (
    EnrollmentTokenRecord,
    OperatorRecord,
    OperatorRole,
    TrustedKeyRecord,
)

log = structlog.get_logger("edgefleet.controller")

#: An enrollment token's lifetime when the request sets none.
DEFAULT_ENROLLMENT_TTL_S = 86400
#: An operator token's lifetime when the request sets none (``no_expiry`` asks for a token that never expires).
DEFAULT_OPERATOR_TTL_S = int(timedelta(days=90).total_seconds())


#: What a device call is told when its device no longer exists: refused at authentication (its credential is
#: unknown), or found gone inside the call (deleted while its Sync was parked, or between check and write).
DEVICE_GONE = (
    "this device was deleted by an operator (or its credential rotated); re-enroll it with an enrollment token "
    "(a rotated credential: install the one fleetctl device rotate-credential printed)"
)


@contextmanager
def own_device_call(device_id: str) -> Iterator[None]:
    """Inside a device's own call, its device found missing is ``Unauthenticated(DEVICE_GONE)``, as the next
    call's authentication will say, not the operators' NOT_FOUND: the credential's device was deleted."""
    try:
        yield
    except serr.NotFound as exc:
        if exc.kind == "device" and exc.key == device_id:
            raise cerr.Unauthenticated(DEVICE_GONE) from None
        raise


def disabled_message(name: str, disabled_at: object) -> str:
    """What a disabled device is told on every call, and how it gets back."""
    return (
        f"device {shown(name)} was disabled by an operator at {disabled_at}; its state is kept and it is refused "
        f"until an admin re-enables it: fleetctl device enable {name}"
    )


@dataclass(eq=False)
class AuthService:
    enrollment_tokens: EnrollmentTokenStore
    operator_tokens: OperatorTokenStore
    keys: TrustedKeyStore
    device_access: DeviceAccessStore
    clock: Clock
    generation: CredentialGenerationStore
    _cache: CredentialCache = field(default_factory=CredentialCache, init=False)
    _used: dict[str, datetime] = field(default_factory=dict, init=False)
    _generations: GenerationReads = field(init=False)
    #: Where a start writes a new bootstrap admin token when no usable admin token is left.
    _admin_token_path: str = field(default="DATA_DIR/admin.token", init=False)

    def __post_init__(self) -> None:
        self._generations = GenerationReads(self.generation.read)

    async def write_bootstrap_admin(self, data_dir: Path) -> None:
        """At first start, create the admin operator token and leave it in ``DATA_DIR/admin.token`` (0600)."""
        path = data_dir / "admin.token"
        self._admin_token_path = str(path)
        secret = await asyncio.to_thread(self.operator_tokens.ensure_bootstrap_admin, self.clock())
        if secret is None:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        os.chmod(path, 0o600)
        log.info("controller.bootstrap_admin_token", path=str(path))

    async def authenticate(self, token: str) -> Principal:
        """The caller behind ``token``. A disabled device is refused with PERMISSION_DENIED saying so (it keeps
        its credential and state); an unknown, deleted or rotated-away credential with UNAUTHENTICATED.

        The cheap path: the credential generation (read at most ``MAX_AGE_S`` before the call, one read shared
        by the calls of that interval), then this replica's cache of callers read under that generation."""
        generation = await self._generations.current()
        cached = self._cache.get(token, generation)
        now = self.clock()
        if cached is not None and (cached.expires_at is None or now < cached.expires_at):
            if cached.kind == "operator":
                await self._record_use(cached.subject, now)
            return cached
        principal = await self._look_up(token, now)
        self._cache.put(token, principal, generation)
        return principal

    async def _look_up(self, token: str, now: datetime) -> Principal:
        if token.startswith("edc_"):
            access = await asyncio.to_thread(self.device_access.check, token)
            if access is None:
                raise cerr.Unauthenticated(DEVICE_GONE)
            if access.disabled_at is not None:
                raise cerr.PermissionDenied(disabled_message(access.name, access.disabled_at.isoformat()))
            return Principal("device", access.device_id, access.name, site=access.site)
        if token.startswith("eot_"):
            try:
                op = await asyncio.to_thread(self.operator_tokens.authenticate, token, now)  # records the use
            except serr.TokenRejected as exc:
                raise cerr.Unauthenticated(f"operator token refused: {exc}") from None
            self._used[op.id] = now
            return Principal("operator", op.id, op.name, role=Role.parse(op.role.value), expires_at=op.expires_at)
        raise cerr.Unauthenticated("credential must be an operator token (eot_…) or a device credential (edc_…)")

    async def _record_use(self, token_id: str, now: datetime) -> None:
        """An operator token's last use, written at most once a minute per token and replica (the store's
        conditional write keeps it at most once a minute across replicas)."""
        last = self._used.get(token_id)
        if last is None or now - last >= LAST_USE_EVERY:
            self._used[token_id] = now
            await asyncio.to_thread(self.operator_tokens.record_use, token_id, now)

    async def admit_enrollment(self, token: str) -> None:
        """Refuse (UNAUTHENTICATED) an enrollment token that is malformed, unknown, revoked, expired or used up,
        before anything else of the request is looked at; a read only: enrolling consumes the use."""
        if not token:
            raise cerr.Unauthenticated("EnrollRequest.enrollment_token is empty; create one with fleetctl token create")
        try:
            await asyncio.to_thread(self.enrollment_tokens.check, token, self.clock())
        except serr.TokenRejected as exc:
            raise cerr.Unauthenticated(f"enrollment refused: {exc}") from None

    # ------------------------------------------------------------------ tokens

    async def create_enrollment_token(
        self, site: str, *, ttl_s: int, max_uses: int | None, created_by: str
    ) -> tuple[EnrollmentTokenRecord, str]:
        """A new enrollment token for ``site`` (``ttl_s`` 0 = one day) and its secret, shown once; the request's
        site was checked against ``request_bounds`` (a non-empty site name)."""
        return await asyncio.to_thread(
            lambda: self.enrollment_tokens.create(
                site, ttl_s or DEFAULT_ENROLLMENT_TTL_S, self.clock(), max_uses=max_uses, created_by=created_by
            )
        )

    async def revoke_enrollment_token(self, token_id: str) -> None:
        await asyncio.to_thread(self.enrollment_tokens.revoke, token_id.removeprefix("eft_"), self.clock())

    async def create_operator_token(
        self, name: str, role: str, ttl_s: int, *, no_expiry: bool = False
    ) -> tuple[OperatorRecord, str]:
        """A new operator token (``role`` empty = viewer; ``ttl_s`` 0 = 90 days) and its secret, shown once."""
        try:
            operator_role = OperatorRole(role or "viewer")
        except ValueError:
            raise cerr.InvalidArgument(f"role must be viewer, operator or admin; got {shown(role)}") from None
        if no_expiry and ttl_s:
            raise cerr.InvalidArgument(
                f"CreateOperatorToken: set either ttl_s ({ttl_s}) or no_expiry, not both (fleetctl: --expires)"
            )
        lifetime = None if no_expiry else (ttl_s or DEFAULT_OPERATOR_TTL_S)
        rec, secret = await asyncio.to_thread(
            lambda: self.operator_tokens.create(name, operator_role, lifetime, self.clock())
        )
        if lifetime is None:
            log.warning("auth.operator_token_never_expires", token_id=rec.id, name=shown(name), role=rec.role.value)
        return rec, secret

    async def list_operator_tokens(self) -> list[OperatorRecord]:
        """Every operator token, oldest first, revoked and expired ones too."""
        return await asyncio.to_thread(self.operator_tokens.all)

    async def revoke_operator_token(self, token_id: str, *, allow_last_admin: bool = False) -> OperatorRecord:
        """Revoke the token; it is refused on its next call on every replica. ``NotFound`` for an unknown id;
        ``FailedPrecondition``, nothing changed, for the last usable admin token unless ``allow_last_admin``."""
        bare, now = token_id.removeprefix("eot_"), self.clock()
        try:
            rec = await asyncio.to_thread(
                lambda: self.operator_tokens.revoke(bare, now, allow_last_admin=allow_last_admin)
            )
        except serr.LastAdminToken as exc:
            raise cerr.FailedPrecondition(
                f"{exc}: revoking it leaves no admin; nothing was revoked. Create another admin token first "
                "(fleetctl token operator --role admin), or confirm (RevokeOperatorTokenRequest.allow_last_admin; "
                "fleetctl token revoke --force-last-admin). To recover afterwards, restart the controller: it "
                f"writes a new bootstrap admin token to {self._admin_token_path}"
            ) from None
        await settle()
        log.info("auth.operator_token_revoked", token_id=rec.id, name=shown(rec.name))
        return rec

    # ------------------------------------------------------------------ trusted keys

    async def add_trusted_key(self, key_id: str, pem: str) -> str:
        try:
            check_key_id(key_id)
            TrustedKeys.from_pem_map({key_id: pem})
        except ContractError as exc:
            raise cerr.InvalidArgument(f"trusted key refused: {exc}") from None
        rec = await asyncio.to_thread(self.keys.add, key_id, pem, self.clock())
        return rec.key_id

    async def list_trusted_keys(self) -> list[TrustedKeyRecord]:
        """The keys in force (revoked ones left out)."""
        return await asyncio.to_thread(self.keys.all, False)

    async def trusted_keys(self) -> TrustedKeys:
        """The keys in force, ready to verify a bundle signature."""
        return TrustedKeys.from_pem_map({r.key_id: r.public_key_pem for r in await self.list_trusted_keys()})
