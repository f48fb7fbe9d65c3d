"""The canary verdict: does the staged bundle, run in shadow on live frames, deserve promotion?

Owns the decision rules: ``decide_verdict`` for the canary and ``decide_watch`` for the post-promotion
watch window, and the checks they share (budget, regression, drift, agreement, errors), each finding with
its reason in words and numbers. The thresholds are ``policy.CanaryPolicy``; how findings become a
``CanaryVerdict`` and its wire form is ``report``. Pure: samples, elapsed time and the deadline come in as
values; nothing here reads a clock or touches a file.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.canary.agreement import detection_agreement, label_agreement
from edge_runtime.canary.errors import SamplesError
from edge_runtime.canary.policy import CanaryPolicy
from edge_runtime.canary.report import (
    CHECK_AGREEMENT,
    CHECK_BUDGET,
    CHECK_DRIFT,
    CHECK_ERRORS,
    CHECK_NANS,
    CHECK_REGRESSION,
    CanaryVerdict,
    Finding,
    LatencySummary,
    Measurements,
    Outcome,
    VerdictPhase,
    build_verdict,
)
from edge_runtime.canary.samples import CanarySamples
from edge_runtime.canary.stats import (
    FloatArray,
    MannWhitneyResult,
    ks_two_sample,
    mann_whitney_greater,
    median,
    population_stability_index,
)


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


def _error_findings(samples: CanarySamples, side: str) -> list[Finding]:
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
    budget = policy.latency_budget_ms
    errors, nans = candidate.error_count, candidate.nan_count
    measured = Measurements(frames, elapsed_s, c_summary, b_summary, policy.sla_ms, budget, errors, nans)
    p95_ratio = measured.p95_ratio

    def verdict(outcome: Outcome, findings: list[Finding], **numbers: float | None) -> CanaryVerdict:
        return build_verdict(outcome, VerdictPhase.CANARY, measured, findings, numbers=numbers)

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

    findings: list[Finding] = []
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
    numbers: dict[str, float | None] = {}
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
    errors, nans = served.error_count, served.nan_count
    measured = Measurements(frames, elapsed_s, c_summary, b_summary, policy.sla_ms, budget, errors, nans, throttling)
    p95_ratio = measured.p95_ratio

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
    return build_verdict(outcome, VerdictPhase.WATCH, measured, findings, notes=notes, numbers=numbers)
