"""The content-addressed blob directory: dedupe, ranges, digest validation, temp cleanup."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract.digests import sha256_digest
from edgefleet_controller.store.blobs import BlobStore, check_digest
from edgefleet_controller.store.errors import (
    BlobDigestMismatch,
    BlobTooLarge,
    InvalidDigest,
    NotFound,
    OffsetOutOfRange,
    StoreError,
)

DATA = b"edge models travel light" * 1000


def _temp_files(blobs: BlobStore) -> list[Path]:
    return list(blobs.tmp_dir.iterdir())


def test_commit_streams_hashes_and_places_by_digest(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    writer = blobs.open_writer()
    for start in range(0, len(DATA), 4096):
        writer.write(DATA[start : start + 4096])
    digest, size = writer.commit()

    hex_digest = hashlib.sha256(DATA).hexdigest()
    assert digest == f"sha256:{hex_digest}"
    assert size == len(DATA)
    assert blobs.path(digest) == tmp_path / "blobs" / "sha256" / hex_digest[:2] / hex_digest
    assert blobs.path(digest).read_bytes() == DATA
    assert blobs.has(digest)
    assert blobs.size(digest) == len(DATA)
    assert _temp_files(blobs) == []
    assert list(blobs.digests()) == [digest]


def test_writing_the_same_content_twice_keeps_one_blob_and_no_temp(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    first = blobs.put_bytes(DATA)
    inode = blobs.path(first[0]).stat().st_ino
    second = blobs.put_bytes(DATA, expected_digest=first[0])
    assert first == second
    assert blobs.path(first[0]).stat().st_ino == inode
    assert _temp_files(blobs) == []
    assert list(blobs.digests()) == [first[0]]


def test_expected_digest_mismatch_aborts_and_names_both_digests(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    wrong = sha256_digest(b"something else")
    with pytest.raises(BlobDigestMismatch) as caught:
        blobs.put_bytes(DATA, expected_digest=wrong)
    assert caught.value.expected == wrong
    assert caught.value.actual == sha256_digest(DATA)
    assert wrong in str(caught.value) and sha256_digest(DATA) in str(caught.value)
    assert not blobs.has(sha256_digest(DATA))
    assert _temp_files(blobs) == []


def test_abort_and_leaving_the_block_remove_the_temp_file(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    writer = blobs.open_writer()
    writer.write(b"partial")
    assert writer.temp_path.exists()
    writer.abort()
    writer.abort()  # idempotent
    assert _temp_files(blobs) == []
    with pytest.raises(StoreError, match="closed"):
        writer.write(b"more")

    with pytest.raises(RuntimeError), blobs.open_writer() as other:
        other.write(b"interrupted upload")
        raise RuntimeError("link dropped")
    assert _temp_files(blobs) == []
    assert list(blobs.digests()) == []


def test_writer_refuses_bytes_beyond_its_limit(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    writer = blobs.open_writer(max_size=10)
    writer.write(b"0123456789")
    with pytest.raises(BlobTooLarge, match="10 bytes"):
        writer.write(b"x")
    assert _temp_files(blobs) == []


def test_open_range_positions_at_offset(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest, size = blobs.put_bytes(DATA)
    with blobs.open_range(digest, 0) as whole:
        assert whole.read() == DATA
    with blobs.open_range(digest, 1234) as tail:
        assert tail.read() == DATA[1234:]
    with blobs.open_range(digest, size) as end:
        assert end.read() == b""


def test_open_range_beyond_end_names_offset_and_size(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest, _ = blobs.put_bytes(b"abc")
    with pytest.raises(OffsetOutOfRange) as caught:
        blobs.open_range(digest, 4)
    assert (caught.value.offset, caught.value.size) == (4, 3)
    assert "offset 4" in str(caught.value) and "3 bytes" in str(caught.value)
    with pytest.raises(OffsetOutOfRange):
        blobs.open_range(digest, -1)


def test_unknown_digest_is_not_found(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    missing = sha256_digest(b"never stored")
    assert not blobs.has(missing)
    with pytest.raises(NotFound, match="blob"):
        blobs.open_range(missing, 0)
    with pytest.raises(NotFound):
        blobs.size(missing)
    assert blobs.delete(missing) is False


def test_delete_removes_the_blob(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest, _ = blobs.put_bytes(DATA)
    assert blobs.delete(digest) is True
    assert not blobs.has(digest)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:",
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "md5:" + "a" * 64,
        "a" * 64,
        "sha256:../../../../etc/passwd",
        "sha256:" + "a" * 62 + "/x",
        "sha256:" + "a" * 64 + "\n",
        None,
        42,
    ],
)
def test_bad_digests_are_refused_before_touching_the_filesystem(tmp_path: Path, bad: object) -> None:
    blobs = BlobStore(tmp_path)
    with pytest.raises(InvalidDigest) as caught:
        blobs.path(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(caught.value)
    with pytest.raises(InvalidDigest):
        blobs.has(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidDigest):
        blobs.open_range(bad, 0)  # type: ignore[arg-type]
    with pytest.raises(InvalidDigest):
        blobs.delete(bad)  # type: ignore[arg-type]
    if bad is not None:  # None means "no expectation"
        with pytest.raises(InvalidDigest):
            blobs.put_bytes(b"x", expected_digest=bad)  # type: ignore[arg-type]
    assert _temp_files(blobs) == []


def test_stale_temp_files_are_swept_by_cutoff(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    crashed = blobs.tmp_dir / "blob-crashed.part"
    crashed.write_bytes(b"left by a crash")
    os.utime(crashed, (1000.0, 1000.0))
    live = blobs.open_writer()
    live.write(b"in progress")
    assert blobs.remove_stale_temp(older_than=2000.0) == 1
    assert not crashed.exists()
    assert live.temp_path.exists()
    live.abort()


def test_digests_skip_stray_files(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest, _ = blobs.put_bytes(b"real")
    (tmp_path / "sha256" / "zz").mkdir()
    (tmp_path / "sha256" / "zz" / "notes.txt").write_text("stray")
    assert list(blobs.digests()) == [digest]


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=5000), offset_fraction=st.floats(min_value=0, max_value=1))
def test_any_content_round_trips_from_any_offset(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, offset_fraction: float
) -> None:
    blobs = BlobStore(tmp_path_factory.mktemp("blobs"))
    digest, size = blobs.put_bytes(data)
    assert check_digest(digest) == digest == sha256_digest(data)
    offset = int(size * offset_fraction)
    with blobs.open_range(digest, offset) as reader:
        assert reader.read() == data[offset:]


def test_seal_checks_and_keeps_the_blob_invisible_until_commit(tmp_path: Path) -> None:
    """A push stages its artifacts sealed (verified, durable, invisible) and commits them only at the end;
    an abort after sealing leaves nothing."""
    blobs = BlobStore(tmp_path / "blobs")
    digest = sha256_digest(DATA)
    staged = blobs.open_writer(max_size=len(DATA))
    staged.write(DATA)
    assert staged.seal(digest) == (digest, len(DATA))
    assert not blobs.has(digest) and len(_temp_files(blobs)) == 1
    with pytest.raises(BlobDigestMismatch):
        staged.seal(sha256_digest(b"other"))
    assert staged.commit(digest) == (digest, len(DATA))
    assert blobs.has(digest) and _temp_files(blobs) == []

    dropped = blobs.open_writer()
    dropped.write(b"abandoned")
    dropped.seal()
    dropped.abort()
    assert _temp_files(blobs) == [] and not blobs.has(sha256_digest(b"abandoned"))
    with pytest.raises(StoreError):
        dropped.commit()


def test_quarantine_moves_aside_only_the_file_that_was_hashed(tmp_path: Path) -> None:
    """A corrupt blob is found by hashing; if good bytes replace it before it is moved aside (pushed again
    meanwhile), the good file stays served and nothing is recorded; the hashed file itself is moved aside."""
    blobs = BlobStore(tmp_path / "blobs")
    digest, _ = blobs.put_bytes(DATA)
    path = blobs.path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"x" + DATA[1:])  # corrupt in place
    actual, hashed = blobs.hash_blob(digest)
    assert actual != digest

    replacement = tmp_path / "good"
    replacement.write_bytes(DATA)
    os.replace(replacement, path)  # restored while the corrupt one was being judged
    at = datetime(2026, 12, 2, tzinfo=UTC)
    assert blobs.quarantine(digest, actual, "serve", at, hashed) is None
    assert path.read_bytes() == DATA and blobs.quarantined.records(digest) == []

    path.write_bytes(b"y" + DATA[1:])
    actual, hashed = blobs.hash_blob(digest)
    record = blobs.quarantine(digest, actual, "serve", at, hashed)
    assert record is not None and (record.digest, record.actual, record.size) == (digest, actual, len(DATA))
    assert not blobs.has(digest) and Path(record.path).read_bytes() == b"y" + DATA[1:]
    assert blobs.quarantine(digest, actual, "serve", at, hashed) is None  # gone: nothing to move
