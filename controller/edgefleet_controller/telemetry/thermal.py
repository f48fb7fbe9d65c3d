"""Thermal throttling from metric windows: clock drop vs the clock's maximum, with a temperature rise and
a latency increase over the device's recent windows. Pure: no I/O, no clock.

Rule (``ThrottlePolicy``): the newest window shows throttling when ALL of

- its clock ratio (the lowest ``value / max_value`` of the ``cpu_clock`` and ``gpu_clock`` readings that
  are present with a known maximum) is at most ``1 - clock_drop`` (default: 15 % below maximum);
- its temperature (the hottest of ``cpu_temp`` / ``gpu_temp``) is at least ``temp_rise_c`` (5 °C) above the
  coolest of the earlier recent windows;
- its p95 end-to-end latency is at least ``latency_increase`` (10 %) above the fastest earlier window.

A clock drop alone is a governor saving power on an idle box; a hot box whose clocks hold is fine; and a
slow window without a clock drop is a scene or load change. Only the three together are throttling that
costs latency. Missing sensors make the rule answer False (never a guess).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edgefleet.v1.telemetry_pb2 import SensorReading

CLOCK_READINGS = ("cpu_clock", "gpu_clock")
TEMP_READINGS = ("cpu_temp", "gpu_temp")


@dataclass(frozen=True, slots=True)
class ThermalPoint:
    """What one window says about heat: clock ratio (0..1], hottest temperature, p95 latency."""

    clock_ratio: float | None
    temp_c: float | None
    p95_ms: float | None


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    clock_drop: float = 0.15
    temp_rise_c: float = 5.0
    latency_increase: float = 0.10
    #: Windows (the newest included) the rule looks at.
    windows: int = 6


@dataclass(frozen=True, slots=True)
class ThrottleAssessment:
    throttling: bool
    clock_ratio: float | None
    temp_rise_c: float | None
    latency_increase: float | None

    def numbers(self) -> dict[str, float]:
        out = {
            "clock_ratio": self.clock_ratio,
            "temp_rise_c": self.temp_rise_c,
            "latency_increase": self.latency_increase,
        }
        return {k: float(v) for k, v in out.items() if v is not None}


def thermal_point(sensors: Iterable[SensorReading], p95_ms: float | None) -> ThermalPoint:
    """Summarise one window's sensor readings (the summary names ``SensorReader`` always sends)."""
    ratios: list[float] = []
    temps: list[float] = []
    for r in sensors:
        if r.missing:
            continue
        if r.name in CLOCK_READINGS and r.max_value > 0:
            ratios.append(r.value / r.max_value)
        elif r.name in TEMP_READINGS:
            temps.append(r.value)
    return ThermalPoint(min(ratios) if ratios else None, max(temps) if temps else None, p95_ms)


def assess_throttling(points: Sequence[ThermalPoint], policy: ThrottlePolicy = ThrottlePolicy()) -> ThrottleAssessment:
    """Throttling of the newest of ``points`` (oldest first), judged against the earlier ones."""
    if not points:
        return ThrottleAssessment(False, None, None, None)
    recent = list(points[-policy.windows :])
    now, earlier = recent[-1], recent[:-1]
    temps = [p.temp_c for p in earlier if p.temp_c is not None]
    lats = [p.p95_ms for p in earlier if p.p95_ms is not None and p.p95_ms > 0]
    rise = now.temp_c - min(temps) if now.temp_c is not None and temps else None
    increase = now.p95_ms / min(lats) - 1.0 if now.p95_ms is not None and lats else None
    throttling = (
        now.clock_ratio is not None
        and now.clock_ratio <= 1.0 - policy.clock_drop
        and rise is not None
        and rise >= policy.temp_rise_c
        and increase is not None
        and increase >= policy.latency_increase
    )
    return ThrottleAssessment(bool(throttling), now.clock_ratio, rise, increase)
