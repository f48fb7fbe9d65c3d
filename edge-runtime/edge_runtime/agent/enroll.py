"""Device identity: enrolling with a token, and the credential kept in ``DATA_DIR/credential.json`` (0600).

The file holds the device id, the credential (``edc_<id>.<secret>``, shown once by the controller), the site,
the controller address it was issued by and the publisher keys (PEM by key id) handed out at enrollment.
It is written as temp file (created 0600) + fsync + rename + fsync of the directory, so a crash never leaves
a half-written credential and the secret is never readable by other users, not even for an instant.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog

from edge_runtime.agent.client import ControllerLink, is_transient
from edge_runtime.agent.errors import CredentialError, EnrollmentError
from edgefleet.contract.durable import write_durably
from edgefleet.contract.shown import shown
from edgefleet.v1 import common_pb2, device_pb2

log = structlog.get_logger(__name__)

CREDENTIAL_FILE = "credential.json"
_FORMAT = "edgefleet.device-credential/v1"


@dataclass(frozen=True)
class Credential:
    device_id: str
    credential: str
    site: str
    controller: str
    trusted_keys: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "device_id": self.device_id,
            "credential": self.credential,
            "site": self.site,
            "controller": self.controller,
            "trusted_keys": dict(self.trusted_keys),
        }


def credential_path(data_dir: Path) -> Path:
    return Path(data_dir) / CREDENTIAL_FILE


def load_credential(data_dir: Path) -> Credential | None:
    """The stored credential, or None when the device has not enrolled yet."""
    path = credential_path(data_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CredentialError(
            f"{path}: cannot be read as JSON ({exc}); restore it from backup or delete it and enroll again "
            "with --enroll-token"
        ) from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise CredentialError(f"{path}: field 'format' must be {shown(_FORMAT)}, got {shown(data.get('format'))}")
    for key in ("device_id", "credential", "site", "controller"):
        if not isinstance(data.get(key), str) or (not data[key] and key != "site"):
            raise CredentialError(f"{path}: field {shown(key)} must be a non-empty string, got {shown(data.get(key))}")
    keys = data.get("trusted_keys", {})
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise CredentialError(f"{path}: field 'trusted_keys' must map key ids to PEM strings, got {shown(keys)}")
    return Credential(data["device_id"], data["credential"], data["site"], data["controller"], keys)


def save_credential(data_dir: Path, cred: Credential) -> Path:
    """Write the credential durably with mode 0600; returns the path."""
    path = credential_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, json.dumps(cred.to_dict(), indent=2, sort_keys=True).encode(), mode=0o600)
    return path


async def enroll(
    link: ControllerLink,
    *,
    token: str,
    name: str,
    tags: Mapping[str, str],
    hardware: common_pb2.HardwareProfile,
    timeout_s: float = 30.0,
) -> Credential:
    """Exchange an enrollment token for a credential; raises ``EnrollmentError`` when refused."""
    if not token:
        raise EnrollmentError(
            "this device has no credential yet and no enrollment token was given; pass --enroll-token "
            "(create one with 'fleetctl token create --site SITE')"
        )
    request = device_pb2.EnrollRequest(enrollment_token=token, name=name, hardware=hardware, tags=dict(tags))
    try:
        reply: device_pb2.EnrollResponse = await link.device.Enroll(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        if is_transient(exc):
            raise  # the caller retries an unreachable controller; only a refusal is an EnrollmentError
        raise EnrollmentError(
            f"enrollment as {shown(name)} at {link.address} refused: {exc.code().name}: {exc.details()}"
        ) from None
    log.info("agent.enrolled", device_id=reply.device_id, site=reply.site, name=name)
    return Credential(
        device_id=reply.device_id,
        credential=reply.device_credential,
        site=reply.site,
        controller=link.address,
        trusted_keys=dict(reply.trusted_keys),
    )
