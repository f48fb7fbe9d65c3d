"""Hostile golden sets and bundles for the bounded-decompression tests: ``write_zero_npz`` streams a .npz of
zero-filled .npy members (deflated by repeating one compressed 1 MiB block, so a 2 GiB member takes ~2 MB
and seconds to write, and never more than a few MiB of memory), with headers that may lie;
``with_golden`` re-signs a bundle around such a golden set; ``measure_peak_rss`` runs code in a child
process and reports its peak RSS before and after the code ran.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_archive import pack_bundle
from edgefleet.contract.bundle_files import sha256_file
from edgefleet.contract.bundle_layout import GOLDEN_ROLE, MANIFEST_NAME, SIGNATURE_NAME
from edgefleet.contract.signing import SigningKey, sign_bundle

__all__ = ["NpyMember", "PeakRss", "measure_peak_rss", "npy_header", "with_golden", "write_zero_npz"]

_BLOCK = 1 << 20
_ZEROS = bytes(_BLOCK)
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_DOS_DATE_1980 = (0 << 9) | (1 << 5) | 1


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A .npy 1.0 header for ``shape`` of ``descr`` (whatever the data after it holds)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@dataclass(frozen=True)
class NpyMember:
    """One zip member: ``header`` then ``zero_bytes`` zeros. ``file_size`` overrides the size the zip
    headers declare (a lie); ``crc_of`` says whether the CRC covers the real data or the declared prefix."""

    name: str
    header: bytes
    zero_bytes: int
    method: Literal["deflated", "stored"] = "deflated"
    file_size: int | None = None
    crc_of: Literal["data", "declared"] = "data"


def _zero_crc(crc: int, count: int) -> int:
    while count > 0:
        step = min(count, _BLOCK)
        crc = zlib.crc32(_ZEROS[:step], crc)
        count -= step
    return crc


def _write_deflated(out: io.BufferedWriter, member: NpyMember) -> int:
    """Deflate ``member``'s content into ``out``; the compressed size."""
    start = out.tell()
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    out.write(comp.compress(member.header) + comp.flush(zlib.Z_FULL_FLUSH))
    blocks, rest = divmod(member.zero_bytes, _BLOCK)
    if blocks:
        # After a full flush the compressor holds no history: one 1 MiB block compresses to the same bytes
        # every time, so the rest are copies of the first (checked on the second).
        block = comp.compress(_ZEROS) + comp.flush(zlib.Z_FULL_FLUSH)
        out.write(block)
        if blocks > 1:
            again = comp.compress(_ZEROS) + comp.flush(zlib.Z_FULL_FLUSH)
            assert again == block, "deflate blocks after a full flush should repeat"
            out.write(again)
            for _ in range(blocks - 2):
                out.write(block)
    out.write(comp.compress(_ZEROS[:rest]) + comp.flush())
    return out.tell() - start


def write_zero_npz(path: Path, members: Sequence[NpyMember]) -> Path:
    """Write a zip of ``members`` (see ``NpyMember``), streaming: memory stays at a few MiB."""
    central = []
    with path.open("wb") as out:
        for member in members:
            real_size = len(member.header) + member.zero_bytes
            declared = member.file_size if member.file_size is not None else real_size
            crc_len = real_size if member.crc_of == "data" else declared
            crc = _zero_crc(zlib.crc32(member.header[:crc_len]), max(0, crc_len - len(member.header)))
            name = member.name.encode()
            method = 8 if member.method == "deflated" else 0
            offset = out.tell()
            out.write(_LOCAL.pack(b"PK\x03\x04", 20, 0, 0, method, 0, _DOS_DATE_1980, 0, 0, 0, len(name), 0))
            out.write(name)
            if member.method == "deflated":
                csize = _write_deflated(out, member)
            else:
                out.write(member.header)
                for _ in range(member.zero_bytes // _BLOCK):
                    out.write(_ZEROS)
                out.write(_ZEROS[: member.zero_bytes % _BLOCK])
                csize = real_size
            end = out.tell()
            out.seek(offset)
            out.write(
                _LOCAL.pack(b"PK\x03\x04", 20, 0, 0, method, 0, _DOS_DATE_1980, crc, csize, declared, len(name), 0)
            )
            out.seek(end)
            central.append((name, method, crc, csize, declared, offset))
        cd_start = out.tell()
        for name, method, crc, csize, declared, offset in central:
            out.write(
                _CENTRAL.pack(
                    b"PK\x01\x02", 20, 3, 20, 0, 0, method, 0, _DOS_DATE_1980, crc, csize, declared,
                    len(name), 0, 0, 0, 0, 0o644 << 16, offset,
                )
            )  # fmt: skip
            out.write(name)
        cd_size = out.tell() - cd_start
        out.write(_END.pack(b"PK\x05\x06", 0, 0, len(central), len(central), cd_size, cd_start, 0))
    return path


def with_golden(bundle_dir: Path, golden: Path, key: SigningKey, out_dir: Path, *, version: str) -> tuple[Path, Path]:
    """A copy of ``bundle_dir`` whose golden.npz is ``golden``, as ``version``, signed by ``key``: the signed
    bundle directory (``out_dir/bundle-<version>``) and its packed archive (``out_dir/<name>-<version>.efb``)."""
    work = out_dir / f"bundle-{version}"
    shutil.copytree(bundle_dir, work)
    (work / SIGNATURE_NAME).unlink(missing_ok=True)
    manifest = BundleManifest.from_json_bytes((work / MANIFEST_NAME).read_bytes())
    target = work / manifest.artifact(GOLDEN_ROLE).path
    target.unlink()
    shutil.copyfile(golden, target)
    sha, size = sha256_file(target)
    doc = manifest.to_dict()
    artifacts = doc["artifacts"]
    assert isinstance(artifacts, dict)
    artifacts[GOLDEN_ROLE] = {**artifacts[GOLDEN_ROLE], "sha256": sha, "size": size}
    doc["version"] = version
    (work / MANIFEST_NAME).write_bytes(BundleManifest.from_dict(doc).to_json_bytes())
    sign_bundle(work, key)
    return work, pack_bundle(work, out_dir / f"{manifest.name}-{version}.efb")


@dataclass(frozen=True)
class PeakRss:
    """A child's peak RSS (VmHWM) in bytes after its imports (``before``) and after the code (``after``),
    and what the code printed."""

    before: int
    after: int
    output: str

    @property
    def grew(self) -> int:
        return self.after - self.before


_MEASURE = """
import sys
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
{setup}
_before = _hwm()
{code}
print("PEAK_RSS", _before, _hwm())
"""


def measure_peak_rss(setup: str, code: str, *, timeout_s: float = 120.0) -> PeakRss:
    """Run ``setup`` (imports) then ``code`` in a fresh interpreter; the peak RSS around ``code``."""
    script = _MEASURE.format(setup=textwrap.dedent(setup), code=textwrap.dedent(code))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("PEAK_RSS"):
        raise AssertionError(f"measured child failed (rc {done.returncode}):\n{done.stdout}\n{done.stderr}")
    _, before, after = lines[-1].split()
    return PeakRss(int(before), int(after), "\n".join(lines[:-1]))
