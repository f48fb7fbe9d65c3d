"""The durable update journal: the one ``UpdateRecord`` the device must not lose, kept in two copies.

Files in the journal directory::

    journal.json        the current record
    journal.prev.json   the record before it
    clean-stop.json     present only between a clean stop and the next start (see below)

Each file is an envelope ``{"format", "generation", "sha256", "record"}`` where ``record`` is the record's
JSON text and ``sha256`` its checksum. ``write`` first rewrites ``journal.prev.json`` with the last good
current bytes, then ``journal.json`` with the new record; each file is written as temp file + fsync +
rename + fsync of the directory, so at every instant at least one intact copy exists, and the newest intact
copy is either the new record or the one before it — never a mix.

The clean-stop marker tells the next start that the previous process stopped on purpose (SIGTERM): the
driver writes it (``mark_clean_stop``) after its last journal write, naming the generation it stopped at;
the next start takes it (``take_clean_stop``: read, then removed durably before anything else runs) and it
counts only when it names the generation loaded. No marker, a damaged one, or one for another generation
means the process died: that is what the update machine's crash attribution relies on.

``load`` takes the intact copy with the highest generation. A damaged, truncated or empty current file
falls back to the previous copy (``update.journal_fallback``). When no copy is intact the device does not
crash-loop: it starts from a safe ``idle`` record whose committed bundle is the newest verified slot on
disk (``update.journal_reset``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from edge_runtime.update.errors import JournalError, RecordFormatError
from edge_runtime.update.record import UpdateRecord
from edge_runtime.update.slots import BundleSlots
from edgefleet.contract.durable import fsync_dir, read_durable, write_durably
from edgefleet.contract.shown import shown

_FORMAT = "edgefleet.update-journal"

log = structlog.get_logger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Copy:
    generation: int
    record: UpdateRecord
    raw: bytes


def encode_entry(record: UpdateRecord, generation: int) -> bytes:
    """The bytes of one journal copy holding ``record`` at ``generation``."""
    text = record.to_json()
    envelope = {
        "format": _FORMAT,
        "generation": generation,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "record": text,
    }
    return (json.dumps(envelope, sort_keys=True) + "\n").encode()


def decode_entry(raw: bytes) -> tuple[int, UpdateRecord]:
    """Parse one journal copy; raises ``RecordFormatError`` saying what is wrong with it."""
    if not raw.strip():
        raise RecordFormatError("journal copy is empty")
    try:
        envelope = json.loads(raw)
    except ValueError as exc:
        raise RecordFormatError(f"journal copy is not valid JSON ({exc}); it is truncated or damaged") from None
    if not isinstance(envelope, dict) or envelope.get("format") != _FORMAT:
        raise RecordFormatError(f"journal copy is not a {_FORMAT} envelope")
    generation, text, checksum = envelope.get("generation"), envelope.get("record"), envelope.get("sha256")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
        raise RecordFormatError(f"journal copy: field 'generation' must be an integer >= 1, got {shown(generation)}")
    if not isinstance(text, str) or not isinstance(checksum, str):
        raise RecordFormatError("journal copy: fields 'record' and 'sha256' must be strings")
    actual = hashlib.sha256(text.encode()).hexdigest()
    if actual != checksum:
        raise RecordFormatError(f"journal copy: checksum mismatch (stored {checksum}, computed {actual})")
    return generation, UpdateRecord.from_json(text)


class Journal:
    """The update journal in ``directory``. Call ``load`` once at start-up, then ``write`` per transition."""

    CURRENT = "journal.json"
    PREVIOUS = "journal.prev.json"
    CLEAN_STOP = "clean-stop.json"

    def __init__(
        self,
        directory: Path,
        *,
        slots: BundleSlots | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._slots = slots
        self._clock = clock
        self._generation: int | None = None
        self._last_good: bytes | None = None

    @property
    def current_path(self) -> Path:
        return self.directory / self.CURRENT

    @property
    def previous_path(self) -> Path:
        return self.directory / self.PREVIOUS

    @property
    def generation(self) -> int | None:
        """The generation of the record last loaded or written (None before ``load``)."""
        return self._generation

    def load(self) -> UpdateRecord:
        """The newest intact record; a safe ``idle`` record when none exists or none is intact."""
        copies: list[_Copy] = []
        problems: dict[str, str] = {}
        present = 0
        for path in (self.current_path, self.previous_path):
            try:
                raw = read_durable(path)
                if raw is None:
                    continue
                present += 1
                copies.append(_Copy(*decode_entry(raw), raw))
            except OSError as exc:
                present += 1
                problems[path.name] = f"unreadable: {exc}"
            except RecordFormatError as exc:
                problems[path.name] = str(exc)

        if copies:
            best = max(copies, key=lambda c: c.generation)
            if problems:
                log.warning(
                    "update.journal_fallback",
                    directory=str(self.directory),
                    problems=problems,
                    generation=best.generation,
                    state=best.record.state.value,
                )
            self._generation = best.generation
            self._last_good = best.raw
            return best.record

        committed = self._slots.newest() if self._slots is not None else None
        record = UpdateRecord.initial(self._clock(), committed=committed)
        if present:
            log.error(
                "update.journal_reset",
                directory=str(self.directory),
                problems=problems,
                committed=committed,
                hint="both journal copies are damaged; serving the newest verified slot",
            )
        else:
            log.info("update.journal_created", directory=str(self.directory), committed=committed)
        self._generation = 0
        self._last_good = None
        return record

    def write(self, record: UpdateRecord) -> None:
        """Persist ``record`` durably; when this returns, a crash cannot lose it."""
        if self._generation is None:
            raise JournalError(f"journal {self.directory}: call load() before write() so generations continue")
        generation = self._generation + 1
        data = encode_entry(record, generation)
        try:
            if self._last_good is not None:
                self._replace(self.previous_path, self._last_good)
            self._replace(self.current_path, data)
        except OSError as exc:
            raise JournalError(
                f"journal {self.directory}: cannot write generation {generation}: {exc}; "
                "check that the data disk is writable and not full"
            ) from exc
        self._generation = generation
        self._last_good = data

    def mark_clean_stop(self) -> None:
        """Record that the process stops cleanly now, at the generation last written or loaded."""
        if self._generation is None:
            raise JournalError(f"journal {self.directory}: call load() before mark_clean_stop()")
        data = json.dumps({"generation": self._generation, "at": self._clock().isoformat()}).encode()
        try:
            write_durably(self.directory / self.CLEAN_STOP, data)
        except OSError as exc:
            raise JournalError(f"journal {self.directory}: cannot write the clean-stop marker: {exc}") from exc

    def take_clean_stop(self) -> bool:
        """Whether the previous process stopped cleanly at the loaded generation; removes the marker.

        Call right after ``load``: once this returns, a death of this process is no longer clean."""
        path = self.directory / self.CLEAN_STOP
        try:
            raw = read_durable(path)
        except OSError as exc:
            log.warning("update.clean_stop_unreadable", path=str(path), error=str(exc))
            raw = b""
        if raw is None:
            return False
        try:
            marker = json.loads(raw)
            stopped_at = marker.get("generation") if isinstance(marker, dict) else None
        except ValueError:
            stopped_at = None
        try:
            path.unlink()
            fsync_dir(self.directory)
        except OSError as exc:
            raise JournalError(
                f"journal {self.directory}: cannot remove the clean-stop marker {path.name}: {exc}; "
                "check that the data disk is writable"
            ) from exc
        clean = stopped_at == self._generation and self._generation is not None
        if not clean:
            log.warning("update.clean_stop_stale", marker_generation=stopped_at, loaded_generation=self._generation)
        return clean

    def _replace(self, target: Path, data: bytes) -> None:
        write_durably(target, data)
