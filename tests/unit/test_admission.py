"""Latency admission: the decision and the arithmetic line per hardware class."""

from __future__ import annotations

import pytest

from edgefleet_controller.rollout.admission import admit
from edgefleet_controller.rollout.errors import AdmissionInputError


def test_admitted_refused_and_unmeasured_lines() -> None:
    result = admit(
        40.0,
        0.2,
        0.0,
        {"x86-avx2": 31.2, "jetson-nano": 55.0, "jetson-orin-nano": 32.0},
        ["x86-avx2", "jetson-nano", "rpi5", "jetson-orin-nano"],
        force=False,
    )
    assert not result.admitted and not result.forced
    assert result.lines == (
        "x86-avx2: p95 31.2 ms <= 40 ms × (1 − 0.20) = 32.0 ms: admitted",
        "jetson-nano: p95 55.0 ms > 40 ms × (1 − 0.20) = 32.0 ms: refused",
        "rpi5: no profile: admitted (unmeasured)",
        # Exactly on the budget fits.
        "jetson-orin-nano: p95 32.0 ms <= 40 ms × (1 − 0.20) = 32.0 ms: admitted",
    )
    assert result.refused_lines == ("jetson-nano: p95 55.0 ms > 40 ms × (1 − 0.20) = 32.0 ms: refused",)


def test_all_fit_is_admitted() -> None:
    result = admit(40.0, 0.2, 0.0, {"x86-avx2": 20.0}, ["x86-avx2"], force=False)
    assert result.admitted and result.lines == ("x86-avx2: p95 20.0 ms <= 40 ms × (1 − 0.20) = 32.0 ms: admitted",)


def test_unmeasured_classes_are_admitted() -> None:
    result = admit(40.0, 0.2, 0.0, {"rpi5": None}, ["rpi5", "rk3588"], force=False)
    assert result.admitted
    assert result.lines == ("rpi5: no profile: admitted (unmeasured)", "rk3588: no profile: admitted (unmeasured)")


def test_thermal_buffer_is_part_of_the_arithmetic() -> None:
    result = admit(50.0, 0.2, 0.1, {"jetson-orin-nano": 36.0}, ["jetson-orin-nano"], force=False)
    assert result.lines == ("jetson-orin-nano: p95 36.0 ms > 50 ms × (1 − 0.20 − 0.10) = 35.0 ms: refused",)
    assert not result.admitted


def test_force_admits_and_keeps_the_refusals() -> None:
    result = admit(40.0, 0.2, 0.0, {"jetson-nano": 55.0, "x86-avx2": 10.0}, ["jetson-nano", "x86-avx2"], force=True)
    assert result.admitted and result.forced
    assert result.lines == (
        "jetson-nano: p95 55.0 ms > 40 ms × (1 − 0.20) = 32.0 ms: refused (forced)",
        "x86-avx2: p95 10.0 ms <= 40 ms × (1 − 0.20) = 32.0 ms: admitted",
        "forced: admitted despite 1 refused hardware class",
    )
    # Forcing what already fits changes nothing.
    assert not admit(40.0, 0.2, 0.0, {"x86-avx2": 10.0}, ["x86-avx2"], force=True).forced


def test_no_target_classes_and_duplicates() -> None:
    assert admit(40.0, 0.2, 0.0, {}, [], force=False).lines == ("no hardware class targeted: nothing to check",)
    assert len(admit(40.0, 0.2, 0.0, {}, ["rpi5", "rpi5"], force=False).lines) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 0.2, 0.0, {}), r"bundle SLA \(ms\) must be > 0, got 0.0"),
        ((40.0, -0.1, 0.0, {}), "headroom must be >= 0 and < 1, got -0.1"),
        ((40.0, 0.6, 0.5, {}), r"headroom \+ thermal_buffer must be < 1, got 0.6 \+ 0.5"),
        ((40.0, 0.2, 0.0, {"x86-avx2": -3.0}), r"profile p95 of 'x86-avx2' \(ms\) must be >= 0, got -3.0"),
    ],
)
def test_bad_inputs_say_what_and_which_value(args: tuple[float, float, float, dict[str, float]], message: str) -> None:
    with pytest.raises(AdmissionInputError, match=message):
        admit(*args, target_classes=["x86-avx2"], force=False)
