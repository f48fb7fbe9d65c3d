"""The agent's ``CandidateEvaluator``: golden preflight, shadow canary on live frames, trial watch window.

1. Golden preflight (synchronous, first run only): the staged engine runs every golden input of the bundle
   (``golden.npz``, written by the publisher's CPU); each output must match the reference within the
   bundle's ``canary.golden_tolerance``. That catches a model this device's providers compute wrongly (a
   broken TensorRT build, a bad INT8 table) before it sees a live frame.
2. Shadow canary (asynchronous): a ``ShadowRun`` is attached to the frame loop, so the candidate runs on
   the same live frames as the committed engine without ever serving them (see ``agent.shadow``). Every
   ``decide_every_s`` the pure ``decide_verdict`` judges both sides' samples, with ``elapsed_s`` since
   the run started and ``deadline_reached`` at ``canary.deadline_s``. The ``CanaryPolicy`` is read when
   the run starts from ``precedence.resolve_policy``: the built-in defaults < the CANDIDATE bundle's
   declared policy (its ``canary`` section and latency SLA) < the operator config the device received,
   each layer overriding only the keys it sets. A first-ever bundle runs alone (nothing
   committed to compare with): only the SLA and errors/NaNs can fail it.
3. Trial watch: after the swap the candidate serves; its served frames are recorded for
   ``canary.watch_window_s`` and ``decide_watch`` judges them against the canary's baseline p95 (for a
   first-ever bundle: its own canary p95), with confidence PSI against the canary baseline's confidences
   when both have at least ``psi_min_samples`` frames (else drift is not measured), and the thermal
   throttling flag read from the sensors at the end of the window. An error or NaN fails the window at
   once; a window that served no frame waits for the first one.

Verdicts → update events, posted through ``post`` (thread-safe): canary PASS → ``CanaryPassed(summary)``,
FAIL → ``CanaryFailed(reasons)``; INCONCLUSIVE → ``after_inconclusive(count, canary.inconclusive_limit)``
with ``count`` the inconclusive runs of this candidate in a row: ``retry`` → ``CanaryInconclusive`` (the
update machine starts another run while ``RetryLimits.max_canary_attempts`` allows, else it rolls back
without rejecting the bundle); ``reject`` → ``CanaryFailed("inconclusive N times ...")``, so the bundle is
rejected as the policy says. The controller counts inconclusive verdict events against the same limit.
Watch PASS → ``TrialPassed`` (the machine commits only then: installed is never succeeded), FAIL →
``TrialFailed(reasons)`` (the driver swaps back between two frames). A config whose canary policy is
invalid cannot judge anything: ``CanaryInconclusive`` with the config error, never a rejection of the
bundle for the operator's mistake.

Every final verdict (preflight failures included, as a ``canary`` FAIL with zero frames) goes to
``report_verdict`` as a wire ``CanaryVerdict`` with its numbers and reasons; the agent's reporter keeps it
as ``ReportedState.last_verdict`` and sends it as a ``KIND_CANARY_VERDICT`` event.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from edge_runtime.agent.runner import FrameRunner
from edge_runtime.agent.shadow import ShadowRun, WatchRun, output_kind
from edge_runtime.agent.switcher import SlotSwitcher
from edge_runtime.canary import (
    CanaryPolicy,
    CanarySamples,
    CanaryVerdict,
    Outcome,
    PolicyError,
    SamplesError,
    after_inconclusive,
    decide_verdict,
    decide_watch,
    verdict_to_proto,
)
from edge_runtime.canary.stats import population_stability_index
from edge_runtime.update.state import (
    CanaryFailed,
    CanaryInconclusive,
    CanaryPassed,
    CanaryStarted,
    TrialFailed,
    TrialPassed,
    UpdateEvent,
)
from edgefleet.contract.bundle import GOLDEN_ROLE, MANIFEST_NAME, BundleManifest
from edgefleet.contract.bundle_builder import load_golden
from edgefleet.contract.errors import ContractError
from edgefleet.contract.precedence import resolve_policy
from edgefleet.v1 import common_pb2

log = structlog.get_logger(__name__)

DEFAULT_WATCH_WINDOW_S = 600.0
DECIDE_EVERY_S = 0.5
_POLL_S = 0.1


def golden_check(
    engine_run: Callable[[Any], list[Any]], input_name: str, output_names: Sequence[str], bundle_dir: Path
) -> tuple[bool, str]:
    """Run the bundle's golden cases; (passed, summary or reason)."""
    manifest = BundleManifest.from_json_bytes((bundle_dir / MANIFEST_NAME).read_bytes())
    if GOLDEN_ROLE not in manifest.artifacts:
        return True, "no golden inputs in the bundle; preflight skipped"
    tol = manifest.canary.golden_tolerance
    cases = load_golden(bundle_dir / manifest.artifact(GOLDEN_ROLE).path)
    worst = 0.0
    for i, case in enumerate(cases):
        if input_name not in case.inputs:
            return False, f"golden case {i}: no input {input_name!r} (has {sorted(case.inputs)})"
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
                    f"golden case {i}: output {name!r} differs from the reference by up to {diff:.6g} "
                    f"(atol {tol.atol}, rtol {tol.rtol}); this device computes the model differently"
                )
    return True, f"golden preflight passed: {len(cases)} cases, max abs diff {worst:.3g}"


@dataclass(frozen=True)
class CanaryMemory:
    """What a passed canary leaves for its watch window: the policy and the baseline it was measured on."""

    policy: CanaryPolicy
    baseline_digest: str | None
    baseline_p95_ms: float
    baseline_confidence: npt.NDArray[np.float64]


def canary_policy(config: Mapping[str, Any], bundle_dir: Path) -> CanaryPolicy:
    """The policy for the bundle in ``bundle_dir``: defaults < its declared policy < the operator ``config``
    (``precedence.resolve_policy``; raises ``PolicyError``, ``ContractError`` or ``OSError``)."""
    manifest = BundleManifest.from_json_bytes((bundle_dir / MANIFEST_NAME).read_bytes())
    return CanaryPolicy.from_config(resolve_policy(config, bundle=manifest).values)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CanaryEvaluator:
    """Golden preflight + shadow canary (canary) and the watch window (trial); see the module docstring."""

    def __init__(
        self,
        switcher: SlotSwitcher,
        runner: FrameRunner,
        post: Callable[[UpdateEvent], None],
        *,
        config: Callable[[], Mapping[str, Any]] = dict,
        report_verdict: Callable[[common_pb2.CanaryVerdict], None] = lambda _: None,
        throttling: Callable[[], bool] = lambda: False,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utc_now,
        decide_every_s: float = DECIDE_EVERY_S,
    ) -> None:
        self._switcher = switcher
        self._runner = runner
        self._post = post
        self._config = config
        self._report_verdict = report_verdict
        self._throttling = throttling
        self._monotonic = monotonic
        self._wall = wall
        self._every = decide_every_s
        self._lock = threading.Lock()
        # One running job (canary run or watch window) per candidate, stopped by its event.
        self._jobs: dict[str, threading.Event] = {}
        self._runs: dict[str, int] = {}
        self._inconclusive: dict[str, int] = {}
        self._memory: dict[str, CanaryMemory] = {}
        self._attached: dict[str, ShadowRun | WatchRun] = {}

    def watch_window_s(self) -> float:
        # No bundle declares a watch window: defaults < operator config.
        value = resolve_policy(self._config()).get("canary.watch_window_s")
        return float(value) if isinstance(value, int | float) else DEFAULT_WATCH_WINDOW_S

    # ------------------------------------------------------------------ canary

    def start_canary(self, digest: str, bundle_dir: Path) -> Sequence[UpdateEvent]:
        engine = self._switcher.staged_engine(digest)
        slot = self._switcher.slot
        baseline = slot.current if slot.has_engine else None
        baseline_digest = baseline.bundle_digest if baseline is not None else None
        with self._lock:
            first = digest not in self._runs
            self._runs[digest] = self._runs.get(digest, 0) + 1
        started: list[UpdateEvent] = [CanaryStarted()] if first else []
        if engine is None:
            reason = f"candidate {digest} is not loaded; staging must have failed"
            self._report_failure(digest, baseline_digest, reason)
            return [*started, CanaryFailed(reason)]
        if first:
            try:
                names = [o.name for o in engine.session.get_outputs()]
                passed, text = golden_check(engine.run_tensor, engine.input_name, names, bundle_dir)
            except (ContractError, OSError, ValueError, RuntimeError) as exc:
                passed, text = False, f"golden preflight could not run: {exc}"
            log.info("canary.preflight", digest=digest, passed=passed, summary=text)
            if not passed:
                self._report_failure(digest, baseline_digest, text)
                return [*started, CanaryFailed(text)]
        try:
            policy = canary_policy(self._config(), bundle_dir)
        except (PolicyError, ContractError, OSError) as exc:
            reason = f"canary policy cannot be built from the config and bundle: {exc}"
            log.error("canary.policy_invalid", digest=digest, error=str(exc))
            return [*started, CanaryInconclusive(reason)]
        run = ShadowRun(engine, baseline, started_at=self._monotonic())
        stop = self._replace_job(digest, run)
        self._runner.attach_shadow(run)
        threading.Thread(target=self._canary_loop, args=(run, policy, stop), name="canary-shadow", daemon=True).start()
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
        if isinstance(run, ShadowRun):
            self._runner.detach_shadow(run)
        elif isinstance(run, WatchRun):
            self._runner.detach_watch(run)

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
                if stop.wait(self._every):
                    return
                elapsed = self._monotonic() - run.started_at
                candidate, baseline = run.samples()
                verdict = decide_verdict(
                    candidate, baseline, policy, elapsed_s=elapsed, deadline_reached=elapsed >= policy.deadline_s
                )
                if verdict.decided:
                    break
        except SamplesError as exc:  # a recording bug must end the run visibly, not hang the update
            log.error("canary.samples_invalid", digest=digest, error=str(exc))
            self._runner.detach_shadow(run)
            if self._finish_job(digest, stop):
                self._post(CanaryInconclusive(f"canary samples could not be judged: {exc}"))
            return
        finally:
            self._runner.detach_shadow(run)
        if not self._finish_job(digest, stop):
            return
        event = self._canary_event(digest, verdict, policy)
        if verdict.outcome is Outcome.PASS:
            self._remember(run, verdict, policy, baseline)
        self._publish(verdict, digest, run.baseline_digest)
        log.info(
            "canary.verdict",
            digest=digest,
            outcome=str(verdict.outcome),
            frames=verdict.frames,
            summary=verdict.summary(),
            update_event=type(event).__name__,
        )
        self._post(event)

    def _canary_event(self, digest: str, verdict: CanaryVerdict, policy: CanaryPolicy) -> UpdateEvent:
        reasons = "; ".join(verdict.reasons)
        if verdict.outcome is Outcome.PASS:
            with self._lock:
                self._inconclusive.pop(digest, None)
            return CanaryPassed(verdict.summary())
        if verdict.outcome is Outcome.FAIL:
            return CanaryFailed(reasons)
        with self._lock:
            count = self._inconclusive.get(digest, 0) + 1
            self._inconclusive[digest] = count
        if after_inconclusive(count, policy.inconclusive_limit) == "retry":
            return CanaryInconclusive(reasons)
        return CanaryFailed(
            f"canary inconclusive {count} times in a row (canary.inconclusive_limit {policy.inconclusive_limit}): "
            f"{reasons}"
        )

    def _remember(self, run: ShadowRun, verdict: CanaryVerdict, policy: CanaryPolicy, baseline: CanarySamples) -> None:
        base_conf = baseline.confidence[baseline.valid]
        memory = CanaryMemory(
            policy=policy,
            baseline_digest=run.baseline_digest,
            baseline_p95_ms=verdict.baseline_latency.p95_ms,
            baseline_confidence=np.array(base_conf, dtype=np.float64),
        )
        with self._lock:
            self._memory[run.candidate_digest] = memory

    def _publish(self, verdict: CanaryVerdict, digest: str, baseline_digest: str | None) -> None:
        message = verdict_to_proto(
            verdict, candidate_digest=digest, baseline_digest=baseline_digest or "", decided_at=self._wall()
        )
        try:
            self._report_verdict(message)
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
        message.decided_at.FromDatetime(self._wall())
        try:
            self._report_verdict(message)
        except Exception as exc:
            log.warning("canary.verdict_report_failed", error=str(exc))

    # ------------------------------------------------------------------ trial watch

    def start_watch(self, digest: str) -> Sequence[UpdateEvent]:
        window = self.watch_window_s()
        with self._lock:
            memory = self._memory.get(digest)
        engine = self._switcher.slot.current if self._switcher.slot.has_engine else None
        kind = output_kind(engine) if engine is not None and engine.bundle_digest == digest else None
        run = WatchRun(digest, kind, started_at=self._monotonic())
        stop = self._replace_job(digest, run)
        self._runner.attach_watch(run)
        threading.Thread(
            target=self._watch_loop, args=(run, window, memory, stop), name="trial-watch", daemon=True
        ).start()
        log.info("canary.watch_started", digest=digest, window_s=window, has_canary_baseline=memory is not None)
        return []

    def _watch_loop(self, run: WatchRun, window: float, memory: CanaryMemory | None, stop: threading.Event) -> None:
        digest = run.digest
        end = run.started_at + window
        try:
            while True:
                trial = run.samples()
                now = self._monotonic()
                if trial.error_count or trial.nan_count or (now >= end and trial.frames > 0):
                    break
                if stop.wait(min(self._every, _POLL_S)):
                    return
        finally:
            self._runner.detach_watch(run)
        verdict = self._judge_watch(trial, memory, now - run.started_at)
        if not self._finish_job(digest, stop):
            return
        with self._lock:
            self._memory.pop(digest, None)
        self._publish(verdict, digest, memory.baseline_digest if memory else None)
        if verdict.outcome is Outcome.FAIL:
            detail = f" (last error: {run.side.last_error})" if trial.error_count and run.side.last_error else ""
            event: UpdateEvent = TrialFailed("; ".join(verdict.reasons) + detail)
        else:
            event = TrialPassed()
        log.info("canary.watch_finished", digest=digest, outcome=str(verdict.outcome), summary=verdict.summary())
        self._post(event)

    def _judge_watch(self, trial: CanarySamples, memory: CanaryMemory | None, elapsed: float) -> CanaryVerdict:
        if memory is not None:
            policy, reference = memory.policy, memory.baseline_p95_ms
        else:
            # No canary of this process stands behind the trial: judge errors only, no latency reference.
            policy, reference = CanaryPolicy(sla_ms=math.inf), math.nan
        drift: float | None = None
        confidence = trial.confidence[trial.valid]
        if memory is not None and min(confidence.size, memory.baseline_confidence.size) >= policy.psi_min_samples:
            drift = population_stability_index(confidence, memory.baseline_confidence, policy.psi_bins)
        throttling = self._throttling()
        return decide_watch(trial, reference, policy, throttling=throttling, drift_psi=drift, elapsed_s=elapsed)

    def stop(self, digest: str) -> None:
        with self._lock:
            stop = self._jobs.pop(digest, None)
            self._inconclusive.pop(digest, None)
            self._runs.pop(digest, None)
            self._memory.pop(digest, None)
            self._detach(self._attached.pop(digest, None))
        if stop is not None:
            stop.set()
