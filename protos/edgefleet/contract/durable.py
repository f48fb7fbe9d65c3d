"""Crash-safe writes: the one ``fsync_dir``, ``write_durably`` and ``read_durable`` of the tree.

``write_durably`` writes a temp file beside the target, fsyncs it, renames it over the target and fsyncs the
directory: after a power cut the target holds either the old bytes or the new ones, never a mix.
``fsync_dir`` makes a directory's entries (a rename, a new or removed file) durable; every writer that renames
into place calls it on the directory it renamed into (the controller's blob store, the bundle unpacker, the
device's slots, journal and telemetry buffer). Lives in the contract because both the controller and the
runtime need it and neither may import the other. ``read_durable`` is the read side of such a file (the
update journal's copies and clean-stop marker, the device's last config): absent is an answer, not an error.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "read_durable", "write_durably"]


def fsync_dir(path: Path) -> None:
    """fsync the directory ``path`` so renames and new entries in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename, fsync the directory)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover from a crash mid-write; O_EXCL keeps its mode from leaking
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_durable(path: Path) -> bytes | None:
    """The bytes of the file ``path`` (one ``write_durably`` wrote), or None when there is none.

    A file that exists but cannot be read raises its ``OSError``: the caller says what that means for it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
