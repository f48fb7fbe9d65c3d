"""The files of a bundle directory on disk: hashing them, listing them for upload, and checking that a
directory holds exactly what its bundle.json lists (no more, no less, every size and sha256 right).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from edgefleet.contract.bundle import BundleManifest, read_manifest
from edgefleet.contract.bundle_layout import ARTIFACTS_DIR, MANIFEST_NAME, SIGNATURE_NAME
from edgefleet.contract.errors import DigestMismatchError, MissingArtifactError, UnlistedFileError

_HASH_CHUNK = 1024 * 1024


def sha256_file(path: Path) -> tuple[str, int]:
    """Hex sha256 and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class BundleFile(NamedTuple):
    """One file of a bundle directory, for streaming uploads."""

    path: str
    sha256: str
    size: int

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


def iter_bundle_files(bundle_dir: Path | str) -> Iterator[BundleFile]:
    """Yield bundle.json, bundle.sig (when present), then every artifact in path order, hashed from disk."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    names = [MANIFEST_NAME]
    if (root / SIGNATURE_NAME).is_file():
        names.append(SIGNATURE_NAME)
    names.extend(sorted(a.path for a in manifest.artifacts.values()))
    for name in names:
        path = root / name
        if not path.is_file():
            raise MissingArtifactError(f"{path}: listed in {MANIFEST_NAME} but missing")
        sha, size = sha256_file(path)
        yield BundleFile(name, sha, size)


def check_bundle_files(bundle_dir: Path | str, manifest: BundleManifest) -> None:
    """Check that the directory holds exactly the manifest's files, each with the recorded size and sha256.

    Raises ``UnlistedFileError`` for anything extra (symlinks included), ``MissingArtifactError`` for an
    absent artifact, ``DigestMismatchError`` for a wrong size or hash.
    """
    root = Path(bundle_dir)
    expected = {a.path for a in manifest.artifacts.values()} | {MANIFEST_NAME, SIGNATURE_NAME}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or (not path.is_dir() and rel not in expected):
            raise UnlistedFileError(
                f"{root}: holds '{rel}', which {MANIFEST_NAME} does not list; bundles are immutable, "
                "remove it or rebuild the bundle"
            )
        if path.is_dir() and rel != ARTIFACTS_DIR:
            raise UnlistedFileError(f"{root}: holds directory '{rel}', which {MANIFEST_NAME} does not list")
    for role, ref in sorted(manifest.artifacts.items()):
        path = root / ref.path
        if not path.is_file():
            raise MissingArtifactError(f"{root}: artifact '{role}' ({ref.path}) is missing")
        size = path.stat().st_size
        if size != ref.size:
            raise DigestMismatchError(
                f"{root}: artifact '{role}' ({ref.path}) is {size} bytes, {MANIFEST_NAME} says {ref.size}"
            )
        sha, _ = sha256_file(path)
        if sha != ref.sha256:
            raise DigestMismatchError(
                f"{root}: artifact '{role}' ({ref.path}) has sha256:{sha}, {MANIFEST_NAME} says "
                f"{ref.digest}; the file was altered or corrupted, fetch the bundle again"
            )
