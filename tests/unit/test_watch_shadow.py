"""The watch window's shadow budget (``ShadowRateLimit``) and the thermal judgement from sensor readings."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.agent.canary.shadow import ShadowRateLimit, thermal_state
from edge_runtime.canary.policy import CanaryPolicy
from edge_runtime.telemetry.sensors import SensorSnapshot
from edgefleet.v1.telemetry_pb2 import SensorReading


def test_at_most_one_shadow_frame_per_interval() -> None:
    limit = ShadowRateLimit(every_s=0.1, max_share=0.25)
    assert limit.admit(10.0)
    limit.spent(10.0, 10.001)  # a cheap shadow: the interval decides
    assert not limit.admit(10.05)
    assert not limit.admit(10.0999)
    assert limit.admit(10.1)


def test_an_expensive_shadow_spaces_the_next_one_by_its_share() -> None:
    limit = ShadowRateLimit(every_s=0.1, max_share=0.25)
    limit.spent(0.0, 0.05)  # 50 ms at a 25 % share: 200 ms until the next one
    assert not limit.admit(0.19)
    assert limit.admit(0.2)


def test_interval_zero_admits_every_frame_a_cheap_shadow_allows() -> None:
    limit = ShadowRateLimit(every_s=0.0, max_share=1.0)
    limit.spent(1.0, 1.002)
    assert limit.admit(1.002)


def test_the_policy_keys_set_the_limit() -> None:
    policy = CanaryPolicy(sla_ms=40.0, watch_shadow_every_ms=20.0, watch_shadow_max_share=0.5)
    limit = ShadowRateLimit.from_policy(policy)
    assert (limit.every_s, limit.max_share) == (0.02, 0.5)


@pytest.mark.parametrize(
    ("every_s", "share", "message"),
    [
        (-1.0, 0.25, "every_s must be a finite number >= 0, got -1.0"),
        (float("nan"), 0.25, "every_s must be a finite number >= 0"),
        (0.1, 0.0, r"max_share must be in \(0, 1\], got 0.0"),
        (0.1, 1.5, r"max_share must be in \(0, 1\], got 1.5"),
    ],
)
def test_bad_limits_are_refused(every_s: float, share: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShadowRateLimit(every_s, share)


@settings(max_examples=200, deadline=None)
@given(
    every_ms=st.floats(0.0, 200.0),
    share=st.floats(0.05, 1.0),
    period_ms=st.floats(1.0, 100.0),
    served_ms=st.lists(st.floats(0.1, 80.0), min_size=20, max_size=200),
    shadow_ms=st.lists(st.floats(0.1, 120.0), min_size=20, max_size=200),
)
def test_a_frame_loop_never_spends_more_than_its_share_on_the_shadow(
    every_ms: float, share: float, period_ms: float, served_ms: list[float], shadow_ms: list[float]
) -> None:
    """Simulated loop: frames every ``period_ms`` (or later, when the loop falls behind), each served, some
    also shadowed. Between the first and the last shadow start, shadow time stays within ``share`` of it,
    and two shadow starts are never closer than the interval."""
    limit = ShadowRateLimit(every_ms / 1000.0, share)
    now = 0.0
    starts: list[float] = []
    costs: list[float] = []
    for i, served in enumerate(served_ms):
        now = max(now, i * period_ms / 1000.0)  # the next frame arrives (or is already waiting)
        if limit.admit(now):
            cost = shadow_ms[i % len(shadow_ms)] / 1000.0
            limit.spent(now, now + cost)
            starts.append(now)
            costs.append(cost)
            now += cost
        now += served / 1000.0
    assert starts, "the first frame is always admitted"
    for a, b in itertools.pairwise(starts):
        assert b - a >= every_ms / 1000.0 - 1e-12
    if len(starts) > 1:
        assert sum(costs[:-1]) <= share * (starts[-1] - starts[0]) + 1e-9


def _snapshot(*readings: SensorReading) -> SensorSnapshot:
    return SensorSnapshot(readings=readings, memory_free_bytes=0, disk_free_bytes=0)


def test_thermal_state_carries_its_numbers() -> None:
    hot = thermal_state(
        _snapshot(
            SensorReading(name="cpu_clock", kind="clock_mhz", value=1200, max_value=2000),
            SensorReading(name="cpu_temp", kind="temp_c", value=91.0),
        )
    )
    assert hot.throttling
    assert hot.numbers == {"cpu_clock_ratio": 0.6, "cpu_temp_c": 91.0}
    assert hot.summary == "throttling: cpu clock 60% of max at 91.0 °C"
    cool = thermal_state(
        _snapshot(
            SensorReading(name="cpu_clock", kind="clock_mhz", value=1200, max_value=2000),
            SensorReading(name="cpu_temp", kind="temp_c", value=45.0),
        )
    )
    assert not cool.throttling and cool.summary == "cpu clock 60% of max at 45.0 °C"
    none = thermal_state(_snapshot(SensorReading(name="cpu_clock", kind="clock_mhz", missing=True)))
    assert not none.throttling and none.numbers == {}
