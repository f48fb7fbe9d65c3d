"""The fleet's sketch and window bounds: what a device builds passes, each broken bound is named."""

from __future__ import annotations

import pytest

from edgefleet.contract.errors import SketchError
from edgefleet.contract.sketch import (
    BIN_KEY_MAX,
    BIN_KEY_MIN,
    MAX_LATENCY_MS,
    MIN_LATENCY_MS,
    check_fleet_sketch,
    new_sketch,
    sketch_to_proto,
)
from edgefleet_controller.telemetry.window_bounds import row_problem


def test_a_device_sketch_spanning_the_whole_measurable_range_passes() -> None:
    sketch = new_sketch()
    for v in (MIN_LATENCY_MS, 1.0, 250.0, MAX_LATENCY_MS):
        sketch.add(v)
    proto = sketch_to_proto(sketch)
    check_fleet_sketch(proto, "latency_e2e")
    assert proto.contiguous_bin_index_offset == BIN_KEY_MIN
    assert proto.contiguous_bin_index_offset + len(proto.contiguous_bin_counts) - 1 == BIN_KEY_MAX
    assert BIN_KEY_MAX - BIN_KEY_MIN < 2000  # bounded merge work per sketch
    blob = proto.SerializeToString()
    assert row_problem(10.0, 4, 0, blob, blob, [0, 4]) is None


def test_an_offset_far_below_the_range_is_named_with_its_bound() -> None:
    proto = sketch_to_proto(new_sketch())
    proto.contiguous_bin_counts.append(1.0)
    proto.count = 1.0
    proto.contiguous_bin_index_offset = -30_000_000
    with pytest.raises(SketchError, match=rf"latency_model: bins -30000000\.\.-30000000 .* within keys {BIN_KEY_MIN}"):
        check_fleet_sketch(proto, "latency_model")
    problem = row_problem(10.0, 1, 0, sketch_to_proto(new_sketch()).SerializeToString(), proto.SerializeToString(), [])
    assert problem is not None and "-30000000" in problem


def test_an_empty_stored_blob_is_a_sketch_of_gamma_zero_and_is_refused() -> None:
    ok = sketch_to_proto(new_sketch()).SerializeToString()
    problem = row_problem(10.0, 0, 0, b"", ok, [])
    assert problem is not None and problem.startswith("latency_e2e.gamma must be the fleet's")
