"""Values the store hands out and takes in: frozen dataclasses, no behaviour beyond small derived facts.

Secrets and their hashes never appear in a record; a secret is returned exactly once, next to the record,
by the call that mints it. ``record_from_row`` and ``record_values`` are the one row ⇄ record conversion: a
record's fields are the row's columns of the same names, except those the store computes (JSON, enums, bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from sqlalchemy.engine import Row

_Record = TypeVar("_Record", bound="DataclassInstance")

# Keys of a device's reported-state document that the store indexes (everything else is stored as is).
# ``slots`` maps a slot name to a mapping whose ``bundle`` is the digest held in that slot: a bundle kept
# for rollback must not be deleted under the device.
REPORTED_RUNNING_BUNDLE = "running_bundle"
REPORTED_HEALTH = "health"
REPORTED_SLOTS = "slots"
REPORTED_SLOT_BUNDLE = "bundle"

UNKNOWN_HEALTH = "unknown"
#: Health the controller shows for a device that has not synced for a while (never stored by it).
OFFLINE_HEALTH = "offline"
#: Health the controller shows for a disabled device (``disabled_at`` set; over offline; never stored).
DISABLED_HEALTH = "disabled"


class TokenState(StrEnum):
    """Whether a token can be used at a given instant. Stored names never change."""

    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    EXHAUSTED = "exhausted"


def token_state(
    now: datetime, revoked_at: datetime | None, expires_at: datetime | None, exhausted: bool = False
) -> TokenState:
    """A token's state at ``now``: revocation first, then expiry (``None``: never), then its use count."""
    if revoked_at is not None:
        return TokenState.REVOKED
    if expires_at is not None and now >= expires_at:
        return TokenState.EXPIRED
    if exhausted:
        return TokenState.EXHAUSTED
    return TokenState.ACTIVE


class OperatorRole(StrEnum):
    """What an operator token may do; each role includes the ones before it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, required: OperatorRole) -> bool:
        """True when this role is at least ``required``."""
        order = list(OperatorRole)
        return order.index(self) >= order.index(required)


@dataclass(frozen=True, slots=True)
class EnrollmentTokenRecord:
    id: str
    site: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    max_uses: int | None
    uses: int
    created_by: str | None

    def state(self, now: datetime) -> TokenState:
        exhausted = self.max_uses is not None and self.uses >= self.max_uses
        return token_state(now, self.revoked_at, self.expires_at, exhausted)


@dataclass(frozen=True, slots=True)
class OperatorRecord:
    id: str
    name: str
    role: OperatorRole
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    #: The last authenticated call (recorded at most once a minute); None: never used.
    last_used_at: datetime | None = None

    def state(self, now: datetime) -> TokenState:
        return token_state(now, self.revoked_at, self.expires_at)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    id: str
    name: str
    site: str
    tags: Mapping[str, str]
    hardware_class: str
    facts: Mapping[str, Any]
    enrolled_at: datetime
    last_seen: datetime | None
    reported: Mapping[str, Any]
    health: str
    running_bundle: str | None
    enrollment_token_id: str | None
    #: Set while an operator has disabled the device (its credential is refused).
    disabled_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SiteSummary:
    """Device counts of one site. ``by_bundle`` keys are running bundle digests (None: nothing running)."""

    site: str
    devices: int
    by_bundle: Mapping[str | None, int]
    by_health: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class TrustedKeyRecord:
    key_id: str
    public_key_pem: str
    added_at: datetime
    revoked_at: datetime | None


class ArtifactRef(NamedTuple):
    """One artifact of a bundle: its role in the bundle (``model``, ``model_int8``, ...), digest and size."""

    role: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    digest: str
    size: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BundleRecord:
    """A stored bundle. ``digest`` is ``sha256:`` of the exact manifest bytes; ``size`` counts the manifest
    and every artifact."""

    digest: str
    name: str
    version: str
    manifest: bytes
    signature: bytes
    key_id: str
    size: int
    created_at: datetime
    artifacts: tuple[ArtifactRef, ...] = field(default=())

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class ConfigDocInput(NamedTuple):
    """One config manifest document to apply. ``doc_json`` is canonical JSON; ``site`` scopes site layers."""

    kind: str
    name: str
    site: str | None
    doc_json: str
    content_digest: str


@dataclass(frozen=True, slots=True)
class ConfigDocRecord:
    """One version of a config document. A removal is recorded as a version with ``deleted`` set and no
    content."""

    kind: str
    name: str
    version: int
    site: str | None
    doc_json: str | None
    content_digest: str | None
    deleted: bool
    revision: int
    applied_at: datetime
    applied_by: str


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What a device should run. ``revision`` grows per device on each change; ``change_seq`` is the value of
    the store-wide desired-state change counter at this row's last change (0: never changed).
    ``assignment_id`` identifies the decision behind the current target (None before the first change)."""

    device_id: str
    bundle_digest: str | None
    config_digest: str | None
    revision: int
    updated_at: datetime
    reason: str | None
    rollout_id: str | None
    change_seq: int
    assignment_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    device_id: str
    kind: str
    seq: int | None
    payload: Mapping[str, Any]
    at: datetime
    received_at: datetime


def record_from_row(record_type: type[_Record], row: Row[*tuple[Any, ...]], **computed: Any) -> _Record:
    """A ``record_type`` whose fields are the row's same-named columns, but for those given in ``computed``."""
    columns = row._mapping
    values = {f.name: columns[f.name] for f in fields(record_type) if f.name not in computed}
    return record_type(**values, **computed)


def record_values(record: DataclassInstance, *, exclude: tuple[str, ...] = (), **computed: Any) -> dict[str, Any]:
    """The column values of ``record``'s row: its fields by name (but ``exclude``), then ``computed``."""
    values = {f.name: getattr(record, f.name) for f in fields(record) if f.name not in exclude}
    return {**values, **computed}
