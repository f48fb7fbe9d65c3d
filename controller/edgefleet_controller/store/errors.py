"""Errors of the controller's store (database and blob directory).

Every error the store raises on purpose is a ``StoreError``; the gRPC layer maps the branches to status codes
(``NotFound`` → NOT_FOUND, ``Conflict``/``StillReferenced`` → FAILED_PRECONDITION or ALREADY_EXISTS,
``TokenRejected`` → UNAUTHENTICATED, ``InvalidArgument`` → INVALID_ARGUMENT, ``OffsetOutOfRange`` →
OUT_OF_RANGE). Messages say what was wrong, with the offending value, and what to do.

    StoreError
    ├── NotFound(kind, key)              no such device / token / bundle / blob / ...
    ├── Conflict                         the write contradicts what is stored (same name@version, other bytes)
    │   └── DeviceNameTaken(site, name, device_id)   a device of that name is already enrolled in the site
    ├── StillReferenced(digest, refs)    a bundle cannot be deleted while devices or rollouts use it
    ├── InvalidArgument                  a value the store refuses (bad role, ttl, tag filter, JSON...)
    │   ├── InvalidDigest                not ``sha256:`` + 64 lowercase hex; never used as a path
    │   └── InvalidPageToken             a page token this store did not hand out
    ├── OffsetOutOfRange(digest, offset, size)   a blob read past its end
    ├── BlobIntegrityError               a blob written does not match what the writer promised
    │   ├── BlobDigestMismatch(expected, actual)
    │   └── BlobTooLarge(limit)
    └── TokenRejected                    a presented secret does not authenticate
        ├── InvalidToken                 malformed, unknown or wrong secret (deliberately vague)
        ├── TokenExpired(expired_at)
        ├── TokenRevoked(revoked_at)
        └── TokenExhausted(uses, max_uses)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from edgefleet.contract.shown import shown


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class NotFound(StoreError):
    """No record of ``kind`` with key ``key``."""

    def __init__(self, kind: str, key: str, hint: str = "") -> None:
        self.kind = kind
        self.key = key
        message = f"{kind} {shown(key)} not found"
        super().__init__(f"{message}; {hint}" if hint else message)


class Conflict(StoreError):
    """The requested write contradicts what is already stored."""


class DeviceNameTaken(Conflict):
    """Enroll with a name that a device enrolled in the same site already has (names are unique per site)."""

    def __init__(self, site: str, name: str, device_id: str) -> None:
        self.site = site
        self.name = name
        self.device_id = device_id
        super().__init__(
            f"device name {shown(name)} is already enrolled in site {shown(site)} (device id {device_id}); "
            f"delete it with `fleetctl device delete {device_id}` or choose another name"
        )


class StillReferenced(StoreError):
    """A bundle is still used by devices (desired or reported state) or rollouts."""

    def __init__(self, digest: str, referrers: Sequence[str]) -> None:
        self.digest = digest
        self.referrers = tuple(referrers)
        listed = ", ".join(self.referrers[:10])
        more = f" and {len(self.referrers) - 10} more" if len(self.referrers) > 10 else ""
        super().__init__(
            f"bundle {digest} is still referenced by {listed}{more}; "
            "move those devices/rollouts to another bundle first, then delete it"
        )


class InvalidArgument(StoreError, ValueError):
    """A caller-supplied value the store refuses."""


class InvalidDigest(InvalidArgument):
    """A digest string is not ``sha256:`` followed by 64 lowercase hex characters."""

    def __init__(self, value: object) -> None:
        self.value = value
        super().__init__(f"digest must be 'sha256:' followed by 64 lowercase hex characters, got {shown(value)}")


class InvalidPageToken(InvalidArgument):
    """A page token that this store did not hand out (or that was altered)."""

    def __init__(self, token: str) -> None:
        self.token = token
        super().__init__(
            f"page token {shown(token)} is not valid; pass back the next_page_token of the previous page, "
            "or none for the first page"
        )


class OffsetOutOfRange(StoreError):
    """A blob read was asked to start beyond the blob's end."""

    def __init__(self, digest: str, offset: int, size: int) -> None:
        self.digest = digest
        self.offset = offset
        self.size = size
        super().__init__(
            f"offset {offset} is outside blob {digest} of {size} bytes; resume from an offset between 0 and {size}"
        )


class BlobIntegrityError(StoreError):
    """A blob being written does not match what its writer promised."""


class BlobDigestMismatch(BlobIntegrityError):
    """The bytes written hash to another digest than the expected one."""

    def __init__(self, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"blob content hashes to {actual}, expected {expected}; the upload was corrupted or "
            "truncated — upload it again"
        )


class BlobTooLarge(BlobIntegrityError):
    """More bytes were written than the writer's limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"blob exceeds the limit of {limit} bytes; split it or raise the limit")


class LastAdminToken(StoreError):
    """Revoking this operator token would leave no unexpired, unrevoked admin token."""

    def __init__(self, token_id: str) -> None:
        super().__init__(f"operator token {shown(token_id)} is the last unexpired, unrevoked admin token")
        self.token_id = token_id


class TokenRejected(StoreError):
    """A presented secret (enrollment, device or operator) does not authenticate."""


class InvalidToken(TokenRejected):
    """The secret is malformed, unknown, or does not match: deliberately not saying which."""


class TokenExpired(TokenRejected):
    """The token's lifetime ended at ``expired_at``."""

    def __init__(self, what: str, token_id: str, expired_at: datetime) -> None:
        self.token_id = token_id
        self.expired_at = expired_at
        super().__init__(f"{what} {token_id} expired at {expired_at.isoformat()}; ask an operator for a new one")


class TokenRevoked(TokenRejected):
    """The token was revoked at ``revoked_at``."""

    def __init__(self, what: str, token_id: str, revoked_at: datetime) -> None:
        self.token_id = token_id
        self.revoked_at = revoked_at
        super().__init__(f"{what} {token_id} was revoked at {revoked_at.isoformat()}; ask an operator for a new one")


class TokenExhausted(TokenRejected):
    """The enrollment token has been used ``max_uses`` times already."""

    def __init__(self, token_id: str, uses: int, max_uses: int) -> None:
        self.token_id = token_id
        self.uses = uses
        self.max_uses = max_uses
        super().__init__(
            f"enrollment token {token_id} has been used {uses} of {max_uses} times; ask an operator for a new token"
        )
