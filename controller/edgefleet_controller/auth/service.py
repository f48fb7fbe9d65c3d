"""``AuthService``: credentials and trust. It authenticates bearer tokens (device credentials and operator
tokens, behind a short TTL cache), issues and revokes enrollment and operator tokens, keeps the trusted
publisher keys, and writes the bootstrap admin token at first start.

Store calls are synchronous transactions run in worker threads (``asyncio.to_thread``); the clock is injected.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from edgefleet.contract.errors import ContractError
from edgefleet.contract.signing import TrustedKeys, check_key_id
from edgefleet_controller import errors as cerr
from edgefleet_controller.auth.principals import CredentialCache, Principal, Role
from edgefleet_controller.clock import Clock
from edgefleet_controller.store import errors as serr
from edgefleet_controller.store.auth import EnrollmentTokenStore, OperatorTokenStore, TrustedKeyStore
from edgefleet_controller.store.devices import DeviceStore
from edgefleet_controller.store.records import (
    EnrollmentTokenRecord,
    OperatorRecord,
    OperatorRole,
    TrustedKeyRecord,
)

log = structlog.get_logger("edgefleet.controller")

#: An enrollment token's lifetime when the request sets none.
DEFAULT_ENROLLMENT_TTL_S = 86400


@dataclass(eq=False)
class AuthService:
    enrollment_tokens: EnrollmentTokenStore
    operator_tokens: OperatorTokenStore
    keys: TrustedKeyStore
    devices: DeviceStore
    clock: Clock
    _credentials: CredentialCache = field(default_factory=CredentialCache, init=False)

    async def write_bootstrap_admin(self, data_dir: Path) -> None:
        """At first start, create the admin operator token and leave it in ``DATA_DIR/admin.token`` (0600)."""
        secret = await asyncio.to_thread(self.operator_tokens.ensure_bootstrap_admin, self.clock())
        if secret is None:
            return
        path = data_dir / "admin.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        os.chmod(path, 0o600)
        log.info("controller.bootstrap_admin_token", path=str(path))

    async def authenticate(self, token: str) -> Principal:
        cached = self._credentials.get(token)
        if cached is not None and (cached.expires_at is None or self.clock() < cached.expires_at):
            return cached
        if token.startswith("edc_"):
            device_id = await asyncio.to_thread(self.devices.authenticate, token)
            if device_id is None:
                raise cerr.Unauthenticated("unknown device credential; the device must enroll again")
            device = await asyncio.to_thread(self.devices.get, device_id)
            principal = Principal("device", device_id, device.name, site=device.site)
        elif token.startswith("eot_"):
            try:
                op = await asyncio.to_thread(self.operator_tokens.authenticate, token, self.clock())
            except serr.TokenRejected as exc:
                raise cerr.Unauthenticated(f"operator token refused: {exc}") from None
            principal = Principal("operator", op.id, op.name, role=Role.parse(op.role.value), expires_at=op.expires_at)
        else:
            raise cerr.Unauthenticated("credential must be an operator token (eot_…) or a device credential (edc_…)")
        self._credentials.put(token, principal)
        return principal

    # ------------------------------------------------------------------ tokens

    async def create_enrollment_token(
        self, site: str, *, ttl_s: int, max_uses: int | None, created_by: str
    ) -> tuple[EnrollmentTokenRecord, str]:
        """A new enrollment token for ``site`` (``ttl_s`` 0 = one day) and its secret, shown once."""
        if not site:
            raise cerr.InvalidArgument("CreateEnrollmentToken: site is required (e.g. --site warehouse-a)")
        return await asyncio.to_thread(
            lambda: self.enrollment_tokens.create(
                site, ttl_s or DEFAULT_ENROLLMENT_TTL_S, self.clock(), max_uses=max_uses, created_by=created_by
            )
        )

    async def revoke_enrollment_token(self, token_id: str) -> None:
        await asyncio.to_thread(self.enrollment_tokens.revoke, token_id.removeprefix("eft_"), self.clock())

    async def create_operator_token(self, name: str, role: str, ttl_s: int | None) -> tuple[OperatorRecord, str]:
        """A new operator token (``role`` empty = viewer) and its secret, shown once."""
        try:
            operator_role = OperatorRole(role or "viewer")
        except ValueError:
            raise cerr.InvalidArgument(f"role must be viewer, operator or admin; got {role!r}") from None
        return await asyncio.to_thread(lambda: self.operator_tokens.create(name, operator_role, ttl_s, self.clock()))

    async def revoke_operator_token(self, token_id: str) -> None:
        await asyncio.to_thread(self.operator_tokens.revoke, token_id, self.clock())
        self._credentials.evict_subject(token_id)

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
