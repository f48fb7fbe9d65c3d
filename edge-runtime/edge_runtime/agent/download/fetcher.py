"""The real ``ArtifactFetcher``: artifacts over ``DeviceService.FetchBlob``, resumed from the partial length.

- Each stream appends to the partial file and asks the controller for the offset it holds, so a drop (or a
  runtime restart) costs at most the chunk in flight. A chunk is written only whole, at the offset
  expected, then flushed: bytes are kept as they arrive, the sha256 is checked at the end.
- The chunk size adapts to the link (``chunking.ChunkSizer``): down on resets that lost the chunk in
  flight, back up after sustained good transfer, never above ``--chunk-bytes``.
- A watchdog thread cancels a stream that delivers no chunk for its idle limit (``stall_timeout_s``, longer
  when the measured rate says a chunk needs longer, doubled while stalls repeat at the smallest chunk), and a
  new connection that does not complete its handshake within ``connect_timeout_s`` is dropped: a blackholed
  link costs seconds, not a 500 s deadline. Every loss closes the channel, so the next stream gets a fresh
  TCP connection instead of waiting for the old one's keepalive.
- Link trouble never fails the fetch: transient errors, resets and stalls are retried forever, at once while
  connections bring bytes, with exponential backoff and full jitter (``retry.Backoff``, capped) while they
  do not. Only a non-transient refusal (NOT_FOUND: the bundle is no longer desired; UNAUTHENTICATED) or the
  controller disagreeing with the bundle about the size raises ``FetchError``, which the update machine
  counts as a failed download attempt. A sha256 mismatch at the end is logged here; the driver's
  verification rejects the artifact with the numbers.
- The fetch gives up promptly with ``FetchInterrupted`` (counted as nothing, the bytes kept) when its
  ``cancel`` event is set (the driver: a new desired bundle, a stop) or the fetcher is closed.
- ``progress`` (``DownloadProgress``) says what the artifact in flight has done, for the reported state.
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
from edge_runtime.agent.download.chunking import ChunkSizer
from edge_runtime.agent.download.progress import DownloadProgress
from edge_runtime.agent.retry import Backoff
from edge_runtime.update.errors import FetchError, FetchInterrupted
from edgefleet.contract.digests import DIGEST_PREFIX
from edgefleet.v1 import device_pb2, device_pb2_grpc

log = structlog.get_logger(__name__)

DEFAULT_CHUNK_BYTES = 1 << 20
STALL_TIMEOUT_S = 4.0
CONNECT_TIMEOUT_S = 2.0
# Waits while connections bring nothing: uniform in [0, min(cap, 0.25 s * 2**(n-1))].
RETRY_BACKOFF = Backoff(multiplier=0.25, max_s=15.0)
# A stream is given this long plus the time its bytes need at MIN_RATE before its deadline cuts it (a backstop:
# the watchdog notices a dead link long before).
_BASE_DEADLINE_S = 30.0
_MIN_RATE_BPS = 64 * 1024
_WATCH_TICK_S = 0.1
#: grpc's channel-ready poller's step (grpc/_channel.py _poll_connectivity).
_READY_POLL_S = 0.2
_MAX_TIMEOUT_DOUBLINGS = 5
# Codes of a connection that died (the chunk in flight is lost); others (overload) keep the chunk size.
_LINK_LOST = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)


@dataclass
class FetchCounters:
    """What the fetcher did since start: for status.json, logs and the resume-cost tests."""

    connections: int = 0
    bytes_received: int = 0
    bytes_written: int = 0
    chunks_discarded: int = 0
    resumes: int = 0
    inline_bytes: int = 0
    resets: int = 0
    stalls: int = 0
    connect_timeouts: int = 0
    interrupted: int = 0
    chunk_bytes: int = 0


@dataclass
class _Attempt:
    """How one stream ended: where the file stands, what that connection kept, and why it stopped."""

    offset: int
    delivered: int = 0
    error: grpc.RpcError | None = None
    stalled: bool = False
    unconnected: bool = False
    limit_s: float = 0.0  # the idle (or handshake) limit this attempt ran under


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


def _details(exc: grpc.RpcError) -> str:
    code = rpc_code(exc)
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'error'}: {details}"


class _Watchdog:
    """Cancels ``call`` when no chunk was ``fed`` for ``idle_s`` (``stalled``) or ``interrupted()`` turns true."""

    def __init__(self, call: grpc.RpcContext, idle_s: float, interrupted: Callable[[], bool]) -> None:
        self._call = call
        self._idle_s = idle_s
        self._interrupted = interrupted
        self._last = time.monotonic()
        self._done = threading.Event()
        self.stalled = False
        self.fired = False
        self._thread = threading.Thread(target=self._watch, name="fetch-watchdog", daemon=True)
        self._thread.start()

    def fed(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(_WATCH_TICK_S):
            stalled = time.monotonic() - self._last > self._idle_s
            if stalled or self._interrupted():
                self.stalled, self.fired = stalled, True
                self._call.cancel()
                return


class BlobFetcher:
    """Fetches content-addressed blobs from the controller; thread-confined to the update worker."""

    def __init__(
        self,
        address: str,
        metadata: Callable[[], tuple[tuple[str, str], ...]],
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        backoff: Backoff = RETRY_BACKOFF,
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
        self._address = address
        self._metadata = metadata
        self.sizer = ChunkSizer(chunk_bytes)
        self._stall_s = stall_timeout_s
        self._connect_s = connect_timeout_s
        self._backoff = backoff
        self._channel: grpc.Channel | None = None
        self._inline: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._floor_stalls = 0  # stalls in a row at the smallest chunk: the idle limit doubles with each
        self._connect_failures = 0  # handshakes in a row that timed out: the connect limit doubles with each
        self.progress = DownloadProgress()
        self.counters = FetchCounters(chunk_bytes=self.sizer.current)

    def add_inline(self, digest: str, content: bytes) -> None:
        """Serve ``digest`` from memory (the manifest and signature carried by the desired state)."""
        with self._lock:
            self._inline[digest] = content

    def close(self) -> None:
        """Stop: a fetch in flight gives up (``FetchInterrupted``) within a watchdog tick."""
        self._closed.set()
        self._drop_channel()

    def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            # grpc.channel_ready_future polls connectivity on its own thread in 0.2 s steps and keeps polling for
            # up to one step after it is done or cancelled; closing the channel under it raises "Cannot monitor
            # channel state: Channel closed!" on that thread. Close once that step has passed.
            closer = threading.Timer(_READY_POLL_S + 0.1, channel.close)
            closer.name, closer.daemon = "fetcher-channel-close", True
            closer.start()

    def fetch(
        self,
        digest: str,
        dest_path: Path,
        expected_size: int,
        resume_from: int,
        *,
        cancel: threading.Event | None = None,
    ) -> None:
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
        self.progress.started(digest, have, expected_size, self.sizer.current)
        try:
            with dest_path.open("ab") as out:
                self._fetch_rest(digest, out, hasher, have, expected_size, cancel)
        finally:
            self.progress.finished()
        actual = DIGEST_PREFIX + hasher.hexdigest()
        if actual != digest:
            log.warning("agent.fetch_digest_mismatch", digest=digest, actual=actual, path=str(dest_path))
        else:
            log.info("agent.fetch_completed", digest=digest, size=expected_size)

    def _interrupted(self, cancel: threading.Event | None) -> bool:
        return self._closed.is_set() or (cancel is not None and cancel.is_set())

    def _give_up(self, digest: str, have: int, expected_size: int) -> FetchInterrupted:
        self._drop_channel()  # its call was cancelled mid-stream; the next fetch starts on a fresh connection
        self.counters.interrupted += 1
        why = "the fetcher was closed" if self._closed.is_set() else "the download was cancelled"
        log.info("agent.fetch_interrupted", digest=digest, offset=have, size=expected_size, reason=why)
        return FetchInterrupted(f"{why} at {have} of {expected_size} bytes of {digest}; the bytes are kept")

    def _fetch_rest(
        self,
        digest: str,
        out: BinaryIO,
        hasher: hashlib._Hash,
        have: int,
        expected_size: int,
        cancel: threading.Event | None,
    ) -> None:
        idle_attempts = 0  # connections in a row that brought no byte: the backoff grows with them
        while have < expected_size:
            if self._interrupted(cancel):
                raise self._give_up(digest, have, expected_size)
            before = have
            attempt = self._attempt(digest, out, hasher, have, expected_size, cancel)
            have = attempt.offset
            if self._interrupted(cancel):
                raise self._give_up(digest, have, expected_size)
            if attempt.error is None and not attempt.stalled and not attempt.unconnected:
                if have == before:
                    raise FetchError(
                        f"controller ended the stream of {digest} at {have} of {expected_size} bytes; "
                        "the blob is shorter than the bundle declares"
                    )
                continue
            if attempt.error is not None and not attempt.stalled and not is_transient(attempt.error):
                raise FetchError(f"controller refused {digest} at offset {have}: {_details(attempt.error)}")
            self._drop_channel()
            reason = self._adapt(attempt)
            idle_attempts = 0 if have > before else idle_attempts + 1
            delay = self._backoff.delay(idle_attempts) if idle_attempts else 0.0
            log.info(
                "agent.fetch_link_lost",
                digest=digest,
                offset=have,
                size=expected_size,
                reason=reason,
                kept_on_connection=attempt.delivered,
                chunk_bytes=self.sizer.current,
                retry_in_s=round(delay, 3),
            )
            self._pause(delay, cancel, digest, have, expected_size)

    def _adapt(self, attempt: _Attempt) -> str:
        """Count the loss and adapt the chunk size to it; returns what happened, for the log."""
        if attempt.unconnected:
            self.counters.connect_timeouts += 1
            return f"no handshake within {attempt.limit_s:.1f} s"
        code = rpc_code(attempt.error) if attempt.error is not None else None
        if attempt.stalled:
            self.counters.stalls += 1
            self.sizer.stalled(attempt.delivered)
            reason = f"no chunk within {attempt.limit_s:.1f} s"
            if attempt.delivered == 0 and self.sizer.at_floor:
                self._floor_stalls = min(self._floor_stalls + 1, _MAX_TIMEOUT_DOUBLINGS)
            self.progress.lost(stalled=True, chunk_bytes=self.sizer.current)
        elif code in _LINK_LOST:
            self.counters.resets += 1
            self.sizer.lost(attempt.delivered)
            reason = f"connection lost ({code.name if code else 'error'})"
            self.progress.lost(stalled=False, chunk_bytes=self.sizer.current)
        else:
            reason = f"transient error {_details(attempt.error) if attempt.error is not None else ''}"
        self.counters.chunk_bytes = self.sizer.current
        return reason

    def _pause(self, delay: float, cancel: threading.Event | None, digest: str, have: int, size: int) -> None:
        """Wait ``delay`` in small steps, giving up at once when interrupted."""
        until = time.monotonic() + delay
        while (left := until - time.monotonic()) > 0 and not self._interrupted(cancel):
            time.sleep(min(left, _WATCH_TICK_S))
        if self._interrupted(cancel):
            raise self._give_up(digest, have, size)

    def _idle_limit(self) -> float:
        rate = self.progress.rate_bps()
        needed = 3 * self.sizer.current / rate if rate > 0 else 0.0
        return float(max(self._stall_s, needed) * 2**self._floor_stalls)

    def _connect_limit(self) -> float:
        return float(self._connect_s * 2 ** min(self._connect_failures, _MAX_TIMEOUT_DOUBLINGS))

    def _connected(self, cancel: threading.Event | None, limit_s: float) -> grpc.Channel | None:
        """The channel once its handshake completed; None when it did not within ``limit_s``."""
        if self._channel is None:
            self._channel = blocking_channel(self._address)
        ready = grpc.channel_ready_future(self._channel)
        until = time.monotonic() + limit_s
        while time.monotonic() < until and not self._interrupted(cancel):
            try:
                ready.result(timeout=_WATCH_TICK_S)
            except grpc.FutureTimeoutError:
                continue
            self._connect_failures = 0
            return self._channel
        ready.cancel()
        self._connect_failures += 1
        return None

    def _attempt(
        self,
        digest: str,
        out: BinaryIO,
        hasher: hashlib._Hash,
        offset: int,
        expected_size: int,
        cancel: threading.Event | None,
    ) -> _Attempt:
        connect_limit = self._connect_limit()
        channel = self._connected(cancel, connect_limit)
        if channel is None:
            return _Attempt(offset, unconnected=True, limit_s=connect_limit)
        self.counters.connections += 1
        deadline = _BASE_DEADLINE_S + (expected_size - offset) / _MIN_RATE_BPS
        chunk_bytes = self.sizer.current
        request = device_pb2.FetchBlobRequest(digest=digest, offset=offset, chunk_bytes=chunk_bytes)
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        stream = stub.FetchBlob(request, metadata=self._metadata(), timeout=deadline)
        result = _Attempt(offset, limit_s=self._idle_limit())
        watchdog = _Watchdog(stream, result.limit_s, lambda: self._interrupted(cancel))
        try:
            for chunk in stream:
                watchdog.fed()
                self.counters.bytes_received += len(chunk.data)
                if chunk.offset != result.offset:
                    # Not the continuation of our file: drop it and ask again from what we hold.
                    self.counters.chunks_discarded += 1
                    log.warning("agent.fetch_offset_mismatch", digest=digest, expected=result.offset, got=chunk.offset)
                    return result
                self._check_size(digest, chunk, result.offset, expected_size)
                out.write(chunk.data)
                out.flush()
                hasher.update(chunk.data)
                result.offset += len(chunk.data)
                result.delivered += len(chunk.data)
                self.counters.bytes_written += len(chunk.data)
                self._floor_stalls = 0
                self.sizer.kept(len(chunk.data))
                self.progress.kept(len(chunk.data), self.sizer.current)
                if self.sizer.current != chunk_bytes:
                    # Grown: the next request asks for the larger chunk (this stream keeps its size).
                    self.counters.chunk_bytes = self.sizer.current
                    return result
        except grpc.RpcError as exc:
            result.error = exc
        finally:
            watchdog.stop()
            stream.cancel()
        result.stalled = watchdog.stalled
        return result

    def _check_size(self, digest: str, chunk: device_pb2.BlobChunk, offset: int, expected_size: int) -> None:
        if chunk.total_size and chunk.total_size != expected_size:
            raise FetchError(
                f"controller says {digest} is {chunk.total_size} bytes, the bundle declares "
                f"{expected_size}; the bundle and the blob store disagree"
            )
        if offset + len(chunk.data) > expected_size:
            raise FetchError(
                f"controller sent {offset + len(chunk.data)} bytes of {digest}, more than the declared {expected_size}"
            )

    def _write_inline(self, digest: str, content: bytes, dest: Path, expected_size: int, resume_from: int) -> None:
        if len(content) != expected_size:
            raise FetchError(f"inline content of {digest} is {len(content)} bytes, expected {expected_size}")
        start = resume_from if dest.exists() else 0
        with dest.open("ab") as out:
            out.write(content[start:])
        self.counters.inline_bytes += len(content) - start
