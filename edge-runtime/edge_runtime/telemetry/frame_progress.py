"""The frame checkpoint: ``<data dir>/telemetry/frames.ckpt``, the cumulative count of frames the telemetry
pipeline observed, written on every frame so a start after kill -9 knows what the lost open window held.

Layout (little-endian, fixed offsets): a 128-byte header (magic, the boot id it was written under, CRC),
a 128-byte bundle area (the digest of the newest frame's bundle, rewritten only when it changes, CRC) and
two 32-byte slots ``(frames, last frame time, flags, CRC)``; frame ``n`` goes to slot ``n % 2``.

Why this is cheap and what it survives:
- One ``os.pwrite`` of 32 bytes per frame and no fsync (2-4 us with its CRC; ``bench_frame_checkpoint``):
  the write lands in the page cache, which outlives the process, so after kill -9 or a crash the count
  is exact. It does NOT survive a power loss: the kernel writes dirty pages back within ~30 s, so the
  checkpoint may be older than the last frames; the boot id tells the next start it cannot trust the
  count (``frame_gap``: cause ``rebooted``, a lower bound).
- Alternating slots: a write torn by a power cut fails its CRC and the other slot (one frame older) is read.
- A clean stop sets the ``clean`` flag and fsyncs once, so a reboot after a clean shutdown declares nothing.
- An unreadable file is moved aside (``frames.ckpt.corrupt``) and reported as such; never fatal.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import structlog

from edge_runtime.telemetry.frame_gap import CheckpointState, UnreadableCheckpoint
from edgefleet.contract.shown import shown

log = structlog.get_logger(__name__)

MAGIC: Final = b"EFFRAMES"
HEADER_SIZE: Final = 128
BUNDLE_OFFSET: Final = HEADER_SIZE
BUNDLE_SIZE: Final = 128
SLOT_OFFSET: Final = BUNDLE_OFFSET + BUNDLE_SIZE
SLOT_SIZE: Final = 32
FILE_SIZE: Final = SLOT_OFFSET + 2 * SLOT_SIZE
_SLOT: Final = struct.Struct("<QdQ")  # frames, last frame (unix seconds), flags; then the CRC32
_CLEAN: Final = 1
_BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> str:
    """The kernel's id of this boot ('' where there is none: then a reboot cannot be told apart)."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()[:64]
    except OSError:
        return ""


def _sealed(body: bytes, size: int) -> bytes:
    """``body`` + its CRC32, zero-padded to ``size``."""
    return (body + struct.pack("<I", zlib.crc32(body))).ljust(size, b"\0")


def _unseal(raw: bytes, length: int) -> bytes | None:
    body, crc = raw[:length], raw[length : length + 4]
    if len(crc) != 4 or struct.unpack("<I", crc)[0] != zlib.crc32(body):
        return None
    return body


def _header(boot_id: str) -> bytes:
    return _sealed(MAGIC + boot_id.encode("ascii", "replace")[:64].ljust(64, b"\0"), HEADER_SIZE)


def _bundle(digest: str) -> bytes:
    return _sealed(digest.encode("utf-8", "replace")[:120].ljust(120, b"\0"), BUNDLE_SIZE)


def _slot(frames: int, at: float, flags: int) -> bytes:
    return _sealed(_SLOT.pack(frames, at, flags), SLOT_SIZE)


def read_checkpoint(path: Path) -> CheckpointState | UnreadableCheckpoint | None:
    """What the checkpoint at ``path`` says (None: there is none)."""
    try:
        raw = path.read_bytes()
        modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return UnreadableCheckpoint(f"cannot read: {exc}", datetime.now(UTC))
    if len(raw) != FILE_SIZE:
        return UnreadableCheckpoint(f"size {len(raw)} bytes, expected {FILE_SIZE}", modified)
    header = _unseal(raw[:HEADER_SIZE], len(MAGIC) + 64)
    if header is None or not header.startswith(MAGIC):
        return UnreadableCheckpoint("bad header (magic or CRC)", modified)
    boot_id = header[len(MAGIC) :].rstrip(b"\0").decode("ascii", "replace")
    bundle = _unseal(raw[BUNDLE_OFFSET:SLOT_OFFSET], 120)
    digest = bundle.rstrip(b"\0").decode("utf-8", "replace") if bundle is not None else ""
    slots = []
    for i in range(2):
        body = _unseal(raw[SLOT_OFFSET + i * SLOT_SIZE : SLOT_OFFSET + (i + 1) * SLOT_SIZE], _SLOT.size)
        if body is not None:
            slots.append(_SLOT.unpack(body))
    if not slots:
        return UnreadableCheckpoint("no slot passes its CRC", modified)
    # Both slots hold the same count after a start or a clean stop; the clean one is then the newer write.
    frames, at, flags = max(slots, key=lambda s: (s[0], s[2] & _CLEAN))
    try:
        last_at = datetime.fromtimestamp(at, UTC)
    except (OverflowError, OSError, ValueError):
        return UnreadableCheckpoint(f"last frame time {shown(at)} out of range", modified)
    return CheckpointState(int(frames), last_at, digest, boot_id, bool(flags & _CLEAN))


def move_aside(path: Path) -> Path | None:
    """Rename an unreadable checkpoint to ``<name>.corrupt`` (replacing an older one); None if that failed."""
    target = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, target)
    except OSError as exc:
        log.warning("telemetry.frame_checkpoint_move_failed", path=str(path), error=str(exc))
        return None
    return target


class FrameCheckpoint:
    """The open checkpoint of this run: ``record`` per frame (from one thread at a time), ``mark_clean`` at a
    clean stop. Any OSError disables it (logged once) rather than reaching the frame loop."""

    def __init__(self, path: Path, *, frames: int, now: datetime, boot_id: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._digest = ""
        self._frames = frames
        self._at = now.timestamp()
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = _header(boot_id) + _bundle("") + _slot(frames, self._at, 0) + _slot(frames, self._at, 0)
            tmp.write_bytes(data)
            os.replace(tmp, path)
            self._fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            self._disable(exc)

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def _disable(self, exc: OSError) -> None:
        log.error(
            "telemetry.frame_checkpoint_failed",
            path=str(self.path),
            error=str(exc),
            hint="frames of a window open at a kill -9 will be declared with an unknown count; check the data dir",
        )
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def record(self, frames: int, at: float, digest: str) -> None:
        """Frame count ``frames`` (cumulative) observed at ``at`` (unix seconds) on bundle ``digest``."""
        fd = self._fd
        if fd is None:
            return
        try:
            if digest != self._digest:
                os.pwrite(fd, _bundle(digest), BUNDLE_OFFSET)
                self._digest = digest
            os.pwrite(fd, _slot(frames, at, 0), SLOT_OFFSET + (frames % 2) * SLOT_SIZE)
        except OSError as exc:
            self._disable(exc)
            return
        self._frames, self._at = frames, at

    def mark_clean(self) -> None:
        """The newest count is flushed into the buffer: say so, durably (one fsync, at a clean stop)."""
        fd = self._fd
        if fd is None:
            return
        try:
            os.pwrite(fd, _slot(self._frames, self._at, _CLEAN), SLOT_OFFSET + (self._frames % 2) * SLOT_SIZE)
            os.fsync(fd)
        except OSError as exc:
            self._disable(exc)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
