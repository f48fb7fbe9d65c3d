"""QueryTelemetry's frame accounting (``telemetry.query.summarise`` over stored windows and declared gaps) and
how ``fleetctl telemetry query`` prints it: stored frames beside frames declared lost, unknown-count
intervals counted apart, a group that only lost frames still shown."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.contract.sketch import new_sketch, sketch_to_proto
from edgefleet.v1.fleet_pb2 import TelemetryRow
from edgefleet_controller.store.telemetry import GapRow, WindowRow
from edgefleet_controller.telemetry.query import summarise
from fleetctl.telemetry_cmds import lost_text

T0 = datetime(2026, 1, 1, tzinfo=UTC)
A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def window(device: str, site: str, bundle: str, frames: int) -> WindowRow:
    sk = new_sketch()
    for _ in range(frames):
        sk.add(5.0)
    blob = sketch_to_proto(sk).SerializeToString()
    return WindowRow(device, site, bundle, T0, 10.0, frames, 0, blob, blob, (frames,), "[]", False)


def gap(device: str, site: str, bundle: str, frames: int, known: bool = True) -> GapRow:
    return GapRow(device, site, bundle, T0, T0 + timedelta(seconds=3), frames, known, "process_killed")


def test_stored_and_lost_frames_per_device() -> None:
    rows = [window("d1", "lab", A, 100), window("d1", "lab", A, 50), window("d2", "lab", A, 70)]
    gaps = [gap("d1", "lab", A, 17), gap("d1", "lab", A, 0, known=False), gap("d1", "lab", A, 4, known=False)]
    out = {r.key: r for r in summarise(rows, "device", {}, gaps=gaps).rows}
    assert (out["d1"].frames, out["d1"].frames_lost, out["d1"].gaps, out["d1"].gaps_unknown) == (150, 17, 3, 2)
    assert out["d1"].frames_lost_at_least == 4
    assert (out["d2"].frames, out["d2"].frames_lost, out["d2"].gaps) == (70, 0, 0)


@pytest.mark.parametrize(("group_by", "key"), [("site", "east"), ("bundle", B), ("device", "d3")])
def test_a_group_that_only_lost_frames_still_has_a_row(group_by: str, key: str) -> None:
    out = summarise([window("d1", "lab", A, 10)], group_by, {}, gaps=[gap("d3", "east", B, 9)])
    lost = [r for r in out.rows if r.key == key]
    assert len(lost) == 1 and (lost[0].frames, lost[0].frames_lost, lost[0].gaps) == (0, 9, 1)
    assert math.isnan(lost[0].drift_psi)


def test_without_gaps_nothing_changes() -> None:
    (row,) = summarise([window("d1", "lab", A, 10)], "device", {}).rows
    assert (row.frames, row.frames_lost, row.gaps, row.gaps_unknown) == (10, 0, 0, 0)


def test_fleetctl_lost_column() -> None:
    assert lost_text(TelemetryRow()) == "0"
    assert lost_text(TelemetryRow(frames_lost=17, gaps=1)) == "17"
    assert lost_text(TelemetryRow(frames_lost=17, gaps=3, gaps_unknown=2, frames_lost_at_least=4)) == (
        "17 + 2 gaps of unknown count (≥4)"
    )
    assert lost_text(TelemetryRow(gaps=1, gaps_unknown=1)) == "0 + 1 gap of unknown count"
