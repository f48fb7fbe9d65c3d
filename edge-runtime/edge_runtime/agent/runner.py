"""The frame loop: frames from the source through whatever engine the slot holds, on its own thread.

Rules: ``slot.current`` is read once per frame (the hot swap is a reference change between two frames);
the loop never waits on the network, the update driver or a lock a writer holds; an inference error is
counted (per bundle, for the trial watch) and the loop goes on. Frames that arrive while no bundle is
loaded are counted as ``frames_idle``. ``frame_log`` (tests, debugging) receives one line per inferred
frame, ``"<frame_id> <bundle digest>"``, which proves no frame was dropped across a swap.
``switch_source`` replaces the frame source between two frames (the config's ``source`` changed); frame
ids go on counting up from the last one.

Canary and watch hooks (``edge_runtime.agent.canary.shadow``): while a ``ShadowRun`` is attached and the slot
serves its baseline engine, each frame also runs the candidate — before or after the served inference,
alternating — and both outcomes are recorded; the served result (counters, frame log) is always the
current engine's. With nothing to serve and a first-ever candidate attached, the candidate runs alone.
While a ``WatchRun`` is attached and the slot serves its trial engine, every served frame is recorded,
and the frames its rate limit admits also run the previous (reference) engine, before or after the served
inference, alternating. Runs are matched to the slot by engine identity, not bundle digest (a config
candidate shares its bundle with the engine it replaces). ``attach_*`` / ``detach_*`` are single reference
assignments, read once per frame like ``slot.current``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import structlog

from edge_runtime.agent.canary.shadow import ShadowRun, WatchRun
from edge_runtime.inference import FrameResult, InferenceEngine, SwapError
from edge_runtime.inference.hotswap import EngineSlot
from edge_runtime.sources import Frame

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RunnerSnapshot:
    frames_inferred: int
    frames_idle: int
    errors: int
    consecutive_errors: int
    last_frame_id: int
    serving: str | None
    provider: str | None
    fell_back: bool
    last_total_ms: float


class FrameRunner:
    """Runs ``source`` through ``slot`` until ``stop()``; counters are read from other threads."""

    def __init__(self, slot: EngineSlot, source: Iterator[Frame], *, frame_log: Path | None = None) -> None:
        self.slot = slot
        self._source = source
        self._next_source: Iterator[Frame] | None = None
        self._frame_log_path = frame_log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-loop", daemon=True)
        self._lock = threading.Lock()  # guards the counters; held only for a few increments
        self._per_bundle: dict[str, list[int]] = {}
        self.frames_inferred = 0
        self.frames_idle = 0
        self.errors = 0
        self.consecutive_errors = 0
        self.last_frame_id = -1
        self.last_total_ms = 0.0
        self.last_error: str | None = None
        self._serving: InferenceEngine | None = None
        self._shadow: ShadowRun | None = None
        self._watch: WatchRun | None = None
        # Telemetry: called with every served frame's outcome (edge_runtime.agent.telemetry.pipeline).
        self.observer: Callable[[Frame, str, FrameResult | Exception], None] | None = None

    @property
    def shadowing(self) -> str | None:
        """The digest of the candidate running in shadow now, if any."""
        run = self._shadow
        return run.candidate_digest if run is not None else None

    def attach_shadow(self, run: ShadowRun) -> None:
        """Run ``run``'s candidate in shadow from the next frame on (replaces any attached run)."""
        self._shadow = run

    def detach_shadow(self, run: ShadowRun) -> None:
        """Stop shadowing ``run`` (no-op when another run was attached since)."""
        if self._shadow is run:
            self._shadow = None

    def attach_watch(self, run: WatchRun) -> None:
        self._watch = run

    def detach_watch(self, run: WatchRun) -> None:
        if self._watch is run:
            self._watch = None

    def start(self) -> None:
        self._thread.start()

    def switch_source(self, source: Iterator[Frame]) -> None:
        """Read frames from ``source`` after the current frame (the config's ``source`` changed); frame ids
        go on from the last one, so the frame log and the canary see one increasing sequence."""
        if self._thread.ident is None:  # not started yet: nothing reads the source
            self._source = source
            return
        self._next_source = source

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def stats_for(self, digest: str) -> tuple[int, int]:
        """(frames, errors) inferred with bundle ``digest`` so far."""
        with self._lock:
            frames, errors = self._per_bundle.get(digest, [0, 0])
        return frames, errors

    def snapshot(self) -> RunnerSnapshot:
        engine = self._serving
        with self._lock:
            return RunnerSnapshot(
                frames_inferred=self.frames_inferred,
                frames_idle=self.frames_idle,
                errors=self.errors,
                consecutive_errors=self.consecutive_errors,
                last_frame_id=self.last_frame_id,
                serving=engine.bundle_digest if engine else None,
                provider=engine.provider if engine else None,
                fell_back=engine.session_info.fell_back if engine else False,
                last_total_ms=self.last_total_ms,
            )

    def _run(self) -> None:
        out: TextIO | None = None
        if self._frame_log_path is not None:
            out = self._frame_log_path.open("a", buffering=1, encoding="utf-8")
        try:
            source, offset = self._source, 0
            while True:
                for frame in source:
                    if self._stop.is_set():
                        return
                    self._one(
                        frame if not offset else dataclasses.replace(frame, frame_id=frame.frame_id + offset), out
                    )
                    pending = self._next_source
                    if pending is not None:
                        break
                else:
                    return
                # The config's frame source changed: frame ids keep counting up across the switch.
                if self._next_source is pending:
                    self._next_source = None
                close = getattr(source, "close", None)
                if callable(close):
                    close()
                source, offset = pending, self.last_frame_id + 1
                self._source = source
                log.info("runner.source_switched", first_frame_id=offset)
        except Exception as exc:  # a dead source must be visible, not a silent thread exit
            log.error("runner.source_failed", error=str(exc), error_type=type(exc).__name__)
        finally:
            if out is not None:
                out.close()

    def _one(self, frame: Frame, out: TextIO | None) -> None:
        shadow = self._shadow
        watch = self._watch
        try:
            engine = self.slot.current
        except SwapError:
            self._serving = None
            with self._lock:
                self.frames_idle += 1
                self.last_frame_id = frame.frame_id
            if shadow is not None and shadow.baseline is None:
                shadow.record_alone(frame)
            return
        self._serving = engine
        digest = engine.bundle_digest
        if shadow is not None and shadow.baseline is not engine:
            shadow = None  # the slot no longer serves this run's baseline: its rows would compare apples to pears
        if watch is not None and watch.trial is not engine:
            watch = None  # the trial engine no longer serves (swapped back): nothing of this frame is its
        pair = watch is not None and watch.pair_now()
        candidate: FrameResult | Exception | None = None
        reference: FrameResult | Exception | None = None
        if shadow is not None and shadow.candidate_goes_first():
            candidate = shadow.run_candidate(frame)
        if watch is not None and pair and watch.reference_goes_first():
            reference = watch.run_reference(frame)
        served: FrameResult | Exception
        try:
            served = engine.infer(frame.image_bgr, frame.frame_id)
        except Exception as exc:
            served = exc
        # The second inference of a pair runs right after the served one, before any bookkeeping: whichever
        # goes second must start as soon after the frame's wake-up as the other does when it goes second, or
        # a loaded host would preempt one side more than the other and the pairing would be biased.
        if shadow is not None and candidate is None:
            candidate = shadow.run_candidate(frame)
        if watch is not None and pair and reference is None:
            reference = watch.run_reference(frame)
        self._count(frame, digest, served, out)
        observer = self.observer
        if observer is not None:
            observer(frame, digest, served)
        if shadow is not None:
            assert candidate is not None
            shadow.record(served, candidate)
        if watch is not None:
            watch.record(served, reference)

    def _count(self, frame: Frame, digest: str, served: FrameResult | Exception, out: TextIO | None) -> None:
        if isinstance(served, Exception):
            with self._lock:
                self.errors += 1
                self.consecutive_errors += 1
                self._per_bundle.setdefault(digest, [0, 0])[1] += 1
                self.last_error = f"{type(served).__name__}: {served}"
                self.last_frame_id = frame.frame_id
            if self.consecutive_errors in (1, 10, 100) or self.consecutive_errors % 1000 == 0:
                log.warning("runner.inference_failed", bundle_digest=digest, frame_id=frame.frame_id, error=str(served))
            return
        with self._lock:
            self.frames_inferred += 1
            self.consecutive_errors = 0
            self._per_bundle.setdefault(digest, [0, 0])[0] += 1
            self.last_frame_id = frame.frame_id
            self.last_total_ms = served.timings.total_ms
        if out is not None:
            out.write(f"{frame.frame_id} {digest}\n")
