"""The trust boundary for bundles: verifying a bundle directory, and the ``.efb`` archive form for transport.

An ``.efb`` is an uncompressed tar: ``bundle.json`` first, then ``bundle.sig``, then the artifacts in path
order, with zeroed owners and times so the same bundle packs to the same bytes.

Unpacking treats the archive as hostile. It streams members in order, checks the signature before writing
any artifact, refuses anything that is not a regular file listed in bundle.json (absolute paths, ``..``,
links, devices, fifos, duplicates, members larger than declared or than the ceilings of ``bundle_limits``),
checks every declared size before reading (bundle.json's sizes, each tar header's size, the pax and GNU
extended headers tarfile would read whole into memory), hashes while writing into a temporary sibling of the
destination, checks the golden set's declared sizes (``golden.check_golden``), and renames into place only
when everything matched. On any error nothing is left behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, cast

from edgefleet.contract.bundle import BundleManifest, read_manifest
from edgefleet.contract.bundle_files import check_bundle_files
from edgefleet.contract.bundle_layout import GOLDEN_ROLE, MANIFEST_NAME, MAX_MANIFEST_BYTES, SIGNATURE_NAME
from edgefleet.contract.bundle_limits import (
    DEFAULT_LIMITS,
    MAX_ARTIFACT_BYTES,
    MAX_BUNDLE_BYTES,
    MAX_TAR_HEADER_BYTES,
    BundleLimits,
    check_declared_sizes,
)
from edgefleet.contract.bundle_sections import ArtifactRef
from edgefleet.contract.durable import fsync_dir
from edgefleet.contract.errors import (
    BundleError,
    BundleFormatError,
    DigestMismatchError,
    MissingArtifactError,
    SignatureError,
    UnlistedFileError,
    UnsafeArchiveError,
    UnsupportedSchemaError,
)
from edgefleet.contract.golden import check_golden
from edgefleet.contract.shown import shown
from edgefleet.contract.signing import MAX_SIGNATURE_BYTES, TrustedKeys, verify_signature

ARCHIVE_SUFFIX = ".efb"
DEFAULT_MAX_TOTAL_BYTES = MAX_BUNDLE_BYTES
DEFAULT_MAX_MEMBER_BYTES = MAX_ARTIFACT_BYTES
_COPY_CHUNK = 1024 * 1024
# Everything tarfile can raise on a malformed archive; wrapped so callers only ever see ContractError.
_TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, OverflowError, struct.error, UnicodeError)
# Headers whose data tarfile reads whole into memory to describe the member after them.
_EXTENSION_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle directory whose signature, schema and every artifact have been checked."""

    path: Path
    manifest: BundleManifest
    key_id: str

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def artifact_path(self, role: str) -> Path:
        return self.path / self.manifest.artifact(role).path


def verify_bundle(bundle_dir: Path | str, trusted: TrustedKeys) -> VerifiedBundle:
    """Check schema version, the signature over bundle.json, every artifact's size and sha256, and that the
    directory holds nothing the manifest does not list."""
    root = Path(bundle_dir)
    manifest_path, sig_path = root / MANIFEST_NAME, root / SIGNATURE_NAME
    if not manifest_path.is_file():
        raise BundleFormatError(f"{manifest_path}: not found; is {root} a bundle directory?")
    manifest_bytes = manifest_path.read_bytes()
    _check_schema(manifest_bytes, str(manifest_path))
    if not sig_path.is_file():
        raise SignatureError(f"{sig_path}: not found; the bundle is unsigned, sign it with 'fleetctl bundle sign'")
    key_id = verify_signature(manifest_bytes, sig_path.read_bytes(), trusted)
    manifest = BundleManifest.from_json_bytes(manifest_bytes, source=str(manifest_path))
    check_declared_sizes(manifest, source=str(root))
    check_bundle_files(root, manifest)
    _check_contents(root, manifest, DEFAULT_LIMITS, str(root))
    return VerifiedBundle(root, manifest, key_id)


def _check_contents(root: Path, manifest: BundleManifest, limits: BundleLimits, source: str) -> None:
    """The checks of what artifacts hold, after their digests matched: the golden set's declared sizes."""
    if GOLDEN_ROLE in manifest.artifacts:
        ref = manifest.artifact(GOLDEN_ROLE)
        check_golden(root / ref.path, limits, source=f"{source}: {ref.path}")


def _check_schema(manifest_bytes: bytes, source: str) -> None:
    """Refuse an unknown schema version before trusting anything else in the file."""
    try:
        BundleManifest.from_json_bytes(manifest_bytes, source=source)
    except UnsupportedSchemaError:
        raise
    except BundleFormatError:
        # Other format problems surface after the signature check, which names tampering precisely.
        pass


# ------------------------------------------------------------------------------------------------- pack


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_bundle(bundle_dir: Path | str, archive_path: Path | str) -> Path:
    """Pack a bundle directory (signed or not) into an ``.efb`` archive; artifacts are checked first."""
    root, archive = Path(bundle_dir), Path(archive_path)
    manifest = read_manifest(root)
    check_bundle_files(root, manifest)
    names = [MANIFEST_NAME]
    if (root / SIGNATURE_NAME).is_file():
        names.append(SIGNATURE_NAME)
    names.extend(sorted(ref.path for ref in manifest.artifacts.values()))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".partial", dir=archive.parent)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name in names:
                path = root / name
                with path.open("rb") as fh:
                    tar.addfile(_tar_info(name, path.stat().st_size), fh)
        os.replace(tmp_name, archive)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return archive


# ----------------------------------------------------------------------------------------------- unpack


@contextmanager
def _open_archive(archive: Path) -> Iterator[tarfile.TarFile]:
    try:
        raw = archive.open("rb")
    except FileNotFoundError:
        raise BundleError(f"{archive}: not found") from None
    except IsADirectoryError:
        raise BundleError(f"{archive}: is a directory, expected an {ARCHIVE_SUFFIX} file") from None
    with raw:
        _check_extension_headers(raw, 0, archive)  # tarfile.open reads the first member already
        try:
            tar = tarfile.open(fileobj=raw, mode="r:")  # noqa: SIM115 - closed by the ``with tar`` below
        except _TAR_ERRORS as exc:
            raise UnsafeArchiveError(f"{archive}: is not an uncompressed tar bundle archive ({exc})") from None
        with tar:
            yield tar


def _check_extension_headers(raw: IO[bytes], offset: int, archive: Path) -> None:
    """Refuse pax or GNU long-name headers at ``offset`` declaring more than ``MAX_TAR_HEADER_BYTES`` in
    all (tarfile would read their data whole into memory); anything else is left to tarfile to judge."""
    position, total = raw.tell(), 0
    try:
        while True:
            raw.seek(offset)
            block = raw.read(tarfile.BLOCKSIZE)
            if len(block) < tarfile.BLOCKSIZE:
                return
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except _TAR_ERRORS:
                return  # the end-of-archive marker, or a corrupt header tarfile reports itself
            if info.type not in _EXTENSION_TYPES:
                return
            total += info.size
            if total > MAX_TAR_HEADER_BYTES:
                raise UnsafeArchiveError(
                    f"{archive}: extended tar headers at offset {offset} declare {total} bytes, over the "
                    f"{MAX_TAR_HEADER_BYTES}-byte ceiling; refusing the archive"
                )
            offset += tarfile.BLOCKSIZE + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    finally:
        raw.seek(position)


def _next_member(tar: tarfile.TarFile, archive: Path) -> tarfile.TarInfo | None:
    if tar.fileobj is not None:
        _check_extension_headers(cast(IO[bytes], tar.fileobj), tar.offset, archive)
    try:
        return tar.next()
    except _TAR_ERRORS as exc:
        raise UnsafeArchiveError(f"{archive}: corrupt tar header ({exc})") from None


def check_member_size(member: tarfile.TarInfo, ref: ArtifactRef, archive: Path, limits: BundleLimits) -> None:
    """A tar member's header size against bundle.json's and the ceilings, before any of it is read."""
    ceiling = limits.max_golden_bytes if ref.role == GOLDEN_ROLE else limits.max_artifact_bytes
    if member.size > ref.size:
        raise UnsafeArchiveError(
            f"{archive}: member {shown(member.name)} is {member.size} bytes, {MANIFEST_NAME} says {ref.size}"
        )
    if member.size > ceiling:
        raise UnsafeArchiveError(
            f"{archive}: member {shown(member.name)} is {member.size} bytes, over the {ceiling}-byte ceiling"
        )


def _check_member_kind(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    pure = PurePosixPath(name)
    if name.startswith("/") or pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {shown(name)} has an absolute path; refusing the archive")
    if ".." in pure.parts or "\\" in name or "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: member {shown(name)} escapes the bundle ('..' or '\\'); refusing")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(
            f"{archive}: member {shown(name)} is a link (to {shown(member.linkname)}); bundles hold regular files only"
        )
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise UnsafeArchiveError(
            f"{archive}: member {shown(name)} is a device or fifo; bundles hold regular files only"
        )
    if not member.isreg() or member.issparse():
        raise UnsafeArchiveError(
            f"{archive}: member {shown(name)} is not a regular file (tar type {shown(member.type)})"
        )


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int, archive: Path) -> bytes:
    if member.size > limit:
        raise UnsafeArchiveError(
            f"{archive}: member {shown(member.name)} is {member.size} bytes, over the {limit} limit"
        )
    fh = tar.extractfile(member)
    if fh is None:
        raise UnsafeArchiveError(f"{archive}: member {shown(member.name)} has no data")
    try:
        data = fh.read(limit + 1)
    except _TAR_ERRORS as exc:
        raise UnsafeArchiveError(f"{archive}: member {shown(member.name)} is truncated ({exc})") from None
    if len(data) != member.size:
        raise UnsafeArchiveError(f"{archive}: member {shown(member.name)} is truncated")
    return data


def _read_head(
    tar: tarfile.TarFile, archive: Path
) -> tuple[bytes, BundleManifest, bytes | None, tarfile.TarInfo | None]:
    """bundle.json (must be first), bundle.sig (if second), and the first member after them."""
    first = _next_member(tar, archive)
    if first is None:
        raise UnsafeArchiveError(f"{archive}: is empty; expected {MANIFEST_NAME} first")
    _check_member_kind(first, archive)
    if first.name != MANIFEST_NAME:
        raise BundleFormatError(f"{archive}: first member is '{first.name}', expected {MANIFEST_NAME}")
    manifest_bytes = _read_small(tar, first, MAX_MANIFEST_BYTES, archive)
    manifest = BundleManifest.from_json_bytes(manifest_bytes, source=f"{archive.name}:{MANIFEST_NAME}")
    member = _next_member(tar, archive)
    sig_bytes = None
    if member is not None and member.name == SIGNATURE_NAME:
        _check_member_kind(member, archive)
        sig_bytes = _read_small(tar, member, MAX_SIGNATURE_BYTES, archive)
        member = _next_member(tar, archive)
    return manifest_bytes, manifest, sig_bytes, member


def read_archive_manifest(archive_path: Path | str) -> tuple[BundleManifest, bytes | None]:
    """The manifest and raw bundle.sig (``None`` if unsigned) of an archive, without any verification."""
    archive = Path(archive_path)
    with _open_archive(archive) as tar:
        _, manifest, sig, _ = _read_head(tar, archive)
    return manifest, sig


def _copy_member(src: IO[bytes], dest: Path, ref: ArtifactRef, archive: Path, budget: int) -> tuple[str, int]:
    digest, written = hashlib.sha256(), 0
    with dest.open("xb") as out:
        while True:
            try:
                chunk = src.read(_COPY_CHUNK)
            except _TAR_ERRORS as exc:
                raise UnsafeArchiveError(f"{archive}: member '{ref.path}' is truncated ({exc})") from None
            if not chunk:
                break
            written += len(chunk)
            if written > ref.size or written > budget:
                raise UnsafeArchiveError(f"{archive}: member '{ref.path}' holds more data than declared")
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), written


def _extract(
    archive: Path, work: Path, trusted: TrustedKeys | None, limits: BundleLimits
) -> tuple[BundleManifest, str | None]:
    with _open_archive(archive) as tar:
        manifest_bytes, manifest, sig_bytes, member = _read_head(tar, archive)
        key_id = None
        if trusted is not None:
            if sig_bytes is None:
                raise SignatureError(f"{archive}: has no {SIGNATURE_NAME} after {MANIFEST_NAME}; it is unsigned")
            key_id = verify_signature(manifest_bytes, sig_bytes, trusted)
        check_declared_sizes(manifest, limits, source=str(archive))
        by_path = {ref.path: ref for ref in manifest.artifacts.values()}
        (work / MANIFEST_NAME).write_bytes(manifest_bytes)
        if sig_bytes is not None:
            (work / SIGNATURE_NAME).write_bytes(sig_bytes)
        seen: set[str] = set()
        total = 0
        while member is not None:
            _check_member_kind(member, archive)
            name = str(PurePosixPath(member.name))
            ref = by_path.get(name)
            if ref is None:
                raise UnlistedFileError(f"{archive}: member {shown(member.name)} is not listed in {MANIFEST_NAME}")
            if name in seen:
                raise UnsafeArchiveError(f"{archive}: member {shown(name)} appears twice")
            seen.add(name)
            check_member_size(member, ref, archive, limits)
            src = tar.extractfile(member)
            if src is None:
                raise UnsafeArchiveError(f"{archive}: member {shown(name)} has no data")
            target = work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            sha, size = _copy_member(src, target, ref, archive, limits.max_total_bytes - total)
            total += size
            if size != ref.size:
                raise DigestMismatchError(
                    f"{archive}: artifact {shown(ref.role)} ({name}) is {size} bytes, {MANIFEST_NAME} says {ref.size}"
                )
            if sha != ref.sha256:
                raise DigestMismatchError(
                    f"{archive}: artifact {shown(ref.role)} ({name}) has sha256:{sha}, {MANIFEST_NAME} says "
                    f"{ref.digest}; the archive was altered or corrupted"
                )
            member = _next_member(tar, archive)
        missing = sorted(set(by_path) - seen)
        if missing:
            raise MissingArtifactError(f"{archive}: artifacts missing from the archive: {', '.join(missing)}")
    _check_contents(work, manifest, limits, str(archive))
    return manifest, key_id


def _unpack(
    archive_path: Path | str,
    dest_dir: Path | str,
    trusted: TrustedKeys | None,
    max_total_bytes: int,
    max_member_bytes: int,
) -> tuple[Path, BundleManifest, str | None]:
    archive, dest = Path(archive_path), Path(dest_dir)
    if dest.exists() or dest.is_symlink():
        raise BundleError(f"{dest}: already exists; unpack into a new directory")
    if not dest.parent.is_dir():
        raise BundleError(f"{dest.parent}: is not a directory; create it before unpacking into it")
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        limits = BundleLimits(max_total_bytes=max_total_bytes, max_artifact_bytes=max_member_bytes)
        manifest, key_id = _extract(archive, work, trusted, limits)
        os.rename(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    return dest, manifest, key_id


def unpack_bundle(
    archive_path: Path | str,
    dest_dir: Path | str,
    trusted: TrustedKeys,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> VerifiedBundle:
    """Safely extract and verify an ``.efb`` into ``dest_dir`` (which must not exist yet)."""
    dest, manifest, key_id = _unpack(archive_path, dest_dir, trusted, max_total_bytes, max_member_bytes)
    assert key_id is not None  # trusted was given, so the signature was checked
    return VerifiedBundle(dest, manifest, key_id)


def unpack_unverified_bundle(
    archive_path: Path | str,
    dest_dir: Path | str,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> BundleManifest:
    """Like ``unpack_bundle`` (same safety and digest checks) but without a signature check.

    For the publisher's own tools (re-signing, inspecting); never for running a bundle.
    """
    _, manifest, _ = _unpack(archive_path, dest_dir, None, max_total_bytes, max_member_bytes)
    return manifest
