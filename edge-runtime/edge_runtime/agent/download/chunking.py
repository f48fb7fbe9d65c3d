"""How big a chunk the fetcher asks for next (``ChunkSizer``): small on a link that drops, large on a good one.

A gRPC message arrives whole or not at all, so a connection that dies mid-message loses every byte of the
chunk in flight; the chunk size is the price of a reset. The rules, in bytes of whole chunks kept:

- A reset that lost the chunk in flight after the connection had kept ``delivered`` bytes shrinks the
  chunk to a power of two of about a quarter of ``delivered`` (a link that resets every 256 KiB settles on
  32 or 64 KiB, at most one such chunk lost per reset), or to a quarter of the current size when the
  connection kept nothing. It never grows on a loss: a reset after many MiB keeps the chunk.
- A stall (the watchdog cancelled a stream that delivered nothing for its idle limit) halves the chunk
  only when that connection kept nothing: a chunk larger than the link can carry within the limit. A
  stall after chunks arrived is a dead link (a blackhole), not the chunk's fault.
- After ``GROW_AFTER_CHUNKS`` chunks and at least ``GROW_AFTER_BYTES`` (or that many chunks' worth) kept
  with no loss, the chunk doubles, never above the configured size (``--chunk-bytes``).
- Never below ``MIN_CHUNK_BYTES`` (per-message overhead) unless the configured size is smaller.
"""

from __future__ import annotations

MIN_CHUNK_BYTES = 16 << 10
GROW_AFTER_CHUNKS = 16
GROW_AFTER_BYTES = 1 << 20


def _pow2_floor(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n > 0 else 0


class ChunkSizer:
    """The requested chunk size of one fetcher; ``current`` is what the next request asks for."""

    def __init__(self, max_bytes: int, min_bytes: int = MIN_CHUNK_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"chunk size must be > 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.min_bytes = min(min_bytes, max_bytes)
        self.current = max_bytes
        self._good_bytes = 0
        self._good_chunks = 0

    @property
    def at_floor(self) -> bool:
        return self.current <= self.min_bytes

    def _set(self, size: int) -> None:
        self.current = max(self.min_bytes, min(self.max_bytes, size))
        self._good_bytes = 0
        self._good_chunks = 0

    def kept(self, nbytes: int) -> None:
        """A whole chunk of ``nbytes`` arrived and was kept."""
        self._good_bytes += nbytes
        self._good_chunks += 1
        needed = max(GROW_AFTER_BYTES, GROW_AFTER_CHUNKS * self.current)
        if self.current < self.max_bytes and self._good_chunks >= GROW_AFTER_CHUNKS and self._good_bytes >= needed:
            self._set(self.current * 2)

    def lost(self, delivered: int) -> None:
        """The connection reset and lost the chunk in flight, after keeping ``delivered`` bytes."""
        target = self.current // 4 if delivered <= 0 else _pow2_floor(delivered // 4)
        self._set(min(self.current, target))

    def stalled(self, delivered: int) -> None:
        """The watchdog cancelled a stream that had kept ``delivered`` bytes before going silent."""
        self._set(self.current // 2 if delivered <= 0 else self.current)
