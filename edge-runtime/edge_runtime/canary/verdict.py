"""The canary verdict: does the staged bundle, run in shadow on live frames, deserve promotion?

Owns ``CanaryPolicy`` (the thresholds, read from the effective config's ``canary`` and ``sla`` sections
with the bundle's defaults as fallback), ``CanaryVerdict`` (the outcome with every number that decided it
and the reasons, in words and numbers), ``decide_verdict`` for the canary, ``decide_watch`` for the
post-promotion watch window, ``verdict_to_proto`` and the inconclusive policy. Pure: samples, elapsed time
and the deadline come in as values; nothing here reads a clock or touches a file.

The canary rule. Once at least ``min_frames`` frames and ``min_seconds`` seconds are in, the candidate
passes only if ALL hold:

1. latency budget: candidate p95 ≤ sla_ms × (1 − headroom − thermal_buffer);
2. no significant regression. The candidate FAILS this check only when all three agree:
   the one-sided Mann–Whitney p-value (candidate slower) < ``latency_alpha``, AND the median difference
   (candidate − baseline) ≥ ``min_effect_ms``, AND p95 ratio (candidate / baseline) > ``max_p95_ratio``.
   Significance alone is not enough (hundreds of frames make 0.1 ms "significant"), the effect size
   guards against that, and the p95 ratio ties the rule to the tail operators care about;
3. confidence drift within bound: with ≥ ``psi_min_samples`` valid frames on both sides, PSI over
   ``psi_bins`` bins cut at the BASELINE's quantiles ≤ ``psi_max``; with fewer, PSI is too noisy and the
   two-sample KS test is used instead: p ≥ ``ks_alpha``;
4. output agreement ≥ ``min_agreement`` (top-1 equality, or matched detections; see ``agreement``);
5. zero inference errors and zero NaN outputs on the candidate.

Errors and NaNs fail the canary at once, even before ``min_frames``: one crash is decisive evidence and
waiting only burns frames. Otherwise, before ``min_frames``/``min_seconds`` the verdict is ``pending``
(keep collecting) until the deadline, then ``inconclusive``; what happens next is ``after_inconclusive``.
Statistics use only valid frames (no error, finite outputs); agreement uses frames valid on both sides.

The watch rule (``decide_watch``): every comparison is PAIRED, like the canary's. After promotion the
trial bundle serves and the previous engine runs in shadow on a rate-limited sample of the same frames, so
host load and heat fall on both sides at the same moment and cancel out. Checks 2–4 above are applied
unchanged to the paired rows (the same helpers); the budget (1) is attributed to the bundle only when the
previous engine met it on the same frames; errors and NaNs (5) are judged on every served frame. Nothing
is compared with numbers measured earlier (the canary's baseline): that is what raised false rollbacks on
busy hosts. See ``decide_watch`` for throttling and for a first install (nothing to pair with).

Every verdict lists the checks that failed (``failed_checks``), so a caller can tell a latency-only miss
(``latency_only``) from errors, drift or disagreement — the first-install policy serves the former with
degraded health and refuses the latter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from edge_runtime.canary.agreement import detection_agreement, label_agreement
from edge_runtime.canary.errors import PendingVerdictError, PolicyError, SamplesError
from edge_runtime.canary.samples import CanarySamples
from edge_runtime.canary.stats import (
    FloatArray,
    MannWhitneyResult,
    ks_two_sample,
    mann_whitney_greater,
    median,
    percentile,
    population_stability_index,
)
from edgefleet.contract.bundle_policy import CanaryDefaults
from edgefleet.v1 import common_pb2


class Outcome(StrEnum):
    """A verdict's outcome. Stored values never change."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    # Not enough frames or seconds yet and the deadline is still ahead: keep collecting.
    PENDING = "pending"


class VerdictPhase(StrEnum):
    CANARY = "canary"
    WATCH = "watch"


# The config key each policy field is read from, for error messages that point at the right line.
_CONFIG_KEYS: dict[str, str] = {
    "sla_ms": "sla.latency_ms",
    "thermal_buffer": "sla.thermal_buffer",
    "min_frames": "canary.min_frames",
    "min_seconds": "canary.min_seconds",
    "headroom": "canary.headroom",
    "max_p95_ratio": "canary.max_p95_ratio",
    "psi_max": "canary.psi_max",
    "ks_alpha": "canary.ks_alpha",
    "min_agreement": "canary.min_agreement",
    "inconclusive_limit": "canary.inconclusive_limit",
    "watch_window_s": "canary.watch_window_s",
    "watch_shadow_every_ms": "canary.watch_shadow_every_ms",
    "watch_shadow_max_share": "canary.watch_shadow_max_share",
    "deadline_s": "canary.deadline_s",
}

# field -> (lower, lower inclusive, upper, upper inclusive); None = unbounded.
_BOUNDS: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "sla_ms": (0.0, False, None, False),
    "min_frames": (1, True, None, False),
    "min_seconds": (0.0, True, None, False),
    "headroom": (0.0, True, 1.0, False),
    "thermal_buffer": (0.0, True, 1.0, False),
    "max_p95_ratio": (1.0, True, None, False),
    "latency_alpha": (0.0, False, 1.0, False),
    "min_effect_ms": (0.0, True, None, False),
    "psi_max": (0.0, False, None, False),
    "psi_min_samples": (1, True, None, False),
    "ks_alpha": (0.0, False, 1.0, False),
    "psi_bins": (2, True, None, False),
    "min_agreement": (0.0, True, 1.0, True),
    "iou_match": (0.0, False, 1.0, True),
    "inconclusive_limit": (1, True, None, False),
    "watch_window_s": (0.0, True, None, False),
    "watch_shadow_every_ms": (0.0, True, None, False),
    "watch_shadow_max_share": (0.0, False, 1.0, True),
    "deadline_s": (0.0, False, None, False),
}
_INT_FIELDS = frozenset({"min_frames", "psi_min_samples", "psi_bins", "inconclusive_limit"})


def _describe_bound(low: float | None, low_inc: bool, high: float | None, high_inc: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_inc else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'<=' if high_inc else '<'} {high:g}")
    return " and ".join(parts)


@dataclass(frozen=True, kw_only=True)
class CanaryPolicy:
    """Thresholds of the canary and the watch window. See the module docstring for the rule.

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
        for name, (low, low_inc, high, high_inc) in _BOUNDS.items():
            value = getattr(self, name)
            key = _CONFIG_KEYS.get(name, f"policy.{name}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PolicyError(f"{key} must be a number, got {value!r}")
            if name in _INT_FIELDS and not isinstance(value, int):
                raise PolicyError(f"{key} must be an integer, got {value!r}")
            ok = math.isfinite(value) or (high is None and value == math.inf)
            if low is not None:
                ok = ok and (value >= low if low_inc else value > low)
            if high is not None:
                ok = ok and (value <= high if high_inc else value < high)
            if not ok:
                raise PolicyError(f"{key} must be {_describe_bound(low, low_inc, high, high_inc)}, got {value!r}")
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
        for name, key in _CONFIG_KEYS.items():
            section, _, config_key = key.partition(".")
            source = sla if section == "sla" else canary
            if source.get(config_key) is not None and name in known:
                values[name] = source[config_key]
        if "sla_ms" not in values:
            raise PolicyError(
                "sla.latency_ms is not set and the bundle gave no latency SLA; set sla.latency_ms in the "
                "fleet, site or device config"
            )
        return CanaryPolicy(**values)


# The checks a verdict can fail, as named in ``CanaryVerdict.failed_checks``. Stored values never change.
CHECK_ERRORS = "errors"
CHECK_NANS = "nans"
CHECK_BUDGET = "latency_budget"
CHECK_REGRESSION = "latency_regression"
CHECK_DRIFT = "drift"
CHECK_AGREEMENT = "agreement"


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one side's end-to-end latency over its valid frames (NaN when ``count`` is 0)."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    count: int

    @staticmethod
    def of(latency_ms: np.ndarray[Any, np.dtype[np.float64]]) -> LatencySummary:
        return LatencySummary(
            p50_ms=percentile(latency_ms, 50.0),
            p95_ms=percentile(latency_ms, 95.0),
            p99_ms=percentile(latency_ms, 99.0),
            count=int(latency_ms.size),
        )


@dataclass(frozen=True)
class CanaryVerdict:
    """The outcome of a canary or watch window with every number that decided it.

    ``reasons`` is empty on pass and says why otherwise, with the numbers. Numbers that were not
    computed are ``None`` (PSI on the KS path and vice versa; agreement when the bundle's outputs are
    not comparable; the paired statistics of a watch window with too few paired frames).
    ``failed_checks`` names the checks behind ``reasons`` (``CHECK_*``); ``notes`` records what was
    observed but did not decide the outcome (throttling not attributed to the bundle, a budget both
    bundles missed, latency not compared for lack of paired frames).
    """

    outcome: Outcome
    phase: VerdictPhase
    frames: int
    seconds: float
    candidate_latency: LatencySummary
    baseline_latency: LatencySummary
    sla_ms: float
    latency_budget_ms: float
    p95_ratio: float
    latency_p_value: float | None
    effect_ms: float | None
    psi: float | None
    ks_statistic: float | None
    ks_p_value: float | None
    agreement: float | None
    errors: int
    nans: int
    throttling: bool
    reasons: tuple[str, ...]
    failed_checks: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def decided(self) -> bool:
        return self.outcome is not Outcome.PENDING

    @property
    def latency_only(self) -> bool:
        """A failure on latency alone (budget and/or regression): no errors, NaNs, drift or disagreement."""
        return (
            self.outcome is Outcome.FAIL
            and bool(self.failed_checks)
            and set(self.failed_checks) <= {CHECK_BUDGET, CHECK_REGRESSION}
        )

    def summary(self) -> str:
        """One line for logs and the CLI: outcome, frames, p95s and the first reason."""
        line = (
            f"{self.phase} {self.outcome}: {self.frames} frames in {self.seconds:.1f} s, "
            f"p95 {self.candidate_latency.p95_ms:.1f} ms (budget {self.latency_budget_ms:.1f} ms)"
        )
        if self.reasons:
            return f"{line}; {self.reasons[0]}"
        return f"{line}; {self.notes[0]}" if self.notes else line


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


def _ratio(candidate_p95: float, baseline_p95: float) -> float:
    if math.isnan(candidate_p95) or math.isnan(baseline_p95):
        return math.nan
    if baseline_p95 <= 0.0:
        return 1.0 if candidate_p95 <= 0.0 else math.inf
    return candidate_p95 / baseline_p95


def _output_agreement(
    candidate: CanarySamples,
    baseline: CanarySamples,
    both_valid: np.ndarray[Any, np.dtype[np.bool_]],
    policy: CanaryPolicy,
) -> tuple[float | None, str]:
    if candidate.labels is not None and baseline.labels is not None:
        value = label_agreement(candidate.labels[both_valid], baseline.labels[both_valid])
        return value, "top-1 labels"
    if candidate.detections is not None and baseline.detections is not None:
        keep = np.flatnonzero(both_valid)
        value = detection_agreement(
            [candidate.detections[i] for i in keep], [baseline.detections[i] for i in keep], policy.iou_match
        )
        return value, f"same-class detections at IoU ≥ {policy.iou_match:.2f}"
    if (candidate.labels is None) != (baseline.labels is None) or (candidate.detections is None) != (
        baseline.detections is None
    ):
        raise SamplesError(
            "canary samples: candidate and baseline must carry the same output kind "
            f"(labels: {candidate.labels is not None} vs {baseline.labels is not None}, detections: "
            f"{candidate.detections is not None} vs {baseline.detections is not None})"
        )
    return None, ""


def _error_findings(samples: CanarySamples, side: str) -> list[tuple[str, str]]:
    found = []
    if samples.error_count:
        found.append((CHECK_ERRORS, f"{samples.error_count} inference errors in {samples.frames} {side} frames"))
    if samples.nan_count:
        found.append((CHECK_NANS, f"{samples.nan_count} frames with NaN outputs in {samples.frames} {side} frames"))
    return found


@dataclass(frozen=True)
class _Regression:
    """The canary's latency-regression test on two sides' valid latencies."""

    test: MannWhitneyResult
    effect_ms: float
    regressed: bool


def _regression(c_lat: FloatArray, b_lat: FloatArray, p95_ratio: float, policy: CanaryPolicy) -> _Regression:
    test = mann_whitney_greater(c_lat, b_lat)
    effect = median(c_lat) - median(b_lat) if c_lat.size and b_lat.size else math.nan
    regressed = (
        test.p_value < policy.latency_alpha and effect >= policy.min_effect_ms and p95_ratio > policy.max_p95_ratio
    )
    return _Regression(test, effect, regressed)


def _regression_reason(
    reg: _Regression, c_p95: float, b_p95: float, p95_ratio: float, policy: CanaryPolicy, *, against: str = "baseline"
) -> str:
    return (
        f"latency regression: p95 {c_p95:.1f} ms vs {against} {b_p95:.1f} ms is "
        f"{p95_ratio:.2f}× (limit {policy.max_p95_ratio:.2f}×), median {reg.effect_ms:+.2f} ms "
        f"(min effect {policy.min_effect_ms:.2f} ms), Mann–Whitney p = {reg.test.p_value:.2g} "
        f"< {policy.latency_alpha:g}"
    )


def _drift(c_conf: FloatArray, b_conf: FloatArray, policy: CanaryPolicy) -> tuple[dict[str, Any], str | None]:
    """PSI with enough valid frames on both sides, else KS (the numbers, and the reason when drifted)."""
    if min(c_conf.size, b_conf.size) >= policy.psi_min_samples:
        psi = population_stability_index(c_conf, b_conf, policy.psi_bins)
        reason = None
        if psi > policy.psi_max:
            reason = (
                f"confidence drift: PSI {psi:.3f} > {policy.psi_max:g} ({policy.psi_bins} bins at baseline "
                f"quantiles, {c_conf.size} vs {b_conf.size} frames)"
            )
        return {"psi": psi}, reason
    ks = ks_two_sample(c_conf, b_conf)
    reason = None
    if ks.p_value < policy.ks_alpha:
        reason = (
            f"confidence drift: KS D = {ks.statistic:.3f}, p = {ks.p_value:.2g} < {policy.ks_alpha:g} "
            f"({c_conf.size} vs {b_conf.size} frames)"
        )
    return {"ks_statistic": ks.statistic, "ks_p_value": ks.p_value}, reason


def _agreement_reason(
    candidate: CanarySamples, baseline: CanarySamples, policy: CanaryPolicy
) -> tuple[float | None, str | None]:
    both_valid = candidate.valid & baseline.valid
    agreement, basis = _output_agreement(candidate, baseline, both_valid, policy)
    if agreement is not None and agreement < policy.min_agreement:
        return agreement, (
            f"agreement {agreement:.3f} < {policy.min_agreement:.2f} ({basis} over "
            f"{int(np.count_nonzero(both_valid))} frames)"
        )
    return agreement, None


def _check_same_frames(candidate: CanarySamples, baseline: CanarySamples, what: str) -> None:
    if candidate.frames != baseline.frames:
        raise SamplesError(
            f"{what} samples: candidate has {candidate.frames} frames but baseline has {baseline.frames}; "
            "both sides must be recorded on the same frames"
        )


def decide_verdict(
    candidate: CanarySamples,
    baseline: CanarySamples,
    policy: CanaryPolicy,
    *,
    elapsed_s: float,
    deadline_reached: bool,
) -> CanaryVerdict:
    """Judge a canary from both sides' samples on the same frames (see the module docstring for the rule).

    Returns outcome ``pending`` while too few frames/seconds are in and the deadline is ahead: the
    caller keeps collecting and asks again. Raises ``SamplesError`` if the sides saw different frames.
    """
    _check_same_frames(candidate, baseline, "canary")
    frames = candidate.frames
    c_ok, b_ok = candidate.valid, baseline.valid
    c_lat, b_lat = candidate.latency_ms[c_ok], baseline.latency_ms[b_ok]
    c_conf, b_conf = candidate.confidence[c_ok], baseline.confidence[b_ok]
    c_summary, b_summary = LatencySummary.of(c_lat), LatencySummary.of(b_lat)
    p95_ratio = _ratio(c_summary.p95_ms, b_summary.p95_ms)
    budget = policy.latency_budget_ms

    def verdict(outcome: Outcome, findings: list[tuple[str, str]], **numbers: Any) -> CanaryVerdict:
        base: dict[str, Any] = {
            "latency_p_value": None,
            "effect_ms": None,
            "psi": None,
            "ks_statistic": None,
            "ks_p_value": None,
            "agreement": None,
        }
        base.update(numbers)
        failing = outcome is Outcome.FAIL
        return CanaryVerdict(
            outcome=outcome,
            phase=VerdictPhase.CANARY,
            frames=frames,
            seconds=elapsed_s,
            candidate_latency=c_summary,
            baseline_latency=b_summary,
            sla_ms=policy.sla_ms,
            latency_budget_ms=budget,
            p95_ratio=p95_ratio,
            errors=candidate.error_count,
            nans=candidate.nan_count,
            throttling=False,
            reasons=tuple(reason for _, reason in findings),
            failed_checks=tuple(dict.fromkeys(check for check, _ in findings)) if failing else (),
            **base,
        )

    broken = _error_findings(candidate, "candidate")
    if broken:
        return verdict(Outcome.FAIL, broken)
    if frames < policy.min_frames or elapsed_s < policy.min_seconds:
        if not deadline_reached:
            return verdict(
                Outcome.PENDING,
                [
                    (
                        "pending",
                        f"collecting: {frames} of {policy.min_frames} frames, "
                        f"{elapsed_s:.1f} of {policy.min_seconds:.1f} s",
                    )
                ],
            )
        return verdict(
            Outcome.INCONCLUSIVE,
            [
                (
                    "inconclusive",
                    f"only {frames} frames in {elapsed_s:.1f} s before the deadline; a verdict needs "
                    f"{policy.min_frames} frames and {policy.min_seconds:.1f} s",
                )
            ],
        )

    findings: list[tuple[str, str]] = []
    if not c_summary.p95_ms <= budget:
        findings.append(
            (
                CHECK_BUDGET,
                f"p95 latency {c_summary.p95_ms:.1f} ms exceeds budget {budget:.1f} ms ({policy.budget_formula()})",
            )
        )
    reg = _regression(c_lat, b_lat, p95_ratio, policy)
    if reg.regressed:
        findings.append(
            (CHECK_REGRESSION, _regression_reason(reg, c_summary.p95_ms, b_summary.p95_ms, p95_ratio, policy))
        )
    drift, drift_reason = _drift(c_conf, b_conf, policy)
    if drift_reason is not None:
        findings.append((CHECK_DRIFT, drift_reason))
    agreement, agreement_reason = _agreement_reason(candidate, baseline, policy)
    if agreement_reason is not None:
        findings.append((CHECK_AGREEMENT, agreement_reason))

    return verdict(
        Outcome.FAIL if findings else Outcome.PASS,
        findings,
        latency_p_value=reg.test.p_value,
        effect_ms=reg.effect_ms,
        agreement=agreement,
        **drift,
    )


#: Fewer valid paired frames than this give no paired judgement in the watch window (latency, drift and
#: agreement; errors and NaNs are still judged on every served frame): a p95 over three frames is one
#: scheduler hiccup, not a regression.
WATCH_MIN_PAIRED_FRAMES = 30


def decide_watch(
    served: CanarySamples,
    paired: tuple[CanarySamples, CanarySamples] | None,
    policy: CanaryPolicy,
    *,
    throttling: bool,
    elapsed_s: float = 0.0,
) -> CanaryVerdict:
    """Judge the post-promotion watch window of the trial bundle, side by side with the previous engine.

    ``served`` holds every frame the trial bundle served in the window. ``paired`` is (trial, previous) on
    the sampled frames where the previous engine ran in shadow — row i of both is the same frame, run at
    the same moment — or ``None`` when there is nothing to pair with (a first install). ``throttling``:
    whether the sensors showed thermal throttling (clocks held low while hot) during the window.

    Fails on any of:

    - inference errors or NaN outputs on served frames;
    - with a previous engine and at least ``WATCH_MIN_PAIRED_FRAMES`` valid pairs, on the pairs only:
      the canary's latency-regression rule (Mann–Whitney + minimum effect + p95 ratio); the canary's drift
      rule (PSI / KS) and agreement bound; and the latency budget, but only when the previous engine's
      p95 on the same frames is within it — a budget both bundles miss is the host's (load, heat), so it
      is noted, not failed: rolling back would not bring the SLA back;
    - without a previous engine (first install): p95 of the served frames over the budget (a latency-only
      failure: the first-install policy serves it with degraded health and an alert). Nothing else can
      be compared, which is noted.

    Thermal throttling is judged by the caller from clocks and temperatures; here it only moves the budget
    (a throttling device may spend the thermal buffer: sla_ms × (1 − headroom)) and is attributed to the
    bundle only when the paired comparison shows the bundle slower than the previous engine on the same
    frames (then the regression reason says "while thermally throttling"). Throttling without a paired
    latency failure passes with a note saying it was not attributed to the bundle. A window with no
    frames is ``inconclusive``. Raises ``SamplesError`` if the paired sides have different frame counts.
    """
    frames = served.frames
    budget = policy.sla_ms * (1.0 - policy.headroom) if throttling else policy.latency_budget_ms
    formula = policy.budget_formula(throttled=throttling)
    note = " while thermally throttling" if throttling else ""
    findings = _error_findings(served, "trial")
    notes: list[str] = []
    numbers: dict[str, Any] = {
        "latency_p_value": None,
        "effect_ms": None,
        "psi": None,
        "ks_statistic": None,
        "ks_p_value": None,
        "agreement": None,
    }
    latency_failed = False
    outcome: Outcome
    trial: CanarySamples | None
    reference: CanarySamples | None
    if paired is not None:
        trial, reference = paired
        _check_same_frames(trial, reference, "watch")
        t_lat, r_lat = trial.latency_ms[trial.valid], reference.latency_ms[reference.valid]
        c_summary, b_summary = LatencySummary.of(t_lat), LatencySummary.of(r_lat)
    else:
        trial = reference = None
        t_lat = served.latency_ms[served.valid]
        c_summary = LatencySummary.of(t_lat)
        b_summary = LatencySummary(math.nan, math.nan, math.nan, 0)
    p95_ratio = _ratio(c_summary.p95_ms, b_summary.p95_ms)

    if frames == 0:
        outcome = Outcome.INCONCLUSIVE
        findings = [("inconclusive", f"no frames in the {elapsed_s:.1f} s watch window; nothing to judge")]
    else:
        if trial is None or reference is None:
            notes.append(
                "first install: no previous bundle to run side by side, so only errors and the latency budget "
                "were judged"
            )
            if t_lat.size and not c_summary.p95_ms <= budget:
                latency_failed = True
                findings.append(
                    (
                        CHECK_BUDGET,
                        f"p95 latency {c_summary.p95_ms:.1f} ms exceeds budget {budget:.1f} ms ({formula}){note}",
                    )
                )
        elif min(t_lat.size, r_lat.size) < WATCH_MIN_PAIRED_FRAMES:
            notes.append(
                f"latency, drift and agreement not compared: {min(t_lat.size, r_lat.size)} valid paired frames "
                f"with the previous bundle, a paired judgement needs {WATCH_MIN_PAIRED_FRAMES}"
            )
        else:
            pairs = trial.frames
            reg = _regression(t_lat, r_lat, p95_ratio, policy)
            numbers["latency_p_value"], numbers["effect_ms"] = reg.test.p_value, reg.effect_ms
            if reg.regressed:
                latency_failed = True
                findings.append(
                    (
                        CHECK_REGRESSION,
                        _regression_reason(
                            reg, c_summary.p95_ms, b_summary.p95_ms, p95_ratio, policy, against="the previous bundle"
                        )
                        + f" on the same {pairs} frames{note}",
                    )
                )
            if not c_summary.p95_ms <= budget:
                if b_summary.p95_ms <= budget:
                    latency_failed = True
                    findings.append(
                        (
                            CHECK_BUDGET,
                            f"p95 latency {c_summary.p95_ms:.1f} ms exceeds budget {budget:.1f} ms ({formula}) "
                            f"while the previous bundle kept {b_summary.p95_ms:.1f} ms on the same {pairs} "
                            f"frames{note}",
                        )
                    )
                else:
                    notes.append(
                        f"both bundles exceed the budget {budget:.1f} ms on the same {pairs} frames (p95 "
                        f"{c_summary.p95_ms:.1f} vs {b_summary.p95_ms:.1f} ms): the host, not the bundle; "
                        "rolling back would not restore the SLA"
                    )
            drift, drift_reason = _drift(trial.confidence[trial.valid], reference.confidence[reference.valid], policy)
            numbers.update(drift)
            if drift_reason is not None:
                findings.append((CHECK_DRIFT, drift_reason + " against the previous bundle on the same frames"))
            agreement, agreement_reason = _agreement_reason(trial, reference, policy)
            numbers["agreement"] = agreement
            if agreement_reason is not None:
                findings.append((CHECK_AGREEMENT, agreement_reason + " against the previous bundle"))
        if throttling and not latency_failed:
            notes.append(
                "thermal throttling during the watch window, not attributed to the bundle: "
                + (
                    "it is not slower than the previous bundle on the same frames"
                    if trial is not None and min(t_lat.size, r_lat.size) >= WATCH_MIN_PAIRED_FRAMES
                    else "no paired comparison shows it slower"
                )
            )
        outcome = Outcome.FAIL if findings else Outcome.PASS
    return CanaryVerdict(
        outcome=outcome,
        phase=VerdictPhase.WATCH,
        frames=frames,
        seconds=elapsed_s,
        candidate_latency=c_summary,
        baseline_latency=b_summary,
        sla_ms=policy.sla_ms,
        latency_budget_ms=budget,
        p95_ratio=p95_ratio,
        errors=served.error_count,
        nans=served.nan_count,
        throttling=throttling,
        reasons=tuple(reason for _, reason in findings),
        failed_checks=tuple(dict.fromkeys(check for check, _ in findings)) if outcome is Outcome.FAIL else (),
        notes=tuple(notes),
        **numbers,
    )


_PROTO_OUTCOME = {
    Outcome.PASS: common_pb2.CanaryVerdict.OUTCOME_PASS,
    Outcome.FAIL: common_pb2.CanaryVerdict.OUTCOME_FAIL,
    Outcome.INCONCLUSIVE: common_pb2.CanaryVerdict.OUTCOME_INCONCLUSIVE,
}


def _wire(value: float | None) -> float:
    # proto3 doubles have no "unset"; 0 reads as "not measured" next to a count of 0.
    return 0.0 if value is None or math.isnan(value) else value


def _percentiles(summary: LatencySummary) -> common_pb2.Percentiles:
    return common_pb2.Percentiles(
        p50_ms=_wire(summary.p50_ms), p95_ms=_wire(summary.p95_ms), p99_ms=_wire(summary.p99_ms), count=summary.count
    )


def verdict_to_proto(
    verdict: CanaryVerdict,
    *,
    candidate_digest: str = "",
    baseline_digest: str = "",
    decided_at: datetime | None = None,
    candidate_config_digest: str = "",
    baseline_config_digest: str = "",
) -> common_pb2.CanaryVerdict:
    """The wire form. ``errors`` on the wire counts errors plus NaN frames (the reasons tell them apart);
    numbers not computed are 0. Raises ``PendingVerdictError`` for a ``pending`` verdict."""
    if verdict.outcome is Outcome.PENDING:
        raise PendingVerdictError(
            f"a pending canary verdict ({verdict.frames} frames so far) has no wire form; "
            "report it once decide_verdict returns pass, fail or inconclusive"
        )
    message = common_pb2.CanaryVerdict(
        outcome=_PROTO_OUTCOME[verdict.outcome],
        candidate_digest=candidate_digest,
        baseline_digest=baseline_digest,
        candidate_config_digest=candidate_config_digest,
        baseline_config_digest=baseline_config_digest,
        phase=str(verdict.phase),
        frames=verdict.frames,
        seconds=verdict.seconds,
        candidate_latency=_percentiles(verdict.candidate_latency),
        baseline_latency=_percentiles(verdict.baseline_latency),
        latency_budget_ms=verdict.latency_budget_ms,
        p95_ratio=_wire(verdict.p95_ratio),
        latency_p_value=_wire(verdict.latency_p_value),
        psi=_wire(verdict.psi),
        ks_statistic=_wire(verdict.ks_statistic),
        ks_p_value=_wire(verdict.ks_p_value),
        agreement=_wire(verdict.agreement),
        errors=verdict.errors + verdict.nans,
        reasons=list(verdict.reasons),
        throttling=verdict.throttling,
        notes=list(verdict.notes),
    )
    if decided_at is not None:
        message.decided_at.FromDatetime(decided_at)
    return message
