"""The blob store's quarantine: where a blob found corrupt on the controller's disk is moved aside.

``<blob root>/quarantine/<64 hex>.<stamp>.blob`` keeps the corrupt bytes for inspection (the newest
``KEEP_PER_DIGEST`` per digest) and ``<64 hex>.<stamp>.json`` says what was found: the digest the bytes
hashed to, who found it (a serve, a device's report) and when. The blob's own name is then absent, so it is
never served again; pushing the bundle again stores good bytes under it. The records stay as history
(``GetBundle`` shows them). Time is passed in; this module never reads the clock.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from edgefleet.contract.digests import DIGEST_PREFIX
from edgefleet.contract.durable import fsync_dir, write_durably

KEEP_PER_DIGEST = 2


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """Blob ``digest`` was found hashing to ``actual`` by ``detected_by`` at ``at``; its bytes are at
    ``path`` (empty once pruned)."""

    digest: str
    actual: str
    size: int
    detected_by: str
    at: datetime
    path: str


class BlobQuarantine:
    """Corrupt blobs moved aside under ``root`` (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def move_aside(self, blob_path: Path, record: QuarantineRecord) -> QuarantineRecord | None:
        """Rename ``blob_path`` into the quarantine and write ``record``; None when the blob was gone
        already (another replica or request quarantined it first)."""
        self.root.mkdir(parents=True, exist_ok=True)
        hex_part = record.digest.removeprefix(DIGEST_PREFIX)
        stem = f"{hex_part}.{record.at.strftime('%Y%m%dT%H%M%S%fZ')}"
        target = self.root / f"{stem}.blob"
        try:
            os.replace(blob_path, target)
        except FileNotFoundError:
            return None
        fsync_dir(self.root)
        fsync_dir(blob_path.parent)
        stored = QuarantineRecord(**{**asdict(record), "path": str(target)})
        fields = {**asdict(stored), "at": stored.at.isoformat()}
        write_durably(self.root / f"{stem}.json", json.dumps(fields, sort_keys=True).encode())
        self._prune(hex_part)
        return stored

    def records(self, digest: str) -> list[QuarantineRecord]:
        """Every record of blob ``digest``, oldest first (unreadable record files are skipped)."""
        hex_part = digest.removeprefix(DIGEST_PREFIX)
        out = []
        for entry in sorted(self.root.glob(f"{hex_part}.*.json")) if self.root.is_dir() else ():
            with contextlib.suppress(OSError, ValueError, TypeError):
                fields = json.loads(entry.read_text(encoding="utf-8"))
                fields["at"] = datetime.fromisoformat(fields["at"])
                blob = Path(fields["path"])
                fields["path"] = str(blob) if blob.is_file() else ""
                out.append(QuarantineRecord(**fields))
        return out

    def _prune(self, hex_part: str) -> None:
        """Keep the bytes of the newest ``KEEP_PER_DIGEST`` quarantined copies of a digest (records stay)."""
        for old in sorted(self.root.glob(f"{hex_part}.*.blob"))[:-KEEP_PER_DIGEST]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
