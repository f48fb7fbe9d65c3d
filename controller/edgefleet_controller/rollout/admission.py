"""Latency admission: may this bundle be rolled onto these hardware classes at all?

Owns ``admit``: each targeted hardware class's measured p95 (pre + model + post, from the devices' own
profiles) must fit the bundle's SLA minus headroom and thermal buffer, and every decision is written
out with its arithmetic, e.g. ``x86-avx2: p95 31.2 ms <= 40 ms × (1 − 0.20) = 32.0 ms: admitted``.

A class with no profile yet is admitted, marked ``(unmeasured)``: refusing would make a brand-new
hardware class impossible to ever roll onto (it gets profiled by running bundles), and the on-device
canary still enforces the same budget on live frames before anything is promoted. ``force`` admits
anyway and keeps the refusal lines, marked ``(forced)``, so the record shows what was overridden.
Pure: numbers in, a decision out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edgefleet.contract.shown import shown
from edgefleet_controller.rollout.errors import AdmissionInputError


@dataclass(frozen=True)
class Admission:
    """The decision and one line per hardware class (plus a summary line when forced)."""

    admitted: bool
    lines: tuple[str, ...]
    forced: bool = False

    @property
    def refused_lines(self) -> tuple[str, ...]:
        return tuple(line for line in self.lines if ": refused" in line)


def _check(name: str, value: float, *, low: float, high: float | None = None, low_inclusive: bool = True) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if low_inclusive else value > low) and (high is None or value < high)
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise AdmissionInputError(f"latency admission: {name} must be {bound}, got {shown(value)}")


def budget_formula(sla_ms: float, headroom: float, thermal_buffer: float) -> str:
    """``40 ms × (1 − 0.20)`` or, with a thermal buffer, ``40 ms × (1 − 0.20 − 0.10)``."""
    terms = f"1 − {headroom:.2f}" + (f" − {thermal_buffer:.2f}" if thermal_buffer else "")
    return f"{sla_ms:g} ms × ({terms})"


def admit(
    bundle_sla_ms: float,
    headroom: float,
    thermal_buffer: float,
    profiles: Mapping[str, float | None],
    target_classes: Iterable[str],
    force: bool,
) -> Admission:
    """Admit a bundle onto ``target_classes`` given each class's measured p95 in ``profiles``.

    A class is admitted when p95 ≤ sla × (1 − headroom − thermal_buffer); a class missing from
    ``profiles`` or mapped to None is admitted as unmeasured. Lines follow ``target_classes`` order
    (duplicates dropped). Raises ``AdmissionInputError`` for a non-positive SLA, a headroom + thermal
    buffer that leaves no budget, or a negative / non-finite profile.
    """
    _check("bundle SLA (ms)", bundle_sla_ms, low=0.0, low_inclusive=False)
    _check("headroom", headroom, low=0.0, high=1.0)
    _check("thermal_buffer", thermal_buffer, low=0.0, high=1.0)
    if headroom + thermal_buffer >= 1.0:
        raise AdmissionInputError(
            f"latency admission: headroom + thermal_buffer must be < 1, got {headroom:g} + {thermal_buffer:g}; "
            "they would leave no latency budget"
        )
    budget = bundle_sla_ms * (1.0 - headroom - thermal_buffer)
    formula = budget_formula(bundle_sla_ms, headroom, thermal_buffer)
    lines: list[str] = []
    refused = 0
    for hardware_class in dict.fromkeys(target_classes):
        p95 = profiles.get(hardware_class)
        if p95 is None:
            lines.append(f"{hardware_class}: no profile: admitted (unmeasured)")
            continue
        _check(f"profile p95 of {shown(hardware_class)} (ms)", p95, low=0.0)
        if p95 <= budget:
            lines.append(f"{hardware_class}: p95 {p95:.1f} ms <= {formula} = {budget:.1f} ms: admitted")
        else:
            refused += 1
            mark = " (forced)" if force else ""
            lines.append(f"{hardware_class}: p95 {p95:.1f} ms > {formula} = {budget:.1f} ms: refused{mark}")
    if not lines:
        lines.append("no hardware class targeted: nothing to check")
    if refused and force:
        lines.append(f"forced: admitted despite {refused} refused hardware class{'es' if refused > 1 else ''}")
    return Admission(admitted=refused == 0 or force, lines=tuple(lines), forced=bool(refused and force))
