"""The content-addressed blob directory: ``<root>/sha256/<first two hex>/<64 hex>``.

Writers stream into a temp file under ``<root>/tmp/`` while hashing, then fsync, rename into place and fsync
the directory, so a blob is either absent or complete and durable — never half-written under its name. A
blob already present is not rewritten (dedupe): the temp file is dropped. Digest strings are validated
before they touch the filesystem, so a caller-supplied digest can never become a path of its choosing.

Blobs are immutable; deletion is the garbage collector's business (the database says what is unreferenced).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from edgefleet.contract.digests import DIGEST_PREFIX, is_digest
from edgefleet.contract.durable import fsync_dir
from edgefleet_controller.store.errors import (
    BlobDigestMismatch,
    BlobTooLarge,
    InvalidDigest,
    NotFound,
    OffsetOutOfRange,
    StoreError,
)


def check_digest(value: object) -> str:
    """``value`` if it is ``sha256:`` + 64 lowercase hex, else ``InvalidDigest``."""
    if isinstance(value, str) and is_digest(value):
        return value
    raise InvalidDigest(value)


class BlobWriter(contextlib.AbstractContextManager["BlobWriter", None]):
    """Streams one blob into a temp file; ``commit`` makes it visible, ``abort`` (or leaving a ``with``
    block without commit) removes the temp file."""

    def __init__(self, store: BlobStore, max_size: int | None) -> None:
        self._store = store
        self._max_size = max_size
        self._hash = hashlib.sha256()
        self._size = 0
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

    def commit(self, expected_digest: str | None = None) -> tuple[str, int]:
        """Make the blob durable under its digest and return ``(digest, size)``.

        A mismatch with ``expected_digest`` aborts the writer and raises ``BlobDigestMismatch``.
        """
        if expected_digest is not None:
            check_digest(expected_digest)
        file = self._file
        if file is None:
            raise StoreError("blob writer is closed (already committed or aborted); open a new writer")
        digest = DIGEST_PREFIX + self._hash.hexdigest()
        if expected_digest is not None and digest != expected_digest:
            self.abort()
            raise BlobDigestMismatch(expected_digest, digest)
        try:
            final = self._store.path(digest)
            if final.exists():
                self.abort()
                return digest, self._size
            file.flush()
            os.fsync(file.fileno())
            file.close()
            self._file = None
            final.parent.mkdir(parents=True, exist_ok=True)
            # blobs are immutable; read-only makes an accidental in-place edit fail loudly
            os.chmod(self.temp_path, 0o444)
            os.replace(self.temp_path, final)
            fsync_dir(final.parent)
        except BaseException:
            self.abort()
            raise
        return digest, self._size

    def abort(self) -> None:
        """Drop the temp file. Safe to call more than once, and after commit."""
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
