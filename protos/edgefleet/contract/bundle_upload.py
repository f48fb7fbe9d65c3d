"""Reading an ``.efb`` archive as the stream ``FleetService.PushBundle`` sends: the exact bundle.json and
bundle.sig bytes first, then each listed artifact's bytes in bounded chunks, without unpacking to disk.

The controller re-checks everything (digests, sizes, signature); this side only refuses what it can see
is wrong before sending (an unsigned bundle, a member that is not a listed artifact, sizes over the
ceilings of ``bundle_limits``: bundle.json's declared sizes, and each member's tar header before it is read).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_archive import (
    _check_member_kind,
    _next_member,
    _open_archive,
    _read_head,
    check_member_size,
)
from edgefleet.contract.bundle_limits import DEFAULT_LIMITS, check_declared_sizes
from edgefleet.contract.errors import SignatureError, UnlistedFileError, UnsafeArchiveError
from edgefleet.contract.request_bounds import MAX_PUSH_CHUNK_BYTES


@dataclass(frozen=True)
class BundleUpload:
    """A signed ``.efb`` archive read for upload: the exact bundle.json (``manifest``, parsed as
    ``manifest_obj``) and bundle.sig bytes, and its artifacts streamed by ``chunks``."""

    path: Path
    manifest_obj: BundleManifest
    manifest: bytes
    signature: bytes

    def chunks(self, chunk_bytes: int = MAX_PUSH_CHUNK_BYTES) -> Iterator[tuple[str, bytes]]:
        """(artifact digest, bytes) pairs in archive order, each at most ``chunk_bytes`` long (by default the
        largest chunk the controller accepts)."""
        by_path = {a.path: a for a in self.manifest_obj.artifacts.values()}
        with _open_archive(self.path) as tar:
            _, _, _, member = _read_head(tar, self.path)
            while member is not None:
                _check_member_kind(member, self.path)
                ref = by_path.get(member.name)
                if ref is None:
                    raise UnlistedFileError(f"{self.path}: member '{member.name}' is not listed in bundle.json")
                check_member_size(member, ref, self.path, DEFAULT_LIMITS)
                fh = tar.extractfile(member)
                if fh is None:
                    raise UnsafeArchiveError(f"{self.path}: member '{member.name}' has no data")
                try:
                    while data := fh.read(chunk_bytes):
                        yield ref.digest, data
                except (tarfile.TarError, EOFError) as exc:
                    raise UnsafeArchiveError(f"{self.path}: member '{member.name}' is truncated ({exc})") from None
                member = _next_member(tar, self.path)

    @property
    def name(self) -> str:
        return self.manifest_obj.name

    @property
    def version(self) -> str:
        return self.manifest_obj.version

    @property
    def total_bytes(self) -> int:
        return sum(a.size for a in self.manifest_obj.artifacts.values())


def read_archive_for_upload(archive_path: Path | str) -> BundleUpload:
    archive = Path(archive_path)
    with _open_archive(archive) as tar:
        manifest_bytes, manifest, sig, _ = _read_head(tar, archive)
    if sig is None:
        raise SignatureError(f"{archive}: bundle is unsigned; sign it with fleetctl bundle sign --key KEY first")
    check_declared_sizes(manifest, source=str(archive))
    return BundleUpload(archive, manifest, manifest_bytes, sig)
