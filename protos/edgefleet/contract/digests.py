"""Content addresses: the one ``sha256:<64 lowercase hex>`` helper and pattern of the whole tree.

Every digest the controller, the runtime and the pipeline compute or check (bundle manifests, artifacts,
effective configs, blobs) is ``sha256:`` followed by 64 lowercase hex digits. This module owns that format;
nothing else spells the pattern. A check is a full match: no surrounding text, no trailing newline.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from edgefleet.contract.shown import shown

__all__ = [
    "DIGEST_PATTERN",
    "DIGEST_PREFIX",
    "file_sha256_digest",
    "is_digest",
    "mismatch_reason",
    "mismatched_digests",
    "sha256_digest",
]

DIGEST_PREFIX = "sha256:"
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1024 * 1024
_MISMATCH = re.compile(rf"sha256 is {DIGEST_PATTERN.pattern}, expected ({DIGEST_PATTERN.pattern})")


def sha256_digest(data: bytes) -> str:
    """``sha256:<64 lowercase hex>`` of ``data``."""
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def file_sha256_digest(path: Path) -> str:
    """``sha256:<64 lowercase hex>`` of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return DIGEST_PREFIX + h.hexdigest()


def is_digest(value: object) -> bool:
    """Whether ``value`` is a string that is exactly ``sha256:<64 lowercase hex>``."""
    return isinstance(value, str) and DIGEST_PATTERN.fullmatch(value) is not None


def mismatch_reason(name: str, actual: str, expected: str) -> str:
    """How a device words an artifact ``name`` whose bytes hashed to ``actual``, not ``expected``, in the event
    it reports; the controller reads the digest back (``mismatched_digests``) and hashes its own copy again."""
    return f"artifact {shown(name)}: sha256 is {actual}, expected {expected}"


def mismatched_digests(text: str) -> list[str]:
    """The expected digests of every ``mismatch_reason`` in ``text``, each once, in order."""
    return list(dict.fromkeys(m.group(1) for m in _MISMATCH.finditer(text)))
