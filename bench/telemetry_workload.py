"""The telemetry benchmarks' workload: realistic ``MetricWindow`` records, as a device's ``WindowAggregator``
closes them (300 frames of a ~30 FPS detector: two latency sketches, a confidence histogram, sensors)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import numpy as np

from edge_runtime.telemetry import WindowAggregator
from edgefleet.v1.telemetry_pb2 import MetricWindow, SensorReading

#: What a desktop-class device reports: temperatures and clocks that hold a value.
PRESENT_SENSORS = [
    SensorReading(name="cpu_temp", kind="temp_c", value=61.5),
    SensorReading(name="gpu_temp", kind="temp_c", value=58.0),
    SensorReading(name="cpu_clock", kind="clock_mhz", value=1420.8, max_value=1510.4),
    SensorReading(name="gpu_clock", kind="clock_mhz", value=612.0, max_value=624.75),
]
#: A Jetson's thermal zones, under their own names.
TEGRA_THERMALS = [
    SensorReading(name="CPU-therm", kind="temp_c", value=61.5),
    SensorReading(name="GPU-therm", kind="temp_c", value=58.0),
]
#: A sensor that is there but reads nothing.
MISSING_SENSOR = SensorReading(name="soc-thermal", kind="temp_c", missing=True)


def detector_window(
    seed: int,
    *,
    started_at: datetime,
    bundle_digest: str,
    provider: str,
    sensors: Sequence[SensorReading],
    dropped: Mapping[str, int] | None = None,
) -> MetricWindow:
    """One 10 s window of 300 seeded frames (lognormal latencies around 25 ms, beta confidences)."""
    rng = np.random.default_rng(seed)
    agg = WindowAggregator(bundle_digest=bundle_digest, provider=provider, started_at=started_at)
    for ms in rng.lognormal(3.2, 0.25, size=300):
        agg.observe(float(ms), float(ms) * 0.7, float(rng.beta(5, 2)), detections=int(rng.integers(0, 6)))
    end = started_at + timedelta(seconds=10)
    return agg.close(end, sensors=sensors, memory_free=3 << 30, disk_free=20 << 30, dropped=dropped)
