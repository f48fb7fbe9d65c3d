"""Opening a bundle an operator names on the command line (``edge-runtime profile``, ``edge-runtime infer``).

Owns ``trusted_keys`` (which publisher keys verify it) and ``open_bundle`` (a verified bundle directory and
its manifest, for as long as a ``with`` block lasts), so every command that runs a bundle outside the agent
checks it the same way a device does before staging it.

Decisions:
- BUNDLE is a bundle directory or an ``.efb`` archive. Both are verified (signature over bundle.json, every
  artifact's sha256, nothing unlisted) against ``--trusted DIR`` (``<key_id>.pub.pem`` files), or, with
  ``--data-dir``, the publisher keys the controller handed out at enrollment (``DATA_DIR/credential.json``);
  both sets together when both are given.
- ``verify=False`` (``--no-verify``) skips the signature only: an archive is still unpacked with the same
  safety and digest checks, a directory's artifacts are still checked against bundle.json. The caller labels
  such a run UNVERIFIED; ``OpenedBundle.key_id`` is None for it.
- An archive is unpacked into a temporary directory that is removed when the block ends.
- ``BundleInputError`` is what the commands turn into exit code 2: the message says what to pass instead.
  Everything wrong with the bundle itself is the contract's ``ContractError`` (tampered, unsigned, malformed).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.agent.enroll import load_credential
from edge_runtime.agent.errors import AgentError
from edgefleet.contract.bundle import BundleManifest, read_manifest
from edgefleet.contract.bundle_archive import ARCHIVE_SUFFIX, unpack_bundle, unpack_unverified_bundle, verify_bundle
from edgefleet.contract.bundle_files import check_bundle_files
from edgefleet.contract.signing import TrustedKeys

__all__ = ["BundleInputError", "OpenedBundle", "open_bundle", "trusted_keys"]


class BundleInputError(Exception):
    """The bundle or the arguments naming it cannot be used; the message says what to pass instead."""


@dataclass(frozen=True)
class OpenedBundle:
    """A bundle directory ready to load, its manifest, and the publisher key that verified it (None: the
    signature was not checked, ``--no-verify``)."""

    path: Path
    manifest: BundleManifest
    key_id: str | None

    @property
    def verified(self) -> bool:
        return self.key_id is not None


def trusted_keys(trusted: Path | None, data_dir: Path | None) -> TrustedKeys | None:
    """The publisher keys of ``--trusted DIR`` and of an enrolled device's ``--data-dir``, merged; None when
    neither gives any."""
    keys: TrustedKeys | None = TrustedKeys.from_dir(trusted) if trusted is not None else None
    if data_dir is not None:
        try:
            cred = load_credential(data_dir)
        except AgentError as exc:
            raise BundleInputError(str(exc)) from None
        if cred is not None and cred.trusted_keys:
            enrolled = TrustedKeys.from_pem_map(cred.trusted_keys)
            keys = enrolled if keys is None else keys.merged(enrolled)
    return keys


@contextlib.contextmanager
def open_bundle(
    bundle: Path, trusted: TrustedKeys | None, *, verify: bool, prefix: str = "edgefleet-bundle-"
) -> Iterator[OpenedBundle]:
    """The bundle directory and its manifest, verified unless ``verify`` is False; an archive is unpacked
    into a temporary directory (named ``prefix…``) that lives as long as the block."""
    if verify and trusted is None:
        raise BundleInputError(
            f"{bundle}: no trusted publisher keys to verify it with; pass --trusted DIR (<key_id>.pub.pem files), "
            "--data-dir of an enrolled device, or --no-verify for a local experiment"
        )
    if bundle.is_dir():
        if verify:
            assert trusted is not None
            verified = verify_bundle(bundle, trusted)
            yield OpenedBundle(verified.path, verified.manifest, verified.key_id)
        else:
            manifest = read_manifest(bundle)
            check_bundle_files(bundle, manifest)
            yield OpenedBundle(bundle, manifest, None)
        return
    if not bundle.is_file():
        raise BundleInputError(f"bundle {bundle}: no such bundle directory or {ARCHIVE_SUFFIX} archive")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        dest = Path(tmp) / "bundle"
        if verify:
            assert trusted is not None
            verified = unpack_bundle(bundle, dest, trusted)
            yield OpenedBundle(verified.path, verified.manifest, verified.key_id)
        else:
            yield OpenedBundle(dest, unpack_unverified_bundle(bundle, dest), None)
