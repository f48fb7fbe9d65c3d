"""QueryTelemetry by precision variant (``telemetry.query.summarise``) and fleetctl's PRECISION cell: every
row names the variants its windows were served with; split, each (key, variant) is its own row with its own
percentiles, frames and throttling; frame gaps (which carry no variant) go to the group's empty-precision row."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from edgefleet.contract.sketch import new_sketch, sketch_to_proto
from edgefleet.v1.fleet_pb2 import TelemetryRow
from edgefleet_controller.store.telemetry import GapRow, WindowRow
from edgefleet_controller.telemetry.query import summarise
from fleetctl.telemetry_cmds import precision_text, query_row, top_row

T0 = datetime(2026, 1, 1, tzinfo=UTC)
A = "sha256:" + "a" * 64


def window(device: str, precision: str, latency_ms: float, frames: int = 10, *, throttling: bool = False) -> WindowRow:
    sk = new_sketch()
    for _ in range(frames):
        sk.add(latency_ms)
    blob = sketch_to_proto(sk).SerializeToString()
    start = T0 + timedelta(seconds=latency_ms)
    return WindowRow(
        device, "lab", A, start, 10.0, frames, 0, blob, blob, (frames,), "[]", throttling, precision=precision
    )


def gap(device: str, frames: int) -> GapRow:
    return GapRow(device, "lab", A, T0, T0 + timedelta(seconds=3), frames, True, "process_killed")


ROWS = [
    window("d1", "fp32", 30.0),
    window("d1", "int8-u8s8", 10.0, 20),
    window("d1", "", 50.0),
    window("d2", "int8-u8s8", 12.0, 5, throttling=True),
]


def test_unsplit_rows_name_every_variant_their_latency_mixes() -> None:
    out = {r.key: r for r in summarise(ROWS, "device", {}).rows}
    assert list(out["d1"].precisions) == ["fp32", "int8-u8s8"] and out["d1"].precision == ""
    assert list(out["d2"].precisions) == ["int8-u8s8"]
    assert out["d1"].frames == 40


def test_split_rows_carry_their_variants_own_figures() -> None:
    out = summarise(ROWS, "device", {}, by_precision=True)
    assert [(r.key, r.precision, r.frames) for r in out.rows] == [
        ("d1", "", 10),
        ("d1", "fp32", 10),
        ("d1", "int8-u8s8", 20),
        ("d2", "int8-u8s8", 5),
    ]
    p50 = {(r.key, r.precision): r.latency_e2e.p50_ms for r in out.rows}
    assert math.isclose(p50[("d1", "fp32")], 30.0, rel_tol=0.02)
    assert math.isclose(p50[("d1", "int8-u8s8")], 10.0, rel_tol=0.02)
    assert [r.throttling for r in out.rows] == [False, False, False, True]
    by_site = summarise(ROWS, "site", {}, by_precision=True)
    assert [(r.precision, r.frames) for r in by_site.rows] == [("", 10), ("fp32", 10), ("int8-u8s8", 25)]


def test_split_gaps_go_to_the_groups_empty_precision_row() -> None:
    out = summarise(ROWS, "device", {}, gaps=[gap("d1", 7), gap("d2", 3)], by_precision=True)
    lost = {(r.key, r.precision): (r.frames, r.frames_lost) for r in out.rows}
    assert lost == {
        ("d1", ""): (10, 7),
        ("d1", "fp32"): (10, 0),
        ("d1", "int8-u8s8"): (20, 0),
        ("d2", ""): (0, 3),  # d2 has no window without a variant: its gaps get a row of their own
        ("d2", "int8-u8s8"): (5, 0),
    }


def test_fleetctl_precision_cell() -> None:
    assert precision_text(TelemetryRow()) == "-"
    assert precision_text(TelemetryRow(precisions=["fp32", "int8-u8s8"])) == "fp32,int8-u8s8"
    assert precision_text(TelemetryRow(precision="int8-u8s8", precisions=["int8-u8s8"]), split=True) == "int8-u8s8"
    assert precision_text(TelemetryRow(), split=True) == "-"
    row = TelemetryRow(key="d1", precision="fp16", precisions=["fp16"])
    assert top_row(row, {"d1": "cam-1"})[:2] == ["cam-1", "fp16"]
    assert query_row(row, "device", {}, wide=False, by_precision=True)[:2] == ["d1", "fp16"]
