"""The real ``ArtifactFetcher``: artifacts over ``DeviceService.FetchBlob``, resumed from the partial length.

- Each call appends to the partial file from ``resume_from`` and asks the controller for that offset, so a
  drop (or a runtime restart) costs at most the chunk that was in flight: bytes fetched again are bounded by
  one chunk per reset. A chunk is written only whole and at the offset expected, then flushed.
- Inside one ``fetch`` the fetcher reconnects by itself while downloads make progress: a link that resets
  every few megabytes still completes. It gives up (``FetchError``, which the update machine counts as a
  failed download attempt) after ``max_stalls`` consecutive attempts that brought no new byte, or at once on
  a non-transient refusal (NOT_FOUND: the bundle is no longer desired; UNAUTHENTICATED).
- The sha256 is computed while streaming (the prefix already on disk is hashed first); a mismatch is logged
  here, and the driver's verification step rejects the artifact with the numbers.
- Small content the device already holds in memory (``bundle.json`` and ``bundle.sig`` come inside the
  ``DesiredState``) is served from ``inline`` without a network call.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import grpc
import structlog

from edge_runtime.agent.client import blocking_channel, is_transient, rpc_code
from edge_runtime.agent.retry import Backoff
from edge_runtime.update.errors import FetchError
from edgefleet.contract.digests import DIGEST_PREFIX
from edgefleet.v1 import device_pb2, device_pb2_grpc

log = structlog.get_logger(__name__)

DEFAULT_CHUNK_BYTES = 1 << 20
# A stream is given this long plus the time its bytes need at MIN_RATE before its deadline cuts it.
_BASE_DEADLINE_S = 30.0
STALL_MULTIPLIER = 0.2  # waits after a stall start at 0.4 s and double (capped by max_backoff_s)
_MIN_RATE_BPS = 64 * 1024


@dataclass
class FetchCounters:
    """What the fetcher did since start: for reports, logs and the resume-cost test."""

    connections: int = 0
    bytes_received: int = 0
    bytes_written: int = 0
    chunks_discarded: int = 0
    resumes: int = 0
    inline_bytes: int = 0


def _sha256_prefix(path: Path, length: int) -> hashlib._Hash:
    h = hashlib.sha256()
    remaining = length
    with path.open("rb") as f:
        while remaining > 0:
            block = f.read(min(remaining, 1 << 20))
            if not block:
                break
            h.update(block)
            remaining -= len(block)
    return h


class BlobFetcher:
    """Fetches content-addressed blobs from the controller; thread-confined to the update worker."""

    def __init__(
        self,
        address: str,
        metadata: Callable[[], tuple[tuple[str, str], ...]],
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_stalls: int = 6,
        max_backoff_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
        self._address = address
        self._metadata = metadata
        self._chunk = chunk_bytes
        self._max_stalls = max_stalls
        self._backoff = Backoff(multiplier=STALL_MULTIPLIER, max_s=max_backoff_s)
        self._sleep = sleep
        self._channel: grpc.Channel | None = None
        self._inline: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.counters = FetchCounters()

    def add_inline(self, digest: str, content: bytes) -> None:
        """Serve ``digest`` from memory (the manifest and signature carried by the desired state)."""
        with self._lock:
            self._inline[digest] = content

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _stub(self) -> device_pb2_grpc.DeviceServiceStub:
        if self._channel is None:
            self._channel = blocking_channel(self._address)
        return device_pb2_grpc.DeviceServiceStub(self._channel)

    def fetch(self, digest: str, dest_path: Path, expected_size: int, resume_from: int) -> None:
        with self._lock:
            inline = self._inline.get(digest)
        if inline is not None:
            self._write_inline(digest, inline, dest_path, expected_size, resume_from)
            return
        have = resume_from if dest_path.exists() else 0
        if dest_path.exists() and dest_path.stat().st_size != have:
            # The caller's view and the file disagree: trust the file, it is what we append to.
            have = dest_path.stat().st_size
        hasher = _sha256_prefix(dest_path, have) if have else hashlib.sha256()
        if have:
            self.counters.resumes += 1
            log.info("agent.fetch_resumed", digest=digest, offset=have, size=expected_size)
        stalls = 0
        with dest_path.open("ab") as out:
            while have < expected_size:
                before = have
                try:
                    have = self._stream(digest, out, hasher, have, expected_size)
                except grpc.RpcError as exc:
                    # Whole chunks written before the drop count: resume right after them.
                    out.flush()
                    have = out.tell()
                    if not is_transient(exc):
                        code = rpc_code(exc)
                        raise FetchError(
                            f"controller refused {digest} at offset {have}: "
                            f"{code.name if code else 'error'}: {exc.details() if hasattr(exc, 'details') else exc}"
                        ) from None
                    stalls = 0 if have > before else stalls + 1
                    if stalls >= self._max_stalls:
                        raise FetchError(
                            f"no progress on {digest} at offset {have} of {expected_size} after {stalls} "
                            f"attempts; last error {rpc_code(exc)}: "
                            f"{exc.details() if hasattr(exc, 'details') else exc}"
                        ) from None
                    # Full jitter, growing only while nothing arrives: a resetting link resumes at once.
                    delay = self._backoff.delay(stalls + 1) if stalls else 0.05
                    log.info(
                        "agent.fetch_interrupted",
                        digest=digest,
                        offset=have,
                        size=expected_size,
                        code=str(rpc_code(exc)),
                        retry_in_s=round(delay, 3),
                    )
                    self._sleep(delay)
                    continue
                if have == before and have < expected_size:
                    raise FetchError(
                        f"controller ended the stream of {digest} at {have} of {expected_size} bytes; "
                        "the blob is shorter than the bundle declares"
                    )
            out.flush()
        actual = DIGEST_PREFIX + hasher.hexdigest()
        if actual != digest:
            log.warning("agent.fetch_digest_mismatch", digest=digest, actual=actual, path=str(dest_path))
        else:
            log.info("agent.fetch_completed", digest=digest, size=expected_size)

    def _stream(self, digest: str, out: BinaryIO, hasher: hashlib._Hash, offset: int, expected_size: int) -> int:
        self.counters.connections += 1
        remaining = expected_size - offset
        deadline = _BASE_DEADLINE_S + remaining / _MIN_RATE_BPS
        request = device_pb2.FetchBlobRequest(digest=digest, offset=offset, chunk_bytes=self._chunk)
        stream = self._stub().FetchBlob(request, metadata=self._metadata(), timeout=deadline)
        try:
            for chunk in stream:
                self.counters.bytes_received += len(chunk.data)
                if chunk.offset != offset:
                    # Not the continuation of our file: drop it and ask again from what we hold.
                    self.counters.chunks_discarded += 1
                    log.warning("agent.fetch_offset_mismatch", digest=digest, expected=offset, got=chunk.offset)
                    return offset
                if chunk.total_size and chunk.total_size != expected_size:
                    raise FetchError(
                        f"controller says {digest} is {chunk.total_size} bytes, the bundle declares "
                        f"{expected_size}; the bundle and the blob store disagree"
                    )
                if offset + len(chunk.data) > expected_size:
                    raise FetchError(
                        f"controller sent {offset + len(chunk.data)} bytes of {digest}, more than the "
                        f"declared {expected_size}"
                    )
                out.write(chunk.data)
                out.flush()
                hasher.update(chunk.data)
                offset += len(chunk.data)
                self.counters.bytes_written += len(chunk.data)
        finally:
            stream.cancel()
        return offset

    def _write_inline(self, digest: str, content: bytes, dest: Path, expected_size: int, resume_from: int) -> None:
        if len(content) != expected_size:
            raise FetchError(f"inline content of {digest} is {len(content)} bytes, expected {expected_size}")
        start = resume_from if dest.exists() else 0
        with dest.open("ab") as out:
            out.write(content[start:])
        self.counters.inline_bytes += len(content) - start
