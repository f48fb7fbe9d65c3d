"""The agent's ``CandidateEvaluator`` for now: a golden preflight as the canary's first stage, then a watch.

Canary (first stage, synchronous): the staged engine runs every golden input of the bundle
(``golden.npz``, written by the publisher's CPU) and each output must match the reference within the
bundle's ``canary.golden_tolerance`` (``np.allclose(atol, rtol)``). That catches a model this device's
providers compute wrongly (a broken TensorRT build, a bad INT8 table) before it sees a live frame. The
shadow canary on live frames (latency, drift, agreement) is a later stage and plugs in here.

Trial watch: after the swap the candidate serves live frames for ``canary.watch_window_s`` (config); it
passes when it served at least one frame with zero inference errors, and fails at the first error. The
verdict is posted back to the driver through ``post`` (thread-safe), as an asynchronous port should.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from edge_runtime.agent.runner import FrameRunner
from edge_runtime.agent.switcher import SlotSwitcher
from edge_runtime.update.state import (
    CanaryFailed,
    CanaryPassed,
    CanaryStarted,
    TrialFailed,
    TrialPassed,
    UpdateEvent,
)
from edgefleet.contract.bundle import GOLDEN_ROLE, MANIFEST_NAME, BundleManifest
from edgefleet.contract.bundle_builder import load_golden
from edgefleet.contract.errors import ContractError

log = structlog.get_logger(__name__)

DEFAULT_WATCH_WINDOW_S = 600.0
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


class PreflightEvaluator:
    """Golden preflight (canary) + error watch (trial)."""

    def __init__(
        self,
        switcher: SlotSwitcher,
        runner: FrameRunner,
        post: Callable[[UpdateEvent], None],
        *,
        config: Callable[[], Mapping[str, Any]] = dict,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._switcher = switcher
        self._runner = runner
        self._post = post
        self._config = config
        self._monotonic = monotonic
        self._watches: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def watch_window_s(self) -> float:
        canary = self._config().get("canary") or {}
        value = canary.get("watch_window_s") if isinstance(canary, Mapping) else None
        return float(value) if isinstance(value, int | float) else DEFAULT_WATCH_WINDOW_S

    def start_canary(self, digest: str, bundle_dir: Path) -> Sequence[UpdateEvent]:
        engine = self._switcher.staged_engine(digest)
        if engine is None:
            return [CanaryFailed(f"candidate {digest} is not loaded; staging must have failed")]
        try:
            names = [o.name for o in engine.session.get_outputs()]
            passed, text = golden_check(engine.run_tensor, engine.input_name, names, bundle_dir)
        except (ContractError, OSError, ValueError, RuntimeError) as exc:
            passed, text = False, f"golden preflight could not run: {exc}"
        log.info("canary.preflight", digest=digest, passed=passed, summary=text)
        return [CanaryStarted(), CanaryPassed(text) if passed else CanaryFailed(text)]

    def start_watch(self, digest: str) -> Sequence[UpdateEvent]:
        stop = threading.Event()
        with self._lock:
            old = self._watches.pop(digest, None)
            if old is not None:
                old.set()
            self._watches[digest] = stop
        window = self.watch_window_s()
        base = self._runner.stats_for(digest)
        threading.Thread(target=self._watch, args=(digest, window, base, stop), name="trial-watch", daemon=True).start()
        log.info("canary.watch_started", digest=digest, window_s=window)
        return []

    def _watch(self, digest: str, window: float, base: tuple[int, int], stop: threading.Event) -> None:
        end = self._monotonic() + window
        frames0, errors0 = base
        while True:
            frames, errors = self._runner.stats_for(digest)
            if errors > errors0:
                verdict: UpdateEvent = TrialFailed(
                    f"{errors - errors0} inference error(s) in the watch window after {frames - frames0} "
                    f"frames: {self._runner.last_error or 'unknown error'}"
                )
                break
            if self._monotonic() >= end and frames > frames0:
                verdict = TrialPassed()
                break
            if stop.wait(_POLL_S):
                return
        with self._lock:
            if self._watches.get(digest) is not stop:
                return
            del self._watches[digest]
        log.info("canary.watch_finished", digest=digest, verdict=type(verdict).__name__)
        self._post(verdict)

    def stop(self, digest: str) -> None:
        with self._lock:
            stop = self._watches.pop(digest, None)
        if stop is not None:
            stop.set()
