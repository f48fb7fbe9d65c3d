"""Metric windows: counts, sketches, confidence histogram, sensors and drops end up in the MetricWindow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from edge_runtime.telemetry import ObservationError, WindowAggregator, confidence_bin
from edgefleet.contract.sketch import merge_sketches, sketch_from_proto
from edgefleet.v1.telemetry_pb2 import SensorReading

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


def _aggregator(**kw: object) -> WindowAggregator:
    return WindowAggregator(bundle_digest=DIGEST, provider="CPUExecutionProvider", started_at=T0, **kw)  # type: ignore[arg-type]


def test_window_carries_counts_sketches_histogram_and_context() -> None:
    agg = _aggregator(window_s=10.0, conf_bins=10)
    rng = np.random.default_rng(3)
    e2e = rng.lognormal(3.0, 0.3, size=300)
    for i, ms in enumerate(e2e):
        agg.observe(float(ms), float(ms) * 0.6, top_confidence=(i % 10) / 10 + 0.05, detections=i % 3)
    agg.observe(0.0, 0.0, 0.0, error=True)
    sensors = [SensorReading(name="cpu_temp", kind="temp_c", value=61.5)]
    assert not agg.due(T0 + timedelta(seconds=9.9))
    assert agg.due(T0 + timedelta(seconds=10))
    window = agg.close(
        T0 + timedelta(seconds=10.5),
        sensors=sensors,
        memory_free=1 << 30,
        disk_free=5 << 30,
        dropped={"metrics": 4, "event": 0},
    )
    assert window.frames == 301
    assert window.errors == 1
    assert window.window_s == pytest.approx(10.5)
    assert window.window_start.ToDatetime(tzinfo=UTC) == T0
    assert window.bundle_digest == DIGEST
    assert window.provider == "CPUExecutionProvider"
    assert list(window.confidence.counts) == [30] * 10
    assert window.detections_per_frame == pytest.approx(np.mean([i % 3 for i in range(300)]))
    assert window.latency_e2e.count == 300
    p95 = sketch_from_proto(window.latency_e2e).get_quantile_value(0.95)
    exact = float(np.quantile(e2e, 0.95, method="lower"))
    assert p95 == pytest.approx(exact, rel=0.01)
    assert merge_sketches([window.latency_model]).sum == pytest.approx(float(e2e.sum()) * 0.6)
    assert list(window.sensors) == sensors
    assert (window.memory_free_bytes, window.disk_free_bytes) == (1 << 30, 5 << 30)
    assert dict(window.dropped) == {"metrics": 4}


def test_close_starts_the_next_window_empty() -> None:
    agg = _aggregator()
    agg.observe(10.0, 5.0, 0.9)
    first = agg.close(T0 + timedelta(seconds=10))
    second = agg.close(T0 + timedelta(seconds=20))
    assert first.frames == 1
    assert second.frames == 0
    assert second.window_start.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=10)
    assert second.latency_e2e.count == 0
    assert sum(second.confidence.counts) == 0
    assert second.detections_per_frame == 0.0


def test_clock_stepping_back_gives_zero_span() -> None:
    agg = _aggregator()
    assert agg.close(T0 - timedelta(seconds=30)).window_s == 0.0


def test_confidence_bins_are_equal_width_and_one_falls_in_the_last() -> None:
    assert [confidence_bin(c, 20) for c in (0.0, 0.049, 0.05, 0.5, 0.999, 1.0)] == [0, 0, 1, 10, 19, 19]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1.0, 1.0, 0.5), "e2e_ms"),
        ((1.0, float("nan"), 0.5), "model_ms"),
        ((1.0, 1.0, 1.5), "top_confidence"),
    ],
)
def test_out_of_range_observations_are_refused(args: tuple[float, float, float], match: str) -> None:
    with pytest.raises(ObservationError, match=match):
        _aggregator().observe(*args)


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ObservationError, match="window_s"):
        _aggregator(window_s=0)
    with pytest.raises(ObservationError, match="conf_bins"):
        _aggregator(conf_bins=0)
