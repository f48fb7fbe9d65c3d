"""Bundle slots on the device's disk: verified bundles read-only, incoming downloads, garbage collection.

Layout under ``DATA_DIR``::

    bundles/<hex>/...    verified bundles only; files 0444, directories 0555. A directory appears here
                         only by one atomic rename from incoming/ after verification, so no partial or
                         unverified file is ever under bundles/.
    incoming/<hex>/...   downloads in progress; a partial file keeps its length so the fetch resumes there.
    trash/<token>        slots being deleted: renamed here first (atomic), then removed, so a crash in the
                         middle of a delete never leaves a half-deleted slot under bundles/.

``<hex>`` is the 64-hex part of the bundle digest ``sha256:<hex>`` (the sha256 of its bundle.json).
"""

from __future__ import annotations

import builtins
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from edge_runtime.update.errors import (
    DiskSpaceError,
    InvalidDigestError,
    SlotNotFoundError,
    UnsafeArtifactNameError,
)
from edge_runtime.update.events import format_bytes
from edgefleet.contract.digests import is_digest
from edgefleet.contract.durable import fsync_dir
from edgefleet.contract.shown import shown

__all__ = ["BundleSlots", "digest_hex", "format_bytes", "safe_relative"]

_FILE_MODE = 0o444
_DIR_MODE = 0o555
_WRITABLE_DIR_MODE = 0o755


def digest_hex(digest: str) -> str:
    """The hex part of ``sha256:<hex>``; raises ``InvalidDigestError`` for anything else."""
    if not is_digest(digest):
        raise InvalidDigestError(f"bundle digest must be sha256:<64 lowercase hex>, got {shown(digest)}")
    return digest.removeprefix("sha256:")


def safe_relative(name: str) -> PurePosixPath:
    """``name`` as a path that stays inside its slot; raises ``UnsafeArtifactNameError`` otherwise."""
    path = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise UnsafeArtifactNameError(
            f"artifact name {shown(name)} must be a relative path without '.', '..' or empty parts"
        )
    return path


def _make_writable(root: Path) -> None:
    """Undo the read-only modes so the tree can be deleted."""
    if not root.exists():
        return
    os.chmod(root, _WRITABLE_DIR_MODE)
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), _WRITABLE_DIR_MODE)


class BundleSlots:
    """The bundle directories of one device under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.bundles_dir = self.data_dir / "bundles"
        self.incoming_dir = self.data_dir / "incoming"
        self.trash_dir = self.data_dir / "trash"
        for d in (self.bundles_dir, self.incoming_dir, self.trash_dir):
            d.mkdir(parents=True, exist_ok=True)

    # --- incoming ---------------------------------------------------------------------------------------

    def incoming_path(self, digest: str, name: str) -> Path:
        """Where artifact ``name`` of bundle ``digest`` is downloaded to (parent directories created)."""
        path = self.incoming_dir / digest_hex(digest) / safe_relative(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def partial_size(self, digest: str, name: str) -> int:
        """Bytes of ``name`` already downloaded (0 when absent): where a resumed fetch starts."""
        path = self.incoming_dir / digest_hex(digest) / safe_relative(name)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def has_incoming(self, digest: str) -> bool:
        return (self.incoming_dir / digest_hex(digest)).is_dir()

    def incoming_root(self, digest: str) -> Path:
        return self.incoming_dir / digest_hex(digest)

    def discard_incoming(self, digest: str) -> bool:
        """Drop the download of ``digest``, partial files included. True when something was removed."""
        return self._delete(self.incoming_dir / digest_hex(digest))

    def promote_incoming(self, digest: str) -> Path:
        """Make the verified download of ``digest`` a read-only slot, atomically; returns the slot path.

        Call only after verification. Files are flushed and made read-only before the one rename, so after a
        crash the slot is either absent or complete.
        """
        hex_digest = digest_hex(digest)
        source = self.incoming_dir / hex_digest
        target = self.bundles_dir / hex_digest
        if target.is_dir():
            # Content-addressed: an existing slot holds the same bytes; the download is redundant.
            self._delete(source)
            return target
        if not source.is_dir():
            raise SlotNotFoundError(
                f"no download of {digest} in {self.incoming_dir}; download and verify it before promoting"
            )
        for dirpath, dirnames, filenames in os.walk(source, topdown=False):
            for f in filenames:
                file_path = os.path.join(dirpath, f)
                fd = os.open(file_path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.chmod(file_path, _FILE_MODE)
            for d in dirnames:
                sub = os.path.join(dirpath, d)
                fsync_dir(Path(sub))
                os.chmod(sub, _DIR_MODE)
        fsync_dir(source)
        # The moved directory itself must stay writable until after the rename: rename(2) updates its '..'.
        os.rename(source, target)
        os.chmod(target, _DIR_MODE)
        # newest() orders slots by promotion time; an explicit ns stamp beats coarse filesystem clocks.
        stamp = time.time_ns()
        os.utime(target, ns=(stamp, stamp))
        fsync_dir(self.bundles_dir)
        fsync_dir(self.incoming_dir)
        return target

    # --- verified slots -----------------------------------------------------------------------------------

    def list(self) -> builtins.list[str]:
        """Digests of every verified slot, sorted."""
        return sorted(
            f"sha256:{p.name}" for p in self.bundles_dir.iterdir() if p.is_dir() and is_digest(f"sha256:{p.name}")
        )

    def has(self, digest: str) -> bool:
        return (self.bundles_dir / digest_hex(digest)).is_dir()

    def path_for(self, digest: str) -> Path:
        """The read-only directory of verified bundle ``digest``."""
        path = self.bundles_dir / digest_hex(digest)
        if not path.is_dir():
            raise SlotNotFoundError(
                f"bundle {digest} has no verified slot under {self.bundles_dir}; it must be downloaded again"
            )
        return path

    def newest(self) -> str | None:
        """The most recently promoted verified slot, or None when there is none."""
        slots = [(self.bundles_dir / digest_hex(d)).stat().st_mtime_ns for d in self.list()]
        if not slots:
            return None
        return max(zip(slots, self.list(), strict=True))[1]

    def remove(self, digest: str) -> bool:
        """Delete the verified slot of ``digest``. True when something was removed."""
        return self._delete(self.bundles_dir / digest_hex(digest))

    def collect_garbage(self, keep: Iterable[str | None]) -> builtins.list[str]:
        """Remove every slot and download not in ``keep``, and trash/ leftovers; returns removed digests."""
        kept = {digest_hex(d) for d in keep if d is not None}
        removed: builtins.list[str] = []
        for parent in (self.bundles_dir, self.incoming_dir):
            for entry in parent.iterdir():
                if entry.name in kept:
                    continue
                if self._delete(entry) and is_digest(f"sha256:{entry.name}"):
                    removed.append(f"sha256:{entry.name}")
        for entry in self.trash_dir.iterdir():
            self._purge(entry)
        return sorted(set(removed))

    # --- disk -------------------------------------------------------------------------------------------

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    def check_disk(self, needed_bytes: int, margin_bytes: int) -> None:
        """Raise ``DiskSpaceError`` unless ``needed_bytes + margin_bytes`` fit on the data disk."""
        free = self.free_bytes()
        if needed_bytes + margin_bytes > free:
            raise DiskSpaceError(
                f"not enough disk for the download: needs {format_bytes(needed_bytes)} + "
                f"{format_bytes(margin_bytes)} margin, {format_bytes(free)} free on {self.data_dir}; "
                "free space on the device or lower the margin",
                needed=needed_bytes,
                margin=margin_bytes,
                free=free,
                path=str(self.data_dir),
            )

    # --- deletion -----------------------------------------------------------------------------------------

    def _delete(self, path: Path) -> bool:
        if not path.exists() and not path.is_symlink():
            return False
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, _WRITABLE_DIR_MODE)  # rename(2) of a directory updates its '..'
        tomb = self.trash_dir / f"{path.name}.{uuid.uuid4().hex}"
        os.rename(path, tomb)
        fsync_dir(path.parent)
        self._purge(tomb)
        return True

    def _purge(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            _make_writable(path)
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
