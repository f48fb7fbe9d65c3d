"""Latency sketches on the wire: exact proto round trip, merged percentiles within 1 % of numpy's."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract.errors import SketchError
from edgefleet.contract.sketch import (
    RELATIVE_ACCURACY,
    merge_sketches,
    new_sketch,
    sketch_from_proto,
    sketch_to_proto,
)
from edgefleet.v1.telemetry_pb2 import LatencySketch

QUANTILES = (0.5, 0.9, 0.95, 0.99)


def _sketch_of(values: np.ndarray) -> LatencySketch:
    sketch = new_sketch()
    for v in values:
        sketch.add(float(v))
    return sketch_to_proto(sketch)


def _distributions(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "lognormal": rng.lognormal(mean=3.0, sigma=0.6, size=n),
        "normal_ms": np.abs(rng.normal(loc=35.0, scale=4.0, size=n)) + 0.5,
        "exponential_tail": 5.0 + rng.exponential(scale=20.0, size=n),
        "bimodal_throttled": np.concatenate(
            [rng.normal(18.0, 1.5, size=n * 3 // 4), rng.normal(55.0, 6.0, size=n - n * 3 // 4)]
        ).clip(0.1),
        "pareto": (rng.pareto(2.5, size=n) + 1) * 8.0,
    }


@pytest.mark.parametrize("name", ["lognormal", "normal_ms", "exponential_tail", "bimodal_throttled", "pareto"])
def test_merged_percentiles_within_one_percent_of_numpy(name: str) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    devices = [_distributions(rng, 2000)[name] for _ in range(10)]
    # Each device ships several windows; the controller merges all of them.
    protos = [_sketch_of(chunk) for values in devices for chunk in np.array_split(values, 4)]
    merged = merge_sketches(protos)
    everything = np.concatenate(devices)
    assert merged.count == everything.size
    assert merged.sum == pytest.approx(float(everything.sum()), rel=1e-9)
    for q in QUANTILES:
        # DDSketch answers the value at rank q*(n-1) (no interpolation): compare with numpy's 'lower'.
        exact = float(np.quantile(everything, q, method="lower"))
        got = merged.get_quantile_value(q)
        assert got is not None
        assert abs(got - exact) <= RELATIVE_ACCURACY * exact + 1e-12, (name, q, got, exact)


def test_proto_round_trip_is_exact() -> None:
    rng = np.random.default_rng(7)
    proto = _sketch_of(rng.lognormal(2.5, 1.0, size=5000))
    again = sketch_to_proto(sketch_from_proto(proto))
    assert again == proto
    assert again.SerializeToString(deterministic=True) == proto.SerializeToString(deterministic=True)
    # And the decoded sketch answers exactly what the original does.
    original = new_sketch()
    for v in rng.lognormal(2.5, 1.0, size=500):
        original.add(float(v))
    decoded = sketch_from_proto(sketch_to_proto(original))
    for q in QUANTILES:
        assert decoded.get_quantile_value(q) == original.get_quantile_value(q)
    assert (decoded.count, decoded.sum, decoded._min, decoded._max) == (
        original.count,
        original.sum,
        original._min,
        original._max,
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), max_size=60))
def test_round_trip_any_values(values: list[float]) -> None:
    sketch = new_sketch()
    for v in values:
        sketch.add(v)
    proto = sketch_to_proto(sketch)
    assert sketch_to_proto(sketch_from_proto(proto)) == proto
    # No empty bin travels at either edge.
    if proto.contiguous_bin_counts:
        assert proto.contiguous_bin_counts[0] > 0
        assert proto.contiguous_bin_counts[-1] > 0


def test_decoded_sketch_merges_with_a_native_one() -> None:
    native = new_sketch()
    native.add(10.0)
    decoded = sketch_from_proto(_sketch_of(np.array([20.0, 30.0])))
    native.merge(decoded)
    assert native.count == 3


def test_empty_sketch_and_empty_merge() -> None:
    proto = sketch_to_proto(new_sketch())
    assert (proto.count, proto.min, proto.max, len(proto.contiguous_bin_counts)) == (0, 0, 0, 0)
    assert sketch_to_proto(sketch_from_proto(proto)) == proto
    merged = merge_sketches([])
    assert merged.count == 0
    assert merge_sketches([proto, _sketch_of(np.array([4.0]))]).count == 1


def test_zero_latency_goes_to_zero_count() -> None:
    proto = _sketch_of(np.array([0.0, 0.0, 5.0]))
    assert proto.zero_count == 2
    assert merge_sketches([proto]).get_quantile_value(0.0) == 0


def test_negative_values_are_refused() -> None:
    sketch = new_sketch()
    sketch.add(-1.0)
    with pytest.raises(SketchError, match="negative"):
        sketch_to_proto(sketch)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"gamma": 1.0}, "gamma"),
        ({"gamma": math.nan}, "gamma"),
        ({"count": 99.0}, "count"),
        ({"sum": math.inf}, "sum"),
    ],
)
def test_malformed_protos_are_refused(change: dict[str, float], match: str) -> None:
    proto = _sketch_of(np.array([1.0, 2.0, 3.0]))
    for field, value in change.items():
        setattr(proto, field, value)
    with pytest.raises(SketchError, match=match):
        sketch_from_proto(proto)


def test_negative_bin_count_is_refused() -> None:
    proto = _sketch_of(np.array([1.0, 2.0]))
    proto.contiguous_bin_counts[0] = -1.0
    with pytest.raises(SketchError, match=r"contiguous_bin_counts\[0\]"):
        sketch_from_proto(proto)


def test_sketches_of_different_accuracy_do_not_merge() -> None:
    a = _sketch_of(np.array([1.0, 2.0]))
    b = LatencySketch()
    b.CopyFrom(a)
    b.gamma = (1 + 0.02) / (1 - 0.02)
    with pytest.raises(SketchError, match="gamma"):
        merge_sketches([a, b])
