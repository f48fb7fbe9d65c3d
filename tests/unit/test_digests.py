"""The contract's one digest helper and pattern."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgefleet.contract.digests import (
    DIGEST_PREFIX,
    file_sha256_digest,
    is_digest,
    mismatch_reason,
    mismatched_digests,
    sha256_digest,
)


def test_sha256_digest_is_prefixed_lowercase_hex() -> None:
    assert sha256_digest(b"abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert is_digest(sha256_digest(b""))


def test_file_digest_equals_bytes_digest(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert file_sha256_digest(path) == sha256_digest(data)


def test_is_digest_is_a_full_match() -> None:
    good = DIGEST_PREFIX + "a" * 64
    assert is_digest(good)
    for bad in (good + "\n", " " + good, good.upper(), "sha256:" + "a" * 63, "a" * 64, None, 3, b"x"):
        assert not is_digest(bad), bad


def test_a_mismatch_reason_reads_back_as_the_expected_digest() -> None:
    """The runtime words a digest mismatch with ``mismatch_reason``; the controller re-verifies what
    ``mismatched_digests`` reads from the reported text: the expected digest, each once, never the actual."""
    a, b, actual = (sha256_digest(x) for x in (b"a", b"b", b"corrupt"))
    text = f"verification failed: {mismatch_reason('model.onnx', actual, a)}; the download is corrupt"
    assert mismatched_digests(text) == [a]
    twice = f"{text} / {mismatch_reason('labels.txt', actual, b)} / {mismatch_reason('x', actual, a)}"
    assert mismatched_digests(twice) == [a, b]
    assert mismatched_digests(f"sha256 is {actual}, expected {a[:-1]}") == []  # a truncated digest is none
    assert mismatched_digests("DATA_LOSS: artifact sha256:" + "a" * 64 + " is corrupt") == []
