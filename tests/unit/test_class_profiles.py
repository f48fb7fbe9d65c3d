"""``rollout.profiles``: one voice per device (its newest figure), the class's figure their upper median, so
one device's lie can neither block a class others measured fast nor wave through one others measured slow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edgefleet_controller.rollout.admission import admit
from edgefleet_controller.rollout.profiles import ProfileMeasurement, class_p95, profile_summaries

T0 = datetime(2025, 1, 1, tzinfo=UTC)
V2 = "sha256:" + "2" * 64


def m(device: str | None, p95: float, *, at: int = 0, source: str = "profile", hw: str = "rpi5") -> ProfileMeasurement:
    return ProfileMeasurement(V2, hw, source, device, p95, p95 / 2, T0 + timedelta(seconds=at))


def admitted(measurements: list[ProfileMeasurement]) -> bool:
    """40 ms SLA, 20 % headroom: a budget of 32 ms."""
    return admit(40.0, 0.2, 0.0, class_p95(measurements), ["rpi5"], force=False).admitted


def test_one_hostile_device_among_three_neither_blocks_nor_waves_through() -> None:
    fast = [m("a", 20.0), m("b", 22.0)]
    assert class_p95([*fast, m("evil", 9999.0)]) == {"rpi5": 22.0}
    assert admitted([*fast, m("evil", 9999.0)])
    slow = [m("a", 60.0), m("b", 58.0)]
    assert class_p95([*slow, m("evil", 1.0)]) == {"rpi5": 58.0}
    assert not admitted([*slow, m("evil", 1.0)])


def test_two_voices_take_the_slower_so_a_lie_can_only_refuse() -> None:
    assert not admitted([m("a", 60.0), m("evil", 1.0)])
    assert class_p95([m("a", 20.0), m("evil", 9999.0)]) == {"rpi5": 9999.0}


def test_each_device_counts_once_with_its_newest_figure_whatever_the_source() -> None:
    # "evil" repeats itself 50 times and through both sources: still one voice, its newest
    spam = [m("evil", 9999.0, at=i, source=("canary", "profile")[i % 2]) for i in range(50)]
    honest = [m("a", 20.0, at=100), m("b", 21.0, at=100)]
    assert class_p95([*spam, *honest]) == {"rpi5": 21.0}
    # a device's newer measurement replaces its older one
    assert class_p95([m("a", 80.0, at=0), m("a", 20.0, at=1, source="canary")]) == {"rpi5": 20.0}


def test_classes_and_device_less_measurements_are_separate_voices() -> None:
    got = class_p95([m(None, 45.0), m(None, 30.0, at=1), m("x", 12.0, hw="x86-avx2"), m("a", 40.0)])
    assert got == {"rpi5": 40.0, "x86-avx2": 12.0}  # None's newest (30) and a (40): the slower


def test_summaries_report_the_figure_admission_uses() -> None:
    rows = profile_summaries([m("a", 20.0), m("b", 22.0), m("evil", 9999.0, at=5)])
    assert len(rows) == 1
    row = rows[0]
    assert row["p95_ms"] == 22.0 and row["p50_ms"] == 11.0 and row["samples"] == 3
    assert row["device_id"] == "evil" and row["measured_at"] == T0 + timedelta(seconds=5)
