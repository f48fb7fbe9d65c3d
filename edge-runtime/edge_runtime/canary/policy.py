"""The canary policy: the thresholds a verdict is judged by, read from the config with the bundle's defaults.

Owns ``CanaryPolicy`` (every field bounded, each error naming the config key it was read from: ``sla`` and
``canary`` sections of the effective config over the bundle's ``canary`` defaults and ``latency.sla_ms``)
and the inconclusive policy (``after_inconclusive``: retry below ``canary.inconclusive_limit``, else
reject). Pure: values in, values out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from edge_runtime.canary.errors import PolicyError
from edgefleet.contract.bundle_policy import CanaryDefaults
from edgefleet.contract.shown import shown


@dataclass(frozen=True)
class _FieldRule:
    """How one policy field is checked: its lower and upper bound (None: unbounded; ``*_inc``: inclusive)
    and the config key it is read from (None: not configurable; errors then name ``policy.<field>``)."""

    low: float | None
    low_inc: bool
    high: float | None = None
    high_inc: bool = False
    key: str | None = None

    def admits(self, value: float) -> bool:
        """Finite (or +inf where unbounded above) and within both bounds."""
        ok = math.isfinite(value) or (self.high is None and value == math.inf)
        if self.low is not None:
            ok = ok and (value >= self.low if self.low_inc else value > self.low)
        if self.high is not None:
            ok = ok and (value <= self.high if self.high_inc else value < self.high)
        return ok

    def describe(self) -> str:
        """``>= 0 and < 1``: the bounds in words, for error messages."""
        parts = []
        if self.low is not None:
            parts.append(f"{'>=' if self.low_inc else '>'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<=' if self.high_inc else '<'} {self.high:g}")
        return " and ".join(parts)


# One rule per policy field, checked in this order; the keys name the right line in error messages.
_RULES: dict[str, _FieldRule] = {
    "sla_ms": _FieldRule(0.0, False, key="sla.latency_ms"),
    "min_frames": _FieldRule(1, True, key="canary.min_frames"),
    "min_seconds": _FieldRule(0.0, True, key="canary.min_seconds"),
    "headroom": _FieldRule(0.0, True, 1.0, False, key="canary.headroom"),
    "thermal_buffer": _FieldRule(0.0, True, 1.0, False, key="sla.thermal_buffer"),
    "max_p95_ratio": _FieldRule(1.0, True, key="canary.max_p95_ratio"),
    "latency_alpha": _FieldRule(0.0, False, 1.0, False),
    "min_effect_ms": _FieldRule(0.0, True),
    "psi_max": _FieldRule(0.0, False, key="canary.psi_max"),
    "psi_min_samples": _FieldRule(1, True),
    "ks_alpha": _FieldRule(0.0, False, 1.0, False, key="canary.ks_alpha"),
    "psi_bins": _FieldRule(2, True),
    "min_agreement": _FieldRule(0.0, True, 1.0, True, key="canary.min_agreement"),
    "iou_match": _FieldRule(0.0, False, 1.0, True),
    "inconclusive_limit": _FieldRule(1, True, key="canary.inconclusive_limit"),
    "watch_window_s": _FieldRule(0.0, True, key="canary.watch_window_s"),
    "watch_shadow_every_ms": _FieldRule(0.0, True, key="canary.watch_shadow_every_ms"),
    "watch_shadow_max_share": _FieldRule(0.0, False, 1.0, True, key="canary.watch_shadow_max_share"),
    "deadline_s": _FieldRule(0.0, False, key="canary.deadline_s"),
}


def _integer_fields() -> frozenset[str]:
    """The policy fields declared ``int`` (a float there is refused, not truncated)."""
    return frozenset(f.name for f in fields(CanaryPolicy) if f.type in ("int", int))


@dataclass(frozen=True, kw_only=True)
class CanaryPolicy:
    """Thresholds of the canary and the watch window. See ``edge_runtime.canary.verdict`` for the rule.

    ``watch_shadow_every_ms`` and ``watch_shadow_max_share`` bound the watch window's shadow work (the
    previous engine on sampled frames): at most one paired frame per ``watch_shadow_every_ms``, and shadow
    inference at most ``watch_shadow_max_share`` of the frame loop's wall time (see
    ``edge_runtime.agent.canary.shadow.ShadowRateLimit``).
    """

    sla_ms: float
    min_frames: int = 300
    min_seconds: float = 0.0
    headroom: float = 0.2
    thermal_buffer: float = 0.0
    max_p95_ratio: float = 1.10
    latency_alpha: float = 0.01
    min_effect_ms: float = 0.5
    psi_max: float = 0.25
    psi_min_samples: int = 500
    ks_alpha: float = 0.01
    psi_bins: int = 10
    min_agreement: float = 0.9
    iou_match: float = 0.5
    inconclusive_limit: int = 2
    watch_window_s: float = 600.0
    watch_shadow_every_ms: float = 100.0
    watch_shadow_max_share: float = 0.25
    deadline_s: float = 900.0

    def __post_init__(self) -> None:
        integers = _integer_fields()
        for name, rule in _RULES.items():
            value = getattr(self, name)
            key = rule.key or f"policy.{name}"
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PolicyError(f"{key} must be a number, got {shown(value)}")
            if name in integers and not isinstance(value, int):
                raise PolicyError(f"{key} must be an integer, got {shown(value)}")
            if not rule.admits(value):
                raise PolicyError(f"{key} must be {rule.describe()}, got {shown(value)}")
        if self.headroom + self.thermal_buffer >= 1.0:
            raise PolicyError(
                f"canary.headroom + sla.thermal_buffer must be < 1 (they leave no latency budget), "
                f"got {self.headroom:g} + {self.thermal_buffer:g}"
            )
        if self.deadline_s < self.min_seconds:
            raise PolicyError(
                f"canary.deadline_s must be >= canary.min_seconds ({self.min_seconds:g}), "
                f"got {self.deadline_s:g}; a canary could never finish"
            )

    @property
    def budget_fraction(self) -> float:
        return 1.0 - self.headroom - self.thermal_buffer

    @property
    def latency_budget_ms(self) -> float:
        """sla_ms × (1 − headroom − thermal_buffer): the p95 a candidate must stay within."""
        return self.sla_ms * self.budget_fraction

    def budget_formula(self, *, throttled: bool = False) -> str:
        """``SLA 40 ms × (1 − 0.20 − 0.10)``; throttled drops the thermal buffer (throttling spends it)."""
        terms = f"1 − {self.headroom:.2f}"
        if self.thermal_buffer and not throttled:
            terms += f" − {self.thermal_buffer:.2f}"
        return f"SLA {self.sla_ms:g} ms × ({terms})"

    @staticmethod
    def from_config(
        config: Mapping[str, Any],
        *,
        bundle_canary: CanaryDefaults | None = None,
        bundle_sla_ms: float | None = None,
    ) -> CanaryPolicy:
        """Read the effective config's ``canary`` and ``sla`` sections.

        Precedence per key: the config's value (a null means unset), then the bundle's defaults
        (``bundle.json`` ``canary`` section and ``latency.sla_ms``), then this class's defaults.
        ``sla.latency_ms`` has no default: without it and without ``bundle_sla_ms`` → ``PolicyError``.
        """
        canary = config.get("canary") or {}
        sla = config.get("sla") or {}
        if not isinstance(canary, Mapping) or not isinstance(sla, Mapping):
            raise PolicyError(
                f"config sections 'canary' and 'sla' must be mappings, got {type(canary).__name__} "
                f"and {type(sla).__name__}"
            )
        values: dict[str, Any] = {}
        if bundle_canary is not None:
            for name in ("min_frames", "min_seconds", "headroom", "max_p95_ratio", "psi_max", "ks_alpha"):
                values[name] = getattr(bundle_canary, name)
            values["min_agreement"] = bundle_canary.min_agreement
        if bundle_sla_ms is not None:
            values["sla_ms"] = bundle_sla_ms
        known = {f.name for f in fields(CanaryPolicy)}
        for name, rule in _RULES.items():
            if rule.key is None:
                continue
            section, _, config_key = rule.key.partition(".")
            source = sla if section == "sla" else canary
            if source.get(config_key) is not None and name in known:
                values[name] = source[config_key]
        if "sla_ms" not in values:
            raise PolicyError(
                "sla.latency_ms is not set and the bundle gave no latency SLA; set sla.latency_ms in the "
                "fleet, site or device config"
            )
        return CanaryPolicy(**values)


InconclusiveAction = Literal["retry", "reject"]


def after_inconclusive(count: int, limit: int) -> InconclusiveAction:
    """What to do after the ``count``-th inconclusive verdict in a row: retry below ``limit``, else reject.

    Rejecting after a bounded number of tries keeps a device from canarying forever on a camera that
    sees too few frames (night, a blocked lens); the controller counts ``inconclusive_count`` as a
    failure at the same limit.
    """
    if limit < 1:
        raise PolicyError(f"canary.inconclusive_limit must be >= 1, got {limit}")
    return "reject" if count >= limit else "retry"


@dataclass(frozen=True)
class InconclusivePolicy:
    """``after_inconclusive`` bound to a limit (``canary.inconclusive_limit``)."""

    limit: int = 2

    def after_inconclusive(self, count: int) -> InconclusiveAction:
        return after_inconclusive(count, self.limit)
