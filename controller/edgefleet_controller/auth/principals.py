"""Who is calling, and what they may do.

Credentials travel as ``authorization: Bearer <token>`` metadata, as grpcurl and other generic clients
send them. Two kinds exist, told apart by prefix:

- device credentials ``edc_<device id>.<secret>``: may call DeviceService (Sync, FetchBlob, ReportEvent,
  UploadTelemetry) for that device only; the device id comes from the credential, never the request;
- operator tokens ``eot_<id>.<secret>`` with a role: viewer (reads) < operator (bundles, configs,
  rollouts, desired state) < admin (tokens, trusted keys).

``AuthService.authenticate`` keeps principals only while the store's credential generation is unchanged
(``auth.credential_cache``), so revoking a token, disabling or deleting a device or rotating its credential
is refused on the next call, on every replica sharing the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from edgefleet.contract.shown import shown
from edgefleet_controller.errors import PermissionDenied, Unauthenticated


class Role(IntEnum):
    """Operator roles, ordered: a higher role may do everything a lower one may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"role must be one of viewer, operator, admin; got {shown(text)}") from None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a device (``device_id`` set) or an operator (``role`` set)."""

    kind: str  # "device" or "operator"
    subject: str  # device id or operator token id
    name: str
    role: Role | None = None
    site: str = ""
    #: When the credential stops being valid (wall clock); None: never.
    expires_at: datetime | None = None

    @property
    def device_id(self) -> str:
        if self.kind != "device":
            raise PermissionDenied("this call needs a device credential; operator tokens cannot call it")
        return self.subject

    def require_role(self, role: Role) -> None:
        if self.kind != "operator" or self.role is None:
            raise PermissionDenied(
                f"{self.kind} credentials cannot call FleetService; use an operator token with role "
                f"{role.name.lower()} or higher"
            )
        if self.role < role:
            raise PermissionDenied(
                f"operator token {shown(self.name)} has role {self.role.name.lower()}; this call needs "
                f"{role.name.lower()} or higher"
            )


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """Extract the bearer token from call metadata, or raise ``Unauthenticated`` saying what to send."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return token.strip()
    raise Unauthenticated(
        "missing credential: send metadata 'authorization: Bearer <token>' (operators: the admin token is "
        "in DATA_DIR/admin.token at first start; devices: the credential from Enroll)"
    )
