"""The durable update journal (two copies, fallback, reset) and the bundle slots it falls back on."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge_runtime.update.errors import (
    DiskSpaceError,
    InvalidDigestError,
    JournalError,
    SlotNotFoundError,
    UnsafeArtifactNameError,
)
from edge_runtime.update.journal import Journal, decode_entry, encode_entry
from edge_runtime.update.record import UpdateRecord, UpdateState
from edge_runtime.update.slots import BundleSlots, format_bytes

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def clock() -> datetime:
    return NOW


def rec(state: UpdateState, committed: str | None = A) -> UpdateRecord:
    return replace(UpdateRecord.initial(NOW, committed=committed), state=state)


def written(tmp_path: Path, *records: UpdateRecord) -> Journal:
    journal = Journal(tmp_path / "j", clock=clock)
    journal.load()
    for r in records:
        journal.write(r)
    return journal


def make_slot(slots: BundleSlots, digest: str, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        slots.incoming_path(digest, name).write_bytes(data)
    return slots.promote_incoming(digest)


# --- journal ---------------------------------------------------------------------------------------------


def test_write_then_load_returns_newest_record(tmp_path: Path) -> None:
    first, second = rec(UpdateState.IDLE), rec(UpdateState.COMMITTED, committed=B)
    journal = written(tmp_path, first, second)
    assert journal.generation == 2
    fresh = Journal(tmp_path / "j", clock=clock)
    assert fresh.load() == second
    assert fresh.generation == 2
    assert decode_entry(fresh.previous_path.read_bytes()) == (1, first)
    assert not list((tmp_path / "j").glob(".*.tmp")), "temp files are renamed away"


def test_generations_continue_after_reload(tmp_path: Path) -> None:
    written(tmp_path, rec(UpdateState.IDLE))
    journal = Journal(tmp_path / "j", clock=clock)
    journal.load()
    journal.write(rec(UpdateState.DOWNLOADING, committed=B))
    assert decode_entry(journal.current_path.read_bytes())[0] == 2


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: b"\x00\xff garbage \x13" * 7, id="garbage"),
        pytest.param(lambda raw: raw.replace(b"committed", b"commitxed"), id="checksum-mismatch"),
        pytest.param(lambda raw: b'{"format": "something-else"}', id="wrong-format"),
    ],
)
def test_damaged_current_falls_back_to_previous(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    first, second = rec(UpdateState.IDLE), rec(UpdateState.TRIAL, committed=B)
    journal = written(tmp_path, first, second)
    journal.current_path.write_bytes(damage(journal.current_path.read_bytes()))
    fresh = Journal(tmp_path / "j", clock=clock)
    with capture_logs() as logs:
        assert fresh.load() == first
    fallback = [e for e in logs if e["event"] == "update.journal_fallback"]
    assert len(fallback) == 1 and "journal.json" in fallback[0]["problems"]
    # The journal keeps working from the fallback copy.
    fresh.write(rec(UpdateState.COMMITTED, committed=B))
    assert Journal(tmp_path / "j", clock=clock).load().state == UpdateState.COMMITTED


def test_missing_current_falls_back_to_previous(tmp_path: Path) -> None:
    first = rec(UpdateState.IDLE)
    journal = written(tmp_path, first, rec(UpdateState.CANARY))
    journal.current_path.unlink()
    assert Journal(tmp_path / "j", clock=clock).load() == first


def test_record_of_an_unknown_version_counts_as_damaged(tmp_path: Path) -> None:
    first = rec(UpdateState.IDLE)
    journal = written(tmp_path, first, rec(UpdateState.COMMITTED))
    text = json.dumps({**rec(UpdateState.COMMITTED).to_dict(), "record_version": 9})
    envelope = {
        "format": "edgefleet.update-journal",
        "generation": 5,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "record": text,
    }
    journal.current_path.write_text(json.dumps(envelope))
    with capture_logs() as logs:
        assert Journal(tmp_path / "j", clock=clock).load() == first
    assert "'record_version' must be 1 or 2, got 9" in logs[0]["problems"]["journal.json"]


def test_version_1_record_written_before_assignments_still_loads(tmp_path: Path) -> None:
    """A journal written by the runtime before assignments (record_version 1) keeps its committed bundle."""
    v1_fields = (
        "state entered_at updated_at committed previous candidate candidate_artifacts candidate_since "
        "download_attempts canary_attempts interruptions rejected failure canary_summary"
    ).split()
    current = replace(rec(UpdateState.ROLLED_BACK, committed=A), rejected=B).to_dict()
    v1 = {k: current[k] for k in v1_fields}
    text = json.dumps({**v1, "record_version": 1})
    envelope = {
        "format": "edgefleet.update-journal",
        "generation": 7,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "record": text,
    }
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / Journal.CURRENT).write_text(json.dumps(envelope))
    journal = Journal(tmp_path / "j", clock=clock)
    record = journal.load()
    assert (record.state, record.committed, record.rejected) == (UpdateState.ROLLED_BACK, A, B)
    assert record.assignment_id is None
    # Its rejection predates assignments: tied to none, so a controller's new assignment may retry it.
    assert record.rejections == ((B, "", ""),) and record.rejected_under(B, "") and not record.rejected_under(B, "as-1")
    assert record.committed_config is None and record.crashes == 0 and record.degraded is None
    # Written back, it is a current-version record and generations continue.
    journal.write(record)
    generation, again = decode_entry(journal.current_path.read_bytes())
    assert generation == 8 and again.record_version == 2 and again.committed == A


def test_both_damaged_resets_to_idle_on_newest_verified_slot(tmp_path: Path) -> None:
    slots = BundleSlots(tmp_path / "data")
    make_slot(slots, A, {"bundle.json": b"a"})
    make_slot(slots, B, {"bundle.json": b"b"})
    journal = written(tmp_path, rec(UpdateState.IDLE), rec(UpdateState.TRIAL))
    journal.current_path.write_bytes(b"")
    journal.previous_path.write_bytes(b"{trunc")
    fresh = Journal(tmp_path / "j", slots=slots, clock=clock)
    with capture_logs() as logs:
        record = fresh.load()
    assert record == UpdateRecord.initial(NOW, committed=B)
    reset = [e for e in logs if e["event"] == "update.journal_reset"]
    assert len(reset) == 1 and reset[0]["log_level"] == "error" and reset[0]["committed"] == B
    fresh.write(record)  # and it can go on
    assert Journal(tmp_path / "j", clock=clock).load() == record


def test_first_start_creates_an_idle_record(tmp_path: Path) -> None:
    with capture_logs() as logs:
        record = Journal(tmp_path / "j", slots=BundleSlots(tmp_path / "data"), clock=clock).load()
    assert record == UpdateRecord.initial(NOW)
    assert [e["event"] for e in logs] == ["update.journal_created"]


def test_write_before_load_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match=r"call load\(\) before write\(\)"):
        Journal(tmp_path / "j").write(rec(UpdateState.IDLE))


def test_entry_encoding_round_trips() -> None:
    record = rec(UpdateState.STAGED)
    assert decode_entry(encode_entry(record, 7)) == (7, record)


# --- slots -----------------------------------------------------------------------------------------------


def test_promoted_slot_is_read_only_and_listed(tmp_path: Path) -> None:
    slots = BundleSlots(tmp_path)
    path = make_slot(slots, A, {"bundle.json": b"{}", "engines/sm87.plan": b"plan"})
    assert path == slots.path_for(A) == tmp_path / "bundles" / ("a" * 64)
    assert slots.list() == [A] and slots.has(A) and not slots.has_incoming(A)
    for p in [path, *path.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o555 if p.is_dir() else 0o444), p


def test_promote_without_download_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SlotNotFoundError, match="download and verify it before promoting"):
        BundleSlots(tmp_path).promote_incoming(A)


def test_partial_size_for_resume(tmp_path: Path) -> None:
    slots = BundleSlots(tmp_path)
    assert slots.partial_size(A, "model.onnx") == 0
    slots.incoming_path(A, "model.onnx").write_bytes(b"x" * 123)
    assert slots.partial_size(A, "model.onnx") == 123


def test_remove_and_garbage_collection_keep_what_is_asked(tmp_path: Path) -> None:
    slots = BundleSlots(tmp_path)
    c = "sha256:" + "c" * 64
    for d in (A, B, c):
        make_slot(slots, d, {"bundle.json": d.encode()})
    slots.incoming_path(c, "model.onnx").write_bytes(b"partial")
    slots.incoming_path(B, "model.onnx").write_bytes(b"partial")
    (tmp_path / "trash" / "leftover").mkdir()
    assert slots.collect_garbage([A, None, c]) == [B]
    assert slots.list() == [A, c]
    assert slots.has_incoming(c) and not slots.has_incoming(B)
    assert list((tmp_path / "trash").iterdir()) == []
    assert slots.remove(A) and not slots.remove(A)
    assert slots.list() == [c]


def test_newest_slot_is_the_last_promoted(tmp_path: Path) -> None:
    slots = BundleSlots(tmp_path)
    assert slots.newest() is None
    make_slot(slots, B, {"bundle.json": b"b"})
    make_slot(slots, A, {"bundle.json": b"a"})
    assert slots.newest() == A


def test_check_disk_reports_numbers(tmp_path: Path) -> None:
    slots = BundleSlots(tmp_path)
    free = slots.free_bytes()
    slots.check_disk(0, 0)
    with pytest.raises(DiskSpaceError) as info:
        slots.check_disk(free + 812 * 1024**2, 256 * 1024**2)
    message = str(info.value)
    assert f"needs {format_bytes(free + 812 * 1024**2)} + 256.0 MiB margin" in message
    assert f"free on {tmp_path}" in message
    assert info.value.free > 0 and info.value.margin == 256 * 1024**2


def test_format_bytes() -> None:
    assert format_bytes(812 * 1024**2) == "812.0 MiB"
    assert format_bytes(1024**3) == "1.0 GiB"
    assert format_bytes(5) == "5.0 B"


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../b", "", "a//b", "a\\b", "./x"])
def test_unsafe_artifact_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeArtifactNameError, match="must be a relative path"):
        BundleSlots(tmp_path).incoming_path(A, name)


def test_invalid_digest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidDigestError, match="got 'sha256:XYZ'"):
        BundleSlots(tmp_path).path_for("sha256:XYZ")


# --- clean-stop marker -------------------------------------------------------------------------------------


def test_clean_stop_marker_counts_once_and_only_for_its_generation(tmp_path: Path) -> None:
    journal = written(tmp_path, rec(UpdateState.IDLE), rec(UpdateState.TRIAL))
    journal.mark_clean_stop()
    assert (tmp_path / "j" / Journal.CLEAN_STOP).is_file()
    restarted = Journal(tmp_path / "j", clock=clock)
    restarted.load()
    assert restarted.take_clean_stop() is True
    assert not (tmp_path / "j" / Journal.CLEAN_STOP).exists(), "taken: a later death is not clean"
    again = Journal(tmp_path / "j", clock=clock)
    again.load()
    assert again.take_clean_stop() is False


def test_stale_or_damaged_clean_stop_marker_means_the_process_died(tmp_path: Path) -> None:
    journal = written(tmp_path, rec(UpdateState.IDLE))
    journal.mark_clean_stop()
    journal.write(rec(UpdateState.CANARY))  # written after the marker: the marker is for an older record
    restarted = Journal(tmp_path / "j", clock=clock)
    restarted.load()
    with capture_logs() as logs:
        assert restarted.take_clean_stop() is False
    assert logs[0]["event"] == "update.clean_stop_stale" and logs[0]["marker_generation"] == 1
    (tmp_path / "j" / Journal.CLEAN_STOP).write_bytes(b"\x00garbage")
    damaged = Journal(tmp_path / "j", clock=clock)
    damaged.load()
    assert damaged.take_clean_stop() is False
    assert not (tmp_path / "j" / Journal.CLEAN_STOP).exists()
