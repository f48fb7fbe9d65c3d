"""A bundle's golden set (``artifacts/golden.npz``): K inputs and the reference outputs the publisher's CPU
computed for them. The builder writes it (``edgefleet_pipeline.bundle_builder``); a device reads it to check that
its execution provider computes what the publisher computed, within ``canary.golden_tolerance``.

Format: an uncompressed .npz, ``input.<name>`` arrays ``[K, *shape with batch 1]`` and ``output.<name>``
arrays ``[K, ...]`` stacked over cases (case ``i`` is run as ``{name: arr[i]}``), fixed zip timestamps (so the
same spec, model and ``created_at`` build a byte-identical bundle), read without pickle.

Reading treats the file as hostile (``bundle_limits``): the file size, the zip's central directory, every
member's declared ``file_size`` and compression ratio, and every .npy header's shape × itemsize are checked
against each other and the golden ceiling before any array is allocated; arrays are then read through the
zip member reader, which stops at the declared ``file_size`` (and checks the CRC there), so the device never
allocates more than the declared, checked size. ``check_golden`` does the checks alone (headers only).
"""

from __future__ import annotations

import io
import math
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.typing import NDArray

from edgefleet.contract.bundle_limits import DEFAULT_LIMITS, MAX_NPY_HEADER_BYTES, BundleLimits
from edgefleet.contract.errors import BundleFormatError, UnsafeArchiveError
from edgefleet.contract.shown import shown

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_READ_CHUNK = 1024 * 1024
# Tensor names become dict keys only (never paths): anything printable, bounded in length.
_MEMBER_RE = re.compile(r"^(?:input|output)\.[^\x00-\x1f\x7f]{1,200}\.npy$")
_NUMERIC_KINDS = frozenset("biufc")
# End of central directory record (and the zip64 locator that may precede it), as in the zip specification.
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIG, _ZIP64_LOCATOR_SIG = b"PK\x05\x06", b"PK\x06\x07"
_MAX_COMMENT = 0xFFFF
# A central directory entry is 46 bytes + name (≤ 205 here) + extra fields (zip64: ≤ 32); 1 KiB is generous.
_CD_BYTES_PER_MEMBER = 1024
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError, struct.error)


@dataclass(frozen=True)
class GoldenCase:
    """One golden input set and the reference outputs the publisher's CPU computed for it."""

    inputs: Mapping[str, NDArray[np.generic]]
    outputs: Mapping[str, NDArray[np.generic]]


@dataclass(frozen=True)
class GoldenArray:
    """One golden member as declared: its .npy header's shape and dtype, checked against the zip entry."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]
    fortran_order: bool
    data_bytes: int


def write_golden(path: Path, cases: Sequence[GoldenCase]) -> None:
    """Write golden.npz (``input.<name>``/``output.<name>`` stacked over cases) with fixed zip timestamps."""
    arrays: dict[str, NDArray[np.generic]] = {}
    for name in cases[0].inputs:
        arrays[f"input.{name}"] = np.stack([c.inputs[name] for c in cases])
    for name in cases[0].outputs:
        arrays[f"output.{name}"] = np.stack([c.outputs[name] for c in cases])
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def check_golden(
    path: Path | str, limits: BundleLimits = DEFAULT_LIMITS, *, source: str | None = None
) -> list[GoldenArray]:
    """Check golden.npz's declared sizes (zip entries and .npy headers) against each other and the ceilings,
    reading headers only; raises ``UnsafeArchiveError`` (sizes) or ``BundleFormatError`` (format). Messages
    name ``source`` (default: the path)."""
    return [declared for declared, _ in _scan(Path(path), limits, source, read_data=False)]


def load_golden(
    path: Path | str, limits: BundleLimits = DEFAULT_LIMITS, *, source: str | None = None
) -> list[GoldenCase]:
    """Read golden.npz back into cases (no pickle), allocating no more than its checked, declared sizes."""
    scanned = _scan(Path(path), limits, source, read_data=True)
    arrays = {declared.key: array for declared, array in scanned if array is not None}
    inputs = {k.removeprefix("input."): v for k, v in arrays.items() if k.startswith("input.")}
    outputs = {k.removeprefix("output."): v for k, v in arrays.items() if k.startswith("output.")}
    counts = {len(v) if v.ndim else -1 for v in [*inputs.values(), *outputs.values()]}
    if not inputs or not outputs or len(counts) != 1 or -1 in counts:
        raise BundleFormatError(f"{source or path}: needs input.* and output.* arrays with the same number of cases")
    (count,) = counts
    return [
        GoldenCase({k: v[i] for k, v in inputs.items()}, {k: v[i] for k, v in outputs.items()}) for i in range(count)
    ]


# ------------------------------------------------------------------------------------------------ reading


class _OverRead(Exception):
    """A read past the bytes a reader may hand out."""


class _BoundedReader:
    """Hands out at most ``limit`` bytes of ``raw``; a larger request raises ``_OverRead`` before reading."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self._raw = raw
        self.limit = limit
        self.position = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0 or self.position + n > self.limit:
            raise _OverRead(n)
        data = self._raw.read(n)
        self.position += len(data)
        return data


def _scan(
    path: Path, limits: BundleLimits, source: str | None, *, read_data: bool
) -> list[tuple[GoldenArray, NDArray[np.generic] | None]]:
    label = source or str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BundleFormatError(f"{label}: cannot be read ({exc})") from None
    if size > limits.max_golden_bytes:
        raise UnsafeArchiveError(
            f"{label}: golden data is {size} bytes on disk, over the {limits.max_golden_bytes}-byte golden ceiling"
        )
    try:
        with path.open("rb") as fh:
            _check_central_directory(fh, size, label, limits)
            with zipfile.ZipFile(fh) as archive:
                infos = _checked_infos(archive, label, limits)
                return [_read_member(archive, info, label, read_data=read_data) for info in infos]
    except _ZIP_ERRORS as exc:
        raise BundleFormatError(f"{label}: is not a golden .npz file ({exc})") from None


def _check_central_directory(fh: IO[bytes], size: int, path: str, limits: BundleLimits) -> None:
    """Refuse a central directory that could list more members than the ceiling, before zipfile parses it."""
    tail_len = min(size, _EOCD.size + _MAX_COMMENT)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(_EOCD_SIG)
    if at < 0 or len(tail) - at < _EOCD.size:
        raise BundleFormatError(f"{path}: is not a golden .npz file (no zip end of central directory record)")
    _, _, _, _, count, cd_size, _, _ = _EOCD.unpack_from(tail, at)
    if at >= 20 and tail[at - 20 : at - 16] == _ZIP64_LOCATOR_SIG:
        raise UnsafeArchiveError(f"{path}: golden data uses a zip64 central directory; golden sets never need one")
    if count > limits.max_golden_arrays or cd_size > limits.max_golden_arrays * _CD_BYTES_PER_MEMBER:
        raise UnsafeArchiveError(
            f"{path}: golden data's central directory declares {count} members in {cd_size} bytes, over the "
            f"ceiling of {limits.max_golden_arrays} arrays ({limits.max_golden_arrays * _CD_BYTES_PER_MEMBER} bytes)"
        )
    fh.seek(0)


def _checked_infos(archive: zipfile.ZipFile, path: str, limits: BundleLimits) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > limits.max_golden_arrays:
        raise UnsafeArchiveError(f"{path}: golden data has {len(infos)} members, over {limits.max_golden_arrays}")
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        if not _MEMBER_RE.match(name):
            raise BundleFormatError(f"{path}: member {shown(name)} is not an input.<name>.npy/output.<name>.npy array")
        if name in seen:
            raise BundleFormatError(f"{path}: member {shown(name)} appears twice")
        seen.add(name)
        _check_info(info, path, limits)
        total += info.file_size
        if total > limits.max_golden_bytes:
            raise UnsafeArchiveError(
                f"{path}: golden members declare {total} bytes uncompressed (through {shown(name)}), over the "
                f"{limits.max_golden_bytes}-byte golden ceiling"
            )
    return infos


def _deflate_bound(n: int) -> int:
    """The most bytes deflate can produce from ``n`` input bytes (zlib's ``deflateBound``, plus slack)."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 64


def _check_info(info: zipfile.ZipInfo, path: str, limits: BundleLimits) -> None:
    """One zip entry's declared sizes: under the ceiling, and a compressed size that can really hold them."""
    name, usize, csize = info.filename, info.file_size, info.compress_size
    if info.flag_bits & 0x1:
        raise BundleFormatError(f"{path}: member {shown(name)} is encrypted")
    if usize > limits.max_golden_bytes:
        raise UnsafeArchiveError(
            f"{path}: member {shown(name)} declares {usize} bytes uncompressed ({csize} compressed), over the "
            f"{limits.max_golden_bytes}-byte golden ceiling"
        )
    if info.compress_type == zipfile.ZIP_STORED:
        if csize != usize:
            raise UnsafeArchiveError(
                f"{path}: member {shown(name)} is stored uncompressed but declares {usize} bytes with {csize} stored"
            )
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if usize > max(csize, 1) * limits.max_golden_ratio:
            raise UnsafeArchiveError(
                f"{path}: member {shown(name)} declares {usize} bytes from {csize} compressed, a ratio over the "
                f"{limits.max_golden_ratio}:1 ceiling; refusing a decompression bomb"
            )
        if csize > _deflate_bound(usize):
            raise UnsafeArchiveError(
                f"{path}: member {shown(name)} declares {usize} bytes uncompressed but holds {csize} compressed, more "
                "than deflate makes of that many; its zip header lies about file_size"
            )
    else:
        raise BundleFormatError(
            f"{path}: member {shown(name)} uses zip compression method {info.compress_type}; only stored or deflated"
        )


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, *, read_data: bool
) -> tuple[GoldenArray, NDArray[np.generic] | None]:
    name = info.filename
    with archive.open(info) as raw:  # a ZipExtFile: yields at most info.file_size bytes, checks the CRC there
        header = _BoundedReader(raw, min(info.file_size, MAX_NPY_HEADER_BYTES))
        try:
            version = np.lib.format.read_magic(header)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(header, MAX_NPY_HEADER_BYTES)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(header, MAX_NPY_HEADER_BYTES)
            else:
                raise BundleFormatError(f"{path}: member {shown(name)} is .npy format {version}; expected 1.0 or 2.0")
        except _OverRead as exc:
            raise UnsafeArchiveError(
                f"{path}: member {shown(name)}: its .npy header asks to read {exc.args[0]} more bytes, past the "
                f"{header.limit}-byte header ceiling (file_size {info.file_size})"
            ) from None
        except ValueError as exc:
            raise BundleFormatError(f"{path}: member {shown(name)} is not a .npy array ({exc})") from None
        declared = _declared(name, shape, fortran, dtype, header.position, info, path)
        return declared, (_read_data(raw, declared, info, path) if read_data else None)


def _declared(
    name: str,
    shape: object,
    fortran: bool,
    dtype: np.dtype[np.generic],
    header_bytes: int,
    info: zipfile.ZipInfo,
    path: str,
) -> GoldenArray:
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BundleFormatError(f"{path}: member {shown(name)} has an invalid shape {str(shape)[:80]}")
    if dtype.kind not in _NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise BundleFormatError(f"{path}: member {shown(name)} has dtype {shown(dtype.str)}; golden arrays are numeric")
    data_bytes = math.prod(shape) * dtype.itemsize
    if header_bytes + data_bytes != info.file_size:
        raise UnsafeArchiveError(
            f"{path}: member {shown(name)}: its .npy header declares shape {shape} of {dtype.str} ({data_bytes} data "
            f"bytes after a {header_bytes}-byte header) but the zip entry declares file_size {info.file_size}; "
            "refusing a lying header"
        )
    return GoldenArray(name.removesuffix(".npy"), shape, dtype, fortran, data_bytes)


def _read_data(raw: IO[bytes], declared: GoldenArray, info: zipfile.ZipInfo, path: str) -> NDArray[np.generic]:
    """The array's bytes, read in chunks into an array of exactly the declared (checked) size."""
    flat = np.empty(math.prod(declared.shape), dtype=declared.dtype)
    view = flat.reshape(-1).view(np.uint8)
    got = 0
    while got < declared.data_bytes:
        chunk = raw.read(min(_READ_CHUNK, declared.data_bytes - got))
        if not chunk:
            raise BundleFormatError(
                f"{path}: member {shown(info.filename)} ends after {got} of its "
                f"{declared.data_bytes} declared data bytes"
            )
        view[got : got + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        got += len(chunk)
    if raw.read(1):
        raise UnsafeArchiveError(
            f"{path}: member {shown(info.filename)} holds more than its declared {info.file_size} bytes"
        )
    if declared.fortran_order:
        return flat.reshape(declared.shape[::-1]).transpose()
    return flat.reshape(declared.shape)
