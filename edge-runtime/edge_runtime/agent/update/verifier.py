"""The real ``BundleVerifier``: ``verify_bundle`` (schema, Ed25519 signature, every artifact) against the
publisher keys this device trusts.

Trusted keys are the union of: the keys handed out at enrollment (kept in credential.json), the effective
config's ``trusted_keys`` (key id → PEM, so an operator can rotate keys fleet-wide), and the ``*.pub.pem``
files of ``--trusted-keys DIR``. The controller only relays them: a bundle must be signed by the
publisher, so a compromised controller still cannot make the device run an unsigned model.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import structlog

from edgefleet.contract.bundle_archive import verify_bundle
from edgefleet.contract.errors import SignatureError
from edgefleet.contract.signing import TrustedKeys

log = structlog.get_logger(__name__)


class SignatureVerifier:
    """Verifies downloaded bundle directories; key sources can be replaced while the agent runs."""

    def __init__(self, *, enrolled: Mapping[str, str] | None = None, key_dir: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._enrolled: dict[str, str] = dict(enrolled or {})
        self._configured: dict[str, str] = {}
        self._from_dir = TrustedKeys.from_dir(key_dir) if key_dir is not None else TrustedKeys()

    def set_enrolled(self, keys: Mapping[str, str]) -> None:
        with self._lock:
            self._enrolled = dict(keys)

    def set_configured(self, keys: Mapping[str, str]) -> None:
        with self._lock:
            self._configured = dict(keys)

    def trusted(self) -> TrustedKeys:
        with self._lock:
            pems = {**self._enrolled, **self._configured}
        return TrustedKeys.from_pem_map(pems).merged(self._from_dir)

    def verify(self, bundle_dir: Path) -> None:
        trusted = self.trusted()
        if not len(trusted):
            raise SignatureError(
                f"{bundle_dir}: this device trusts no publisher key; enroll again, set 'trusted_keys' in the "
                "config or pass --trusted-keys DIR"
            )
        verified = verify_bundle(bundle_dir, trusted)
        log.info("agent.bundle_verified", digest=verified.digest, key_id=verified.key_id)
