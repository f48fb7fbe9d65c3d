"""The content-addressed blob directory: ``<root>/sha256/<first two hex>/<64 hex>``.

Writers stream into a temp file under ``<root>/tmp/`` while hashing, then fsync, rename into place and fsync
the directory, so a blob is either absent or complete and durable — never half-written under its name. A
blob already present is not rewritten (dedupe): the temp file is dropped. Digest strings are validated
before they touch the filesystem, so a caller-supplied digest can never become a path of its choosing.

Blobs are immutable; deletion is the garbage collector's business (the database says what is unreferenced).
One found corrupt on disk (``hash_blob`` disagrees with its name) is moved aside by ``quarantine``
(``store.blob_quarantine``); ``stat_key`` is what a cached "verified" mark is valid for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from edgefleet.contract.digests import DIGEST_PREFIX, is_digest
from edgefleet.contract.durable import fsync_dir
from edgefleet_controller.store.blob_quarantine import BlobQuarantine, QuarantineRecord
from edgefleet_controller.store.errors import (
    BlobDigestMismatch,
    BlobTooLarge,
    InvalidDigest,
    NotFound,
    OffsetOutOfRange,
    StoreError,
)

#: What a blob's file is, as far as ``stat`` can tell: (inode, size, mtime ns, ctime ns). Any write, rename
#: over or chmod of the file changes it, so a verification is valid while it is unchanged.
StatKey = tuple[int, int, int, int]
_HASH_READ = 1 << 20


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def stat_key_of(file: BinaryIO) -> StatKey:
    """The ``StatKey`` of an open blob file."""
    return _stat_key(os.fstat(file.fileno()))


def check_digest(value: object) -> str:
    """``value`` if it is ``sha256:`` + 64 lowercase hex, else ``InvalidDigest``."""
    if isinstance(value, str) and is_digest(value):
        return value
    raise InvalidDigest(value)


class BlobWriter(contextlib.AbstractContextManager["BlobWriter", None]):
    """Streams one blob into a temp file; ``seal`` checks its digest and makes the temp file durable (still
    invisible: a push stages its artifacts so), ``commit`` seals and makes it visible, ``abort`` (or leaving
    a ``with`` block without commit) removes the temp file."""

    def __init__(self, store: BlobStore, max_size: int | None) -> None:
        self._store = store
        self._max_size = max_size
        self._hash = hashlib.sha256()
        self._size = 0
        self._sealed: str | None = None
        fd, name = tempfile.mkstemp(prefix="blob-", suffix=".part", dir=store.tmp_dir)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self.temp_path = Path(name)

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise StoreError("blob writer is closed (already committed or aborted); open a new writer")
        if self._max_size is not None and self._size + len(chunk) > self._max_size:
            self.abort()
            raise BlobTooLarge(self._max_size)
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def seal(self, expected_digest: str | None = None) -> tuple[str, int]:
        """Check the digest, fsync the temp file and return ``(digest, size)``; the blob is not visible yet.

        A mismatch with ``expected_digest`` aborts the writer and raises ``BlobDigestMismatch``.
        """
        if expected_digest is not None:
            check_digest(expected_digest)
        if self._sealed is not None:
            if expected_digest is not None and expected_digest != self._sealed:
                raise BlobDigestMismatch(expected_digest, self._sealed)
            return self._sealed, self._size
        file = self._file
        if file is None:
            raise StoreError("blob writer is closed (already committed or aborted); open a new writer")
        digest = DIGEST_PREFIX + self._hash.hexdigest()
        if expected_digest is not None and digest != expected_digest:
            self.abort()
            raise BlobDigestMismatch(expected_digest, digest)
        try:
            file.flush()
            os.fsync(file.fileno())
            file.close()
            self._file = None
            # blobs are immutable; read-only makes an accidental in-place edit fail loudly
            os.chmod(self.temp_path, 0o444)
        except BaseException:
            self.abort()
            raise
        self._sealed = digest
        return digest, self._size

    def commit(self, expected_digest: str | None = None) -> tuple[str, int]:
        """Seal (see ``seal``), then make the blob durable under its digest and return ``(digest, size)``."""
        digest, size = self.seal(expected_digest)
        try:
            final = self._store.path(digest)
            if final.exists():
                self.abort()
                return digest, size
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.temp_path, final)
            fsync_dir(final.parent)
        except BaseException:
            self.abort()
            raise
        return digest, size

    def abort(self) -> None:
        """Drop the temp file. Safe to call more than once, and after commit."""
        self._sealed = None
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.temp_path.unlink()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


class BlobStore:
    """Blobs under ``root``. Several processes may share ``root``: every step is an atomic rename."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self._objects = self.root / "sha256"
        self.quarantined = BlobQuarantine(self.root / "quarantine")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._objects.mkdir(parents=True, exist_ok=True)

    def open_writer(self, max_size: int | None = None) -> BlobWriter:
        return BlobWriter(self, max_size)

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> tuple[str, int]:
        with self.open_writer() as writer:
            writer.write(data)
            return writer.commit(expected_digest)

    def path(self, digest: str) -> Path:
        """Where blob ``digest`` lives (or would live); the digest is validated first."""
        hex_part = check_digest(digest)[len(DIGEST_PREFIX) :]
        return self._objects / hex_part[:2] / hex_part

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound("blob", digest, "upload it first") from None

    def open_range(self, digest: str, offset: int = 0) -> BinaryIO:
        """The blob opened for reading, positioned at ``offset`` (``offset == size`` reads nothing)."""
        path = self.path(digest)
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise NotFound("blob", digest, "upload it first") from None
        size = os.fstat(file.fileno()).st_size
        if offset < 0 or offset > size:
            file.close()
            raise OffsetOutOfRange(digest, offset, size)
        file.seek(offset)
        return file

    def stat_key(self, digest: str) -> StatKey | None:
        """The blob file's ``StatKey``, or None when it is absent."""
        try:
            return _stat_key(self.path(digest).stat())
        except FileNotFoundError:
            return None

    def hash_blob(self, digest: str) -> tuple[str, StatKey]:
        """The digest the stored bytes of ``digest`` hash to, and the ``StatKey`` of the file that was read
        (``NotFound`` when absent)."""
        with self.open_range(digest) as file:
            key = stat_key_of(file)
            h = hashlib.sha256()
            while chunk := file.read(_HASH_READ):
                h.update(chunk)
        return DIGEST_PREFIX + h.hexdigest(), key

    def quarantine(
        self, digest: str, actual: str, detected_by: str, at: datetime, hashed: StatKey
    ) -> QuarantineRecord | None:
        """Move the corrupt blob ``digest`` aside: the file ``hashed`` (``hash_blob``) whose bytes hash to
        ``actual``. None when that file is no longer there: gone, or replaced meanwhile (good bytes pushed
        again while it was hashed) — a replacement is never moved aside for what another file held."""
        path = self.path(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if _stat_key(st) != hashed:
            return None
        size = st.st_size
        return self.quarantined.move_aside(path, QuarantineRecord(digest, actual, size, detected_by, at, ""))

    def delete(self, digest: str) -> bool:
        """Remove blob ``digest``; False when it was not there."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest (for garbage collection); stray files are skipped."""
        for shard in sorted(self._objects.iterdir()):
            if not shard.is_dir():
                continue
            for entry in sorted(shard.iterdir()):
                candidate = DIGEST_PREFIX + entry.name
                if is_digest(candidate) and entry.name[:2] == shard.name:
                    yield candidate

    def remove_stale_temp(self, older_than: float) -> int:
        """Remove temp files last modified before the epoch time ``older_than`` (left by crashed writers).

        Takes the cut-off rather than reading the clock; returns how many were removed.
        """
        removed = 0
        for entry in self.tmp_dir.iterdir():
            try:
                if entry.is_file() and entry.stat().st_mtime < older_than:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
