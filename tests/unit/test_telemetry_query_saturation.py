"""Per-window counts are bounded by what a device can produce, at both ends (``request_bounds`` and
``window_bounds``), and every count QueryTelemetry answers is clamped to its field: no stored row, gap or
sketch can make ``summarise`` fail to serialize."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from edgefleet.contract import request_bounds
from edgefleet.contract.request_specs import RequestBoundsError
from edgefleet.contract.sketch import new_sketch, sketch_to_proto
from edgefleet.contract.telemetry_bounds import MAX_FPS, MAX_WINDOW_DROPPED, MAX_WINDOW_FRAMES, MAX_WINDOW_S
from edgefleet.v1.telemetry_pb2 import ConfidenceHistogram, LatencySketch, MetricWindow
from edgefleet_controller.store.telemetry import GapRow, WindowRow
from edgefleet_controller.telemetry.query import MAX_UINT32, MAX_UINT64, percentiles, summarise
from edgefleet_controller.telemetry.window_bounds import WindowInvalid, check_window, row_problem

T0 = datetime(2026, 1, 1, tzinfo=UTC)
A = "sha256:" + "a" * 64
SKETCH = sketch_to_proto(new_sketch())
BLOB = SKETCH.SerializeToString()


def row(device: str, frames: int, errors: int = 0, confidence: tuple[int, ...] = ()) -> WindowRow:
    return WindowRow(device, "lab", A, T0, 10.0, frames, errors, BLOB, BLOB, confidence, "[]", False)


def gap(device: str, frames: int, known: bool = True) -> GapRow:
    return GapRow(device, "lab", A, T0, T0 + timedelta(seconds=3), frames, known, "process_killed")


def window(**fields: object) -> MetricWindow:
    sketches = {"latency_e2e": SKETCH, "latency_model": SKETCH}
    w = MetricWindow(window_s=10.0, bundle_digest=A, **(sketches | fields))  # type: ignore[arg-type]
    w.window_start.FromDatetime(T0)
    return w


def huge_sketch() -> LatencySketch:
    """A fleet-shaped sketch of one 5 ms bin counting 1e30 latencies."""
    sk = new_sketch()
    sk.add(5.0)
    proto = sketch_to_proto(sk)
    proto.contiguous_bin_counts[0] = 1e30
    proto.count = 1e30
    return proto


def test_the_frame_bound_is_a_day_at_ten_thousand_fps() -> None:
    assert MAX_WINDOW_FRAMES == MAX_WINDOW_S * MAX_FPS == 864_000_000
    # any plausible number of such windows sums far inside uint64
    assert MAX_WINDOW_FRAMES * 10**9 < MAX_UINT64


@pytest.mark.parametrize(
    "fields",
    [
        {"frames": MAX_WINDOW_FRAMES + 1},
        {"errors": MAX_WINDOW_FRAMES + 1},
        {"frames": 2**62},
        {"confidence": ConfidenceHistogram(counts=[0, MAX_WINDOW_FRAMES + 1])},
        {"dropped": {"review": MAX_WINDOW_DROPPED + 1}},
    ],
)
def test_the_request_bounds_refuse_a_count_no_device_can_produce(fields: dict[str, object]) -> None:
    with pytest.raises(RequestBoundsError):
        request_bounds.check(window(**fields))


def test_the_request_bounds_accept_the_largest_counts() -> None:
    request_bounds.check(
        window(
            frames=MAX_WINDOW_FRAMES,
            errors=MAX_WINDOW_FRAMES,
            confidence=ConfidenceHistogram(counts=[MAX_WINDOW_FRAMES]),
            dropped={"review": MAX_WINDOW_DROPPED},
        )
    )
    check_window(window(frames=MAX_WINDOW_FRAMES, errors=MAX_WINDOW_FRAMES))


@pytest.mark.parametrize("field", ["frames", "errors"])
def test_ingest_names_the_field_the_value_and_the_device_rate(field: str) -> None:
    with pytest.raises(WindowInvalid, match=rf"{field} must be within 0\.\.{MAX_WINDOW_FRAMES} .*10000 fps.*got 4611"):
        check_window(window(**{field: 2**62}))


def test_a_sketch_counting_more_than_a_window_of_frames_is_refused() -> None:
    proto = huge_sketch()
    with pytest.raises(WindowInvalid, match=r"latency_model\.count must be at most 864000000"):
        check_window(window(latency_model=proto))
    problem = row_problem(10.0, 1, 0, BLOB, proto.SerializeToString(), ())
    assert problem is not None and problem.startswith("latency_model.count")


def test_rows_an_older_version_stored_beyond_the_bounds_are_skipped_and_the_rest_sums() -> None:
    rows = [row("bad", 2**62) for _ in range(8)] + [row("bad", 5, errors=2**63 - 1)]
    rows += [row("bad", 0, confidence=(2**62,)), row("good", 20), row("good", MAX_WINDOW_FRAMES)]
    out = summarise(rows, "site", {})
    out.SerializeToString()  # the old failure: ValueError: Value out of range
    assert out.skipped_records == 10
    (lab,) = out.rows
    assert (lab.key, lab.frames, lab.errors) == ("lab", 20 + MAX_WINDOW_FRAMES, 0)


def test_gap_sums_beyond_uint64_are_clamped_and_flagged() -> None:
    gaps = [gap("d1", 2**63 - 1) for _ in range(4)] + [gap("d1", 2**63 - 1, known=False) for _ in range(3)]
    with capture_logs() as logs:
        out = summarise([row("d1", 10)], "device", {}, gaps=gaps)
    out.SerializeToString()
    (d1,) = out.rows
    assert (d1.frames, d1.frames_lost, d1.frames_lost_at_least, d1.gaps, d1.gaps_unknown) == (
        10,
        MAX_UINT64,
        MAX_UINT64,
        7,
        3,
    )
    clamped = [e for e in logs if e["event"] == "telemetry.query_count_clamped"]
    assert {e["field"] for e in clamped} == {"frames_lost", "frames_lost_at_least"}
    assert all(e["limit"] == MAX_UINT64 and "d1" in e["key"] for e in clamped)
    assert MAX_UINT32 == 2**32 - 1


def test_a_merged_sketch_count_beyond_uint64_is_clamped() -> None:
    proto = huge_sketch()
    with capture_logs() as logs:
        p = percentiles([proto.SerializeToString()] * 2, "d1", "latency_e2e")
    assert p.count == MAX_UINT64 and math.isclose(p.p50_ms, 5.0, rel_tol=0.02)
    assert [e["field"] for e in logs if e["event"] == "telemetry.query_count_clamped"] == ["latency_e2e.count"]
