"""Thermal throttling: clock drop AND temperature rise AND latency increase, never one alone."""

from __future__ import annotations

from edgefleet.v1.telemetry_pb2 import SensorReading
from edgefleet_controller.telemetry.thermal import ThermalPoint, assess_throttling, thermal_point

COOL = ThermalPoint(clock_ratio=1.0, temp_c=55.0, p95_ms=20.0)


def test_clock_drop_with_heat_and_slower_frames_is_throttling() -> None:
    hot = ThermalPoint(clock_ratio=0.6, temp_c=85.0, p95_ms=30.0)
    a = assess_throttling([COOL, COOL, hot])
    assert a.throttling
    assert a.numbers() == {"clock_ratio": 0.6, "temp_rise_c": 30.0, "latency_increase": 0.5}


def test_any_condition_alone_is_not_throttling() -> None:
    assert not assess_throttling([COOL, ThermalPoint(0.5, 56.0, 21.0)]).throttling  # idle governor
    assert not assess_throttling([COOL, ThermalPoint(1.0, 90.0, 30.0)]).throttling  # hot, clocks hold
    assert not assess_throttling([COOL, ThermalPoint(0.5, 90.0, 20.5)]).throttling  # latency unaffected


def test_missing_sensors_never_guess() -> None:
    assert not assess_throttling([ThermalPoint(None, None, 20.0), ThermalPoint(None, None, 40.0)]).throttling
    assert not assess_throttling([]).throttling


def test_point_from_summary_readings() -> None:
    p = thermal_point(
        [
            SensorReading(name="cpu_clock", kind="clock_mhz", value=1200, max_value=2000),
            SensorReading(name="gpu_clock", kind="clock_mhz", value=900, max_value=1000),
            SensorReading(name="cpu_temp", kind="temp_c", value=70),
            SensorReading(name="gpu_temp", kind="temp_c", missing=True),
        ],
        12.0,
    )
    assert p == ThermalPoint(0.6, 70.0, 12.0)
