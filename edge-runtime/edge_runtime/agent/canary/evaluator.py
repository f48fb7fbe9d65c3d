"""The agent's ``CandidateEvaluator``: golden preflight, shadow canary on live frames, trial watch window.

1. Golden preflight (synchronous, first run only): the staged engine runs every golden input of the bundle
   (``golden.npz``, written by the publisher's CPU); each output must match the reference within the
   tolerance of the precision variant the engine serves (``served_golden_tolerance``; the switcher says
   which: ``SlotSwitcher.choice_of``). The golden outputs are FP32's, so an INT8 or FP16 variant is checked
   with the tolerance the builder recorded for it (its ``metrics.golden_tolerance``: twice its own deviation
   from FP32 on these inputs, never below the bundle's; ``edgefleet_pipeline.precision_bundle``); FP32, a
   variant without a recorded tolerance (bundles built before it was recorded) and an engine of unknown
   variant use the bundle's ``canary.golden_tolerance``. That catches a model this device's providers compute
   wrongly (a broken TensorRT build, a bad INT8 table, a corrupted artifact) before it sees a live frame,
   without failing a device for the quantization error alone. The summary (or the reason) names the variant
   and the tolerance it was judged with.
2. Shadow canary (asynchronous): a ``ShadowRun`` is attached to the frame loop, so the candidate runs on
   the same live frames as the committed engine without ever serving them (see ``agent.canary.shadow``). Every
   ``decide_every_s`` the pure ``decide_verdict`` judges both sides' samples, with ``elapsed_s`` since
   the run started and ``deadline_reached`` at ``canary.deadline_s``. The ``CanaryPolicy`` is read when
   the run starts from ``precedence.resolve_policy``: the built-in defaults < the CANDIDATE bundle's
   declared policy (its ``canary`` section and latency SLA) < the operator config the device received,
   each layer overriding only the keys it sets. A first-ever bundle runs alone (nothing
   committed to compare with): only the SLA and errors/NaNs can fail it.
3. Trial watch (paired): after the swap the candidate serves and the engine it replaced stays loaded
   (the slot's ``previous``: the previous bundle, or the same bundle under the previous config). A
   ``WatchRun`` records every served frame and runs the previous engine in shadow on a rate-limited
   sample of the same frames (``canary.watch_shadow_every_ms``, ``canary.watch_shadow_max_share``; see
   ``agent.canary.shadow``). After ``canary.watch_window_s`` the pure ``decide_watch`` judges the paired rows with
   the canary's own statistics — latency regression, drift, agreement, side by side on the same frames at
   the same moment, so host load and heat cancel out — and attributes a latency-budget miss to the
   candidate only when the previous engine met the budget on those frames. Nothing is compared with the
   canary's numbers from minutes before. The policy is read afresh from the config and the bundle when
   the window starts (the canary's policy if the bundle directory is unknown). Thermal throttling is
   judged from clocks and temperatures (``thermal``, read when the window starts, every
   ``thermal_every_s`` and at its end); it is the candidate's fault only when the paired comparison shows
   it slower (then the trial fails, the reason naming the throttling); throttling without a paired
   regression passes the window, with a verdict note and an ``alert`` (so is a budget both bundles missed
   on the same frames: the host's, not the bundle's). An error or NaN fails the window at once; a window
   that served no frame waits for the first one.

   First install (nothing committed before, so nothing to pair with): the window judges errors/NaNs and
   the SLA budget on the served frames, nothing else. A budget miss is a ``latency_only`` verdict; the
   update machine's first-install policy (``update.state``) decides what it means: it serves the bundle
   with degraded health and an alert rather than leaving the device with nothing, while errors refuse it.

Verdicts → update events, posted through ``post`` (thread-safe): canary PASS → ``CanaryPassed(summary)``,
FAIL → ``CanaryFailed(reasons)``; INCONCLUSIVE → ``after_inconclusive(count, canary.inconclusive_limit)``
with ``count`` the inconclusive runs of this candidate in a row: ``retry`` → ``CanaryInconclusive`` (the
update machine starts another run while ``RetryLimits.max_canary_attempts`` allows, else it rolls back
without rejecting the bundle); ``reject`` → ``CanaryFailed("inconclusive N times ...")``, so the bundle is
rejected as the policy says. The controller counts inconclusive verdict events against the same limit.
Watch PASS → ``TrialPassed`` (the machine commits only then: installed is never succeeded), FAIL →
``TrialFailed(reasons)`` (the driver swaps back between two frames; a window whose candidate is not the
engine serving fails at once). A config whose canary policy is
invalid cannot judge anything: ``CanaryInconclusive`` with the config error, never a rejection of the
bundle for the operator's mistake.

Every final verdict (preflight failures included, as a ``canary`` FAIL with zero frames) goes to
``report_verdict`` as a wire ``CanaryVerdict`` with its numbers, reasons and notes (watch verdicts: phase
``watch``, the candidate and previous engine's latencies on the paired frames, ``throttling``); the agent's
reporter keeps it as ``ReportedState.last_verdict`` and sends it as a ``KIND_CANARY_VERDICT`` event.
Verdicts carry the engines' bundle and config digests, so a config candidate's verdict names both configs.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, assert_never

import numpy as np
import structlog

from edge_runtime.agent.canary.shadow import NOT_THROTTLING, ShadowRateLimit, ShadowRun, ThermalState, WatchRun
from edge_runtime.agent.runner import FrameRunner
from edge_runtime.agent.update.switcher import SlotSwitcher
from edge_runtime.canary.errors import PolicyError, SamplesError
from edge_runtime.canary.policy import CanaryPolicy, after_inconclusive
from edge_runtime.canary.report import CHECK_BUDGET, CHECK_REGRESSION, CanaryVerdict, Outcome, verdict_to_proto
from edge_runtime.canary.verdict import WATCH_MIN_PAIRED_FRAMES, decide_verdict, decide_watch
from edge_runtime.inference import InferenceEngine
from edge_runtime.update.events import (
    CanaryFailed,
    CanaryInconclusive,
    CanaryPassed,
    CanaryStarted,
    TrialFailed,
    TrialPassed,
    UpdateEvent,
)
from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_layout import GOLDEN_ROLE, MANIFEST_NAME
from edgefleet.contract.bundle_policy import GoldenTolerance
from edgefleet.contract.errors import ContractError
from edgefleet.contract.frozen import thaw
from edgefleet.contract.golden import load_golden
from edgefleet.contract.precedence import resolve_policy
from edgefleet.contract.shown import shown
from edgefleet.v1 import common_pb2

log = structlog.get_logger(__name__)

DEFAULT_WATCH_WINDOW_S = 600.0
DECIDE_EVERY_S = 0.5
THERMAL_EVERY_S = 5.0
_POLL_S = 0.1
#: The key of a variant's golden tolerance in its ``metrics`` (written by ``edgefleet_pipeline.precision_bundle``).
GOLDEN_TOLERANCE_KEY = "golden_tolerance"

#: ``alert(bundle digest, reason, numbers)``: something the device should hear about that rolled nothing back.
AlertPort = Callable[[str, str, Mapping[str, float]], None]


@dataclass(frozen=True)
class ServedTolerance:
    """The tolerance a golden preflight judges with, and where it comes from (``source``, in words)."""

    tolerance: GoldenTolerance
    variant: str | None
    source: str

    def describe(self) -> str:
        """``atol 0.0262, rtol 0.001: the builder's tolerance for variant int8``."""
        return f"atol {self.tolerance.atol:g}, rtol {self.tolerance.rtol:g}: {self.source}"


def served_golden_tolerance(manifest: BundleManifest, variant: str | None) -> ServedTolerance:
    """The tolerance for the engine serving precision ``variant`` of ``manifest`` (None: unknown variant).

    A recorded ``metrics.golden_tolerance`` is taken as given, though never tighter than the bundle's; a
    malformed one is a ``ValueError`` (the preflight fails with it: the publisher must rebuild the bundle).
    """
    bundle = manifest.canary.golden_tolerance
    if variant is None:
        return ServedTolerance(bundle, None, "the bundle's canary.golden_tolerance (variant unknown)")
    declared = (manifest.precision_variants or {}).get(variant)
    recorded = declared.metrics.get(GOLDEN_TOLERANCE_KEY) if declared is not None else None
    if recorded is None:
        return ServedTolerance(bundle, variant, f"the bundle's canary.golden_tolerance (variant {variant})")
    values: dict[str, float] = {}
    for key in ("atol", "rtol"):
        value = recorded.get(key) if isinstance(recorded, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"bundle {manifest.ref}: precision variant {shown(variant)}: metrics.{GOLDEN_TOLERANCE_KEY}.{key} "
                f"must be a finite number >= 0, got {shown(recorded)}; rebuild the bundle"
            )
        values[key] = float(value)
    tolerance = GoldenTolerance(atol=max(values["atol"], bundle.atol), rtol=max(values["rtol"], bundle.rtol))
    return ServedTolerance(tolerance, variant, f"the builder's tolerance for variant {variant}")


def golden_check(
    engine_run: Callable[[Any], list[Any]],
    input_name: str,
    output_names: Sequence[str],
    bundle_dir: Path,
    *,
    variant: str | None = None,
) -> tuple[bool, str]:
    """Run the bundle's golden cases on the engine serving precision ``variant`` (None: unknown, judged with
    the bundle's tolerance); (passed, summary or reason), each naming the variant and the tolerance."""
    manifest = BundleManifest.from_json_bytes((bundle_dir / MANIFEST_NAME).read_bytes())
    if GOLDEN_ROLE not in manifest.artifacts:
        return True, "no golden inputs in the bundle; preflight skipped"
    served = served_golden_tolerance(manifest, variant)
    tol = served.tolerance
    of = f" of variant {variant}" if variant is not None else ""
    cases = load_golden(bundle_dir / manifest.artifact(GOLDEN_ROLE).path)
    worst = 0.0
    for i, case in enumerate(cases):
        if input_name not in case.inputs:
            return False, f"golden case {i}: no input {shown(input_name)} (has {sorted(case.inputs)})"
        outputs = engine_run(case.inputs[input_name])
        for name, got in zip(output_names, outputs, strict=False):
            want = case.outputs.get(name)
            if want is None:
                continue
            got_arr = np.asarray(got).reshape(np.shape(want))
            diff = float(np.max(np.abs(got_arr.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
            worst = max(worst, diff)
            if not np.allclose(got_arr, want, atol=tol.atol, rtol=tol.rtol):
                return False, (
                    f"golden case {i}: output {shown(name)}{of} differs from the reference by up to {diff:.6g} "
                    f"({served.describe()}); this device computes the model differently"
                )
    passed = f"golden preflight passed (variant {variant})" if variant is not None else "golden preflight passed"
    return True, f"{passed}: {len(cases)} cases, max abs diff {worst:.3g} within {served.describe()}"


def canary_policy(config: Mapping[str, Any], bundle_dir: Path) -> CanaryPolicy:
    """The policy for the bundle in ``bundle_dir``: defaults < its declared policy < the operator ``config``
    (``precedence.resolve_policy``; raises ``PolicyError``, ``ContractError`` or ``OSError``)."""
    manifest = BundleManifest.from_json_bytes((bundle_dir / MANIFEST_NAME).read_bytes())
    return CanaryPolicy.from_config(resolve_policy(config, bundle=manifest).values)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _event_numbers(verdict: CanaryVerdict) -> tuple[tuple[str, float], ...]:
    """The figures a failing verdict hands the update machine (its first-install alert carries them)."""
    numbers = {
        "candidate_p95_ms": verdict.candidate_latency.p95_ms,
        "latency_budget_ms": verdict.latency_budget_ms,
        "sla_ms": verdict.sla_ms,
        "frames": float(verdict.frames),
    }
    return tuple((k, float(v)) for k, v in numbers.items() if math.isfinite(v))


@dataclass(eq=False, repr=False)
class CanaryEvaluator:
    """Golden preflight + shadow canary (canary) and the watch window (trial); see the module docstring."""

    switcher: SlotSwitcher
    runner: FrameRunner
    post: Callable[[UpdateEvent], None]
    _: KW_ONLY
    config: Callable[[], Mapping[str, Any]] = dict
    report_verdict: Callable[[common_pb2.CanaryVerdict], None] = lambda _: None
    thermal: Callable[[], ThermalState] = lambda: NOT_THROTTLING
    alert: AlertPort = lambda _digest, _reason, _numbers: None
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] = _utc_now
    decide_every_s: float = DECIDE_EVERY_S
    thermal_every_s: float = THERMAL_EVERY_S

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        # One running job (canary run or watch window) per candidate, stopped by its event.
        self._jobs: dict[str, threading.Event] = {}
        self._runs: dict[str, int] = {}
        self._inconclusive: dict[str, int] = {}
        # What a passed canary leaves for its watch window: the policy it judged with, the bundle directory.
        self._policies: dict[str, CanaryPolicy] = {}
        self._dirs: dict[str, Path] = {}
        self._attached: dict[str, ShadowRun | WatchRun] = {}

    def watch_window_s(self) -> float:
        # No bundle declares a watch window: defaults < operator config.
        value = resolve_policy(self.config()).get("canary.watch_window_s")
        return float(value) if isinstance(value, int | float) else DEFAULT_WATCH_WINDOW_S

    # ------------------------------------------------------------------ canary

    def start_canary(self, digest: str, bundle_dir: Path) -> Sequence[UpdateEvent]:
        engine = self.switcher.staged_engine(digest)
        slot = self.switcher.slot
        baseline = slot.current if slot.has_engine else None
        baseline_digest = baseline.bundle_digest if baseline is not None else None
        with self._lock:
            first = digest not in self._runs
            self._runs[digest] = self._runs.get(digest, 0) + 1
            self._dirs[digest] = bundle_dir
        started: list[UpdateEvent] = [CanaryStarted()] if first else []
        if engine is None:
            reason = f"candidate {digest} is not loaded; staging must have failed"
            self._report_failure(digest, baseline_digest, reason)
            return [*started, CanaryFailed(reason)]
        if first:
            try:
                names = [o.name for o in engine.session.get_outputs()]
                choice = self.switcher.choice_of(engine)
                passed, text = golden_check(
                    engine.run_tensor,
                    engine.input_name,
                    names,
                    bundle_dir,
                    variant=choice.name if choice is not None else None,
                )
            except (ContractError, OSError, ValueError, RuntimeError) as exc:
                passed, text = False, f"golden preflight could not run: {exc}"
            log.info("canary.preflight", digest=digest, passed=passed, summary=text)
            if not passed:
                self._report_failure(digest, baseline_digest, text)
                return [*started, CanaryFailed(text)]
        try:
            policy = canary_policy(self.config(), bundle_dir)
        except (PolicyError, ContractError, OSError) as exc:
            reason = f"canary policy cannot be built from the config and bundle: {exc}"
            log.error("canary.policy_invalid", digest=digest, error=str(exc))
            return [*started, CanaryInconclusive(reason)]
        run = ShadowRun(engine, baseline, started_at=self.monotonic())
        self._start_job(digest, run, policy)
        log.info(
            "canary.shadow_started",
            digest=digest,
            baseline=baseline_digest,
            min_frames=policy.min_frames,
            min_seconds=policy.min_seconds,
            deadline_s=policy.deadline_s,
            latency_budget_ms=round(policy.latency_budget_ms, 3),
        )
        return started

    def _start_job(self, digest: str, run: ShadowRun | WatchRun, policy: CanaryPolicy) -> None:
        """Replace the candidate's running job with ``run``, attach it to the frame loop, start its thread."""
        stop = self._replace_job(digest, run)
        match run:
            case ShadowRun():
                self.runner.attach_shadow(run)
                job = threading.Thread(target=self._canary_loop, args=(run, policy, stop), name="canary-shadow")
            case WatchRun():
                self.runner.attach_watch(run)
                job = threading.Thread(target=self._watch_loop, args=(run, policy, stop), name="trial-watch")
            case _:
                assert_never(run)
        job.daemon = True
        job.start()

    def _replace_job(self, digest: str, run: ShadowRun | WatchRun) -> threading.Event:
        stop = threading.Event()
        with self._lock:
            old = self._jobs.pop(digest, None)
            if old is not None:
                old.set()
            self._detach(self._attached.pop(digest, None))
            self._jobs[digest] = stop
            self._attached[digest] = run
        return stop

    def _detach(self, run: ShadowRun | WatchRun | None) -> None:
        match run:
            case ShadowRun():
                self.runner.detach_shadow(run)
            case WatchRun():
                self.runner.detach_watch(run)
            case None:
                pass
            case _:
                assert_never(run)

    def _finish_job(self, digest: str, stop: threading.Event) -> bool:
        """Whether ``stop``'s job is still the current one for ``digest`` (then it is removed)."""
        with self._lock:
            if stop.is_set() or self._jobs.get(digest) is not stop:
                return False
            del self._jobs[digest]
            self._attached.pop(digest, None)
            return True

    def _canary_loop(self, run: ShadowRun, policy: CanaryPolicy, stop: threading.Event) -> None:
        digest = run.candidate_digest
        try:
            while True:
                if stop.wait(self.decide_every_s):
                    return
                elapsed = self.monotonic() - run.started_at
                candidate, baseline = run.samples()
                verdict = decide_verdict(
                    candidate, baseline, policy, elapsed_s=elapsed, deadline_reached=elapsed >= policy.deadline_s
                )
                if verdict.decided:
                    break
        except SamplesError as exc:  # a recording bug must end the run visibly, not hang the update
            log.error("canary.samples_invalid", digest=digest, error=str(exc))
            self.runner.detach_shadow(run)
            if self._finish_job(digest, stop):
                self.post(CanaryInconclusive(f"canary samples could not be judged: {exc}"))
            return
        finally:
            self.runner.detach_shadow(run)
        if not self._finish_job(digest, stop):
            return
        event = self._canary_event(digest, verdict, policy)
        if verdict.outcome is Outcome.PASS:
            with self._lock:
                self._policies[digest] = policy
        self._publish(verdict, run.candidate, run.baseline)
        log.info(
            "canary.verdict",
            digest=digest,
            outcome=str(verdict.outcome),
            frames=verdict.frames,
            summary=verdict.summary(),
            update_event=type(event).__name__,
        )
        self.post(event)

    def _canary_event(self, digest: str, verdict: CanaryVerdict, policy: CanaryPolicy) -> UpdateEvent:
        reasons = "; ".join(verdict.reasons)
        if verdict.outcome is Outcome.PASS:
            with self._lock:
                self._inconclusive.pop(digest, None)
            return CanaryPassed(verdict.summary())
        if verdict.outcome is Outcome.FAIL:
            return CanaryFailed(reasons, latency_only=verdict.latency_only, numbers=_event_numbers(verdict))
        with self._lock:
            count = self._inconclusive.get(digest, 0) + 1
            self._inconclusive[digest] = count
        if after_inconclusive(count, policy.inconclusive_limit) == "retry":
            return CanaryInconclusive(reasons)
        return CanaryFailed(
            f"canary inconclusive {count} times in a row (canary.inconclusive_limit {policy.inconclusive_limit}): "
            f"{reasons}",
            inconclusive=True,
            numbers=_event_numbers(verdict),
        )

    def _publish(self, verdict: CanaryVerdict, candidate: InferenceEngine, baseline: InferenceEngine | None) -> None:
        message = verdict_to_proto(
            verdict,
            candidate_digest=candidate.bundle_digest,
            baseline_digest=baseline.bundle_digest if baseline is not None else "",
            decided_at=self.wall(),
            candidate_config_digest=candidate.config_digest,
            baseline_config_digest=baseline.config_digest if baseline is not None else "",
        )
        try:
            self.report_verdict(message)
        except Exception as exc:  # reporting must never block the update that follows the verdict
            log.warning("canary.verdict_report_failed", error=str(exc))

    def _report_failure(self, digest: str, baseline_digest: str | None, reason: str) -> None:
        message = common_pb2.CanaryVerdict(
            outcome=common_pb2.CanaryVerdict.OUTCOME_FAIL,
            candidate_digest=digest,
            baseline_digest=baseline_digest or "",
            phase="canary",
            reasons=[reason],
        )
        message.decided_at.FromDatetime(self.wall())
        try:
            self.report_verdict(message)
        except Exception as exc:
            log.warning("canary.verdict_report_failed", error=str(exc))

    # ------------------------------------------------------------------ trial watch

    def start_watch(
        self,
        digest: str,
        bundle_dir: Path | None = None,
        *,
        reference: InferenceEngine | None = None,
        paired: bool = True,
    ) -> Sequence[UpdateEvent]:
        """Watch the trial of ``digest``, which must be the engine serving now.

        ``reference`` is the engine to pair it with; by default the slot's previous engine (the one the swap
        replaced: the previous bundle, or the same bundle under the previous config). ``None`` with no
        previous engine: a first install, judged on errors and the SLA alone. ``bundle_dir`` lets the policy
        be read afresh (a trial resumed after a restart has no canary of this process behind it).
        ``paired=False``: a config change that kept the engine (the update machine's passive config
        candidate) has nothing to pair with, and is judged like a first install: errors and the SLA.
        """
        slot = self.switcher.slot
        trial = slot.current if slot.has_engine else None
        if trial is None or trial.bundle_digest != digest:
            serving = trial.bundle_digest if trial is not None else "nothing"
            reason = f"trial of {digest} cannot be watched: the slot serves {serving}; the swap must have failed"
            log.error("canary.watch_not_serving", digest=digest, serving=serving)
            return [TrialFailed(reason)]
        if reference is None and paired:
            previous = slot.previous
            reference = previous if previous is not None and previous is not trial else None
        policy = self._watch_policy(digest, bundle_dir)
        run = WatchRun(trial, reference, started_at=self.monotonic(), limit=ShadowRateLimit.from_policy(policy))
        self._start_job(digest, run, policy)
        log.info(
            "canary.watch_started",
            digest=digest,
            window_s=policy.watch_window_s,
            paired_with=run.reference_digest,
            shadow_every_ms=policy.watch_shadow_every_ms,
            shadow_max_share=policy.watch_shadow_max_share,
        )
        return []

    def _watch_policy(self, digest: str, bundle_dir: Path | None) -> CanaryPolicy:
        with self._lock:
            remembered = self._policies.get(digest)
            directory = bundle_dir or self._dirs.get(digest)
        window = self.watch_window_s()
        if directory is not None:
            try:
                return canary_policy(self.config(), directory)
            except (PolicyError, ContractError, OSError) as exc:
                log.error("canary.watch_policy_invalid", digest=digest, error=str(exc))
        if remembered is not None:
            return remembered
        # Neither a bundle to read the SLA from nor a canary of this process: the paired statistics still
        # judge with the operator's thresholds over the defaults; only an SLA no layer sets is unknown.
        try:
            values = thaw(resolve_policy(self.config()).values)
            sla = values.setdefault("sla", {})
            if isinstance(sla, dict) and sla.get("latency_ms") is None:
                sla["latency_ms"] = math.inf
            return CanaryPolicy.from_config(values)
        except PolicyError as exc:
            log.error("canary.watch_policy_invalid", digest=digest, error=str(exc))
            return CanaryPolicy(sla_ms=math.inf, watch_window_s=window)

    def _read_thermal(self) -> ThermalState:
        try:
            return self.thermal()
        except Exception as exc:  # a sensor problem must never decide a watch window
            log.warning("canary.sensors_unreadable", error=str(exc), error_type=type(exc).__name__)
            return NOT_THROTTLING

    def _watch_loop(self, run: WatchRun, policy: CanaryPolicy, stop: threading.Event) -> None:
        digest = run.digest
        end = run.started_at + policy.watch_window_s
        thermal: list[ThermalState] = []
        next_thermal = run.started_at
        try:
            while True:
                now = self.monotonic()
                if now >= next_thermal:
                    thermal.append(self._read_thermal())
                    next_thermal = now + self.thermal_every_s
                served = run.samples()
                if served.error_count or served.nan_count or (now >= end and served.frames > 0):
                    break
                if stop.wait(min(self.decide_every_s, _POLL_S)):
                    return
        finally:
            self.runner.detach_watch(run)
        thermal.append(self._read_thermal())
        hot = next((t for t in thermal if t.throttling), thermal[-1])
        try:
            verdict = decide_watch(
                served, run.paired_samples(), policy, throttling=hot.throttling, elapsed_s=now - run.started_at
            )
        except SamplesError as exc:  # a recording bug must end the window visibly, not hang the update
            log.error("canary.samples_invalid", digest=digest, error=str(exc))
            if self._finish_job(digest, stop):
                self.post(TrialFailed(f"watch samples could not be judged: {exc}"))
            return
        if not self._finish_job(digest, stop):
            return
        with self._lock:
            self._policies.pop(digest, None)
            self._dirs.pop(digest, None)
        self._publish(verdict, run.trial, run.reference)
        self._raise_alerts(verdict, run, hot)
        if verdict.outcome is Outcome.FAIL:
            detail = f" (last error: {run.side.last_error})" if served.error_count and run.side.last_error else ""
            event: UpdateEvent = TrialFailed(
                "; ".join(verdict.reasons) + detail,
                latency_only=verdict.latency_only,
                numbers=_event_numbers(verdict),
            )
        else:
            event = TrialPassed()
        log.info(
            "canary.watch_finished",
            digest=digest,
            outcome=str(verdict.outcome),
            paired_with=run.reference_digest,
            pairs=run.pairs,
            throttling=hot.throttling,
            summary=verdict.summary(),
            notes=list(verdict.notes),
            update_event=type(event).__name__,
        )
        self.post(event)

    def _raise_alerts(self, verdict: CanaryVerdict, run: WatchRun, thermal: ThermalState) -> None:
        """Conditions the paired window saw but did not blame on the candidate are still worth an alert."""
        latency_failed = {CHECK_BUDGET, CHECK_REGRESSION} & set(verdict.failed_checks)
        numbers = {
            "candidate_p95_ms": verdict.candidate_latency.p95_ms,
            "baseline_p95_ms": verdict.baseline_latency.p95_ms,
            "latency_budget_ms": verdict.latency_budget_ms,
            "paired_frames": float(run.pairs),
        }
        numbers = {k: v for k, v in numbers.items() if math.isfinite(v)}
        if verdict.throttling and not latency_failed:
            self._send_alert(
                run.digest,
                f"thermal throttling during the watch window, not attributed to the bundle ({thermal.summary})",
                {**numbers, **thermal.numbers},
            )
        both_over = (
            run.reference is not None
            and min(verdict.candidate_latency.count, verdict.baseline_latency.count) >= WATCH_MIN_PAIRED_FRAMES
            and verdict.candidate_latency.p95_ms > verdict.latency_budget_ms
            and verdict.baseline_latency.p95_ms > verdict.latency_budget_ms
        )
        if both_over:
            self._send_alert(
                run.digest,
                f"latency budget {verdict.latency_budget_ms:.1f} ms missed by both the candidate and the previous "
                f"bundle on the same frames (p95 {verdict.candidate_latency.p95_ms:.1f} vs "
                f"{verdict.baseline_latency.p95_ms:.1f} ms): the host cannot meet the SLA, the bundle is kept",
                numbers,
            )

    def _send_alert(self, digest: str, reason: str, numbers: Mapping[str, float]) -> None:
        log.warning("canary.watch_alert", digest=digest, reason=reason, **{k: round(v, 3) for k, v in numbers.items()})
        try:
            self.alert(digest, reason, numbers)
        except Exception as exc:  # an alert must never block the update that follows the verdict
            log.warning("canary.alert_failed", error=str(exc))

    def stop(self, digest: str) -> None:
        with self._lock:
            stop = self._jobs.pop(digest, None)
            self._inconclusive.pop(digest, None)
            self._runs.pop(digest, None)
            self._policies.pop(digest, None)
            self._dirs.pop(digest, None)
            self._detach(self._attached.pop(digest, None))
        if stop is not None:
            stop.set()
