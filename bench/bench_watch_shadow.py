"""Benchmark of the paired watch window's cost to the frame path: the previous engine in shadow, rate limited.

``run(quick=False) -> list[dict]`` returns rows ``{"benchmark", "measured", "baseline", "ratio", "goal",
"ok"}`` (``benchlib.row``); ``python bench/bench_watch_shadow.py [--quick]`` prints them. Models are
generated with ``edgefleet_testing.modelgen`` into a temporary directory (no downloads); engines are real
onnxruntime ``InferenceEngine`` s.

Everything runs through the runtime's own code: a ``FrameRunner`` serves a frame source through an
``EngineSlot`` whose current engine is the trial and whose ``previous`` is the engine it replaced (as after
a promotion swap), and the watch is the evaluator's ``WatchRun`` with the limit
``ShadowRateLimit.from_policy`` gives for the shipped default policy (built-in defaults through
``precedence.resolve_policy``: ``canary.watch_shadow_every_ms`` 100, ``canary.watch_shadow_max_share``
0.25). The only additions are measuring hooks: the runner's ``observer`` (called with every served frame
after both inferences of a pair, i.e. when the served result is handed on) stamps the frame's latency from
its capture (``Frame.captured_at`` on ``time.perf_counter``), and the limit is a ``ShadowRateLimit``
subclass whose ``spent`` records each shadow inference's start and end before doing what the real one
does.

Noise cancelling: one frame loop runs for the whole scenario; one ``WatchRun`` (a continuous window, its
rate limit's state kept) is attached and detached in blocks of 1.25 s ordered on, off, off, on (ABBA),
repeated (8 rounds for the camera, whose p99 needs the frames, 6 for the saturated loop; 2 each with
``--quick``), so drift and the other tenants of this shared host fall on both modes. A frame belongs to
the block it was captured in (the runner reads the attached watch right after the source yields it); the
first 0.25 s of a block are not counted for throughput and latency (the frame in flight across the
switch, a pair: two inferences, finishes there).

Scenarios, and why the goals are what the design promises (``agent.canary.shadow`` module docstring):

(a) Camera at 30 FPS (``synthetic:30``), the stock generated YOLOv8 detector (≈ 4 ms a frame on an idle
    host): the interval binds (one pair per 100 ms, every third or fourth frame), the loop has slack in
    every frame period, so the camera rate is kept: throughput ratio >= 0.95. A paired frame is handed on
    after one inference of the previous engine too (the pairing runs both on the same frame at the same
    moment, by design), so the tail can reach twice the served time, never more: p99 ratio <= 2.0; the
    measured text shows p99 against the 33.3 ms frame period (the frame's budget). A goal like p99 <= 1.5x
    is NOT promised: at this rate about a third of the frames are paired, so the p99 is a paired frame.
(b) Free-running loop (``fps=0``, saturated), a detector with 40 ``extra_matmuls`` (≈ 35 ms a frame on an
    idle host): the share binds (a shadow of d seconds spaces the next by d / 0.25 > 100 ms). The shadow
    may take up to max_share of the loop's wall time, so served throughput >= 1 − max_share (0.75) of the
    same loop with no watch, less 0.03 for block-to-block noise on this host (the limiter sits right at
    the bound on a saturated loop, so without a tolerance half the runs would miss on noise alone).

Per scenario, also:

- served inference: the served engine's own time (``FrameResult.timings.total_ms``), watch on vs off,
  goal <= 1.10. The rate limit bounds the shadow's own time; the budget holds only if the shadow does not
  also slow the served inference. Finding when this was written (onnxruntime 1.32, CPU provider, 2 cores):
  two sessions with the default intra-op thread pools (one per session, spinning) run back to back are
  each ~1.6x slower than one alone (their spinning workers contend for the cores); with
  ``session.intra_op.allow_spinning`` "0" they are not. That shows here as this row's miss and as the
  saturated throughput falling below 1 − max_share while the shadow share is within it.
- shadow share used = shadow inference seconds / wall seconds over complete admission intervals (from
  each block's first shadow start to its last: the quantity ``ShadowRateLimit`` bounds, without the
  truncated interval after a block's last shadow), goal <= the configured max share;
- paired frames gathered per minute of watch, against ``WATCH_MIN_PAIRED_FRAMES`` (informational: shows a
  window collects enough pairs for a paired verdict well within a minute; ok when >= 1x).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bench_inference import LABELS, YOLO_POST, YOLO_PRE
from benchlib import Row, row, run_alone

from edge_runtime.agent.canary.shadow import ShadowRateLimit, WatchRun
from edge_runtime.agent.runner import FrameRunner
from edge_runtime.canary.policy import CanaryPolicy
from edge_runtime.canary.verdict import WATCH_MIN_PAIRED_FRAMES
from edge_runtime.inference import EngineSlot, FrameResult, InferenceEngine
from edge_runtime.sources import Frame, open_source
from edgefleet.contract.precedence import resolve_policy
from edgefleet_testing.modelgen import make_yolo_detector

EDGE_S = 0.25  # not counted at a block's start: the frame in flight across the switch (a pair: two inferences)
BLOCK_S = 1.25
ORDER = (True, False, False, True)  # ABBA: on, off, off, on — repeated


class RecordingLimit(ShadowRateLimit):
    """The real rate limit, also keeping each shadow inference's (start, end) on the limit's clock."""

    def __init__(self, every_s: float, max_share: float) -> None:
        super().__init__(every_s, max_share)
        self.spans: list[tuple[float, float]] = []

    def spent(self, started: float, ended: float) -> None:
        self.spans.append((started, ended))
        super().spent(started, ended)


def default_policy() -> CanaryPolicy:
    """The shipped defaults (no operator config, no bundle policy); the SLA has no default, any will do."""
    return CanaryPolicy.from_config(resolve_policy({}).values, bundle_sla_ms=1000.0)


@dataclass
class Block:
    watch: bool
    start: float
    end: float = 0.0
    spans: list[tuple[float, float]] = field(default_factory=list)  # shadow inferences in this block
    pairs: int = 0


@dataclass
class Scenario:
    """What one scenario's alternating blocks measured, pooled per mode (True: watch on)."""

    frames: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    seconds: dict[bool, float] = field(default_factory=lambda: {True: 0.0, False: 0.0})
    latency_ms: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})
    served_ms: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})
    shadow_s: float = 0.0  # over complete admission intervals
    interval_s: float = 0.0
    shadow_total_s: float = 0.0  # every shadow inference, over the whole watch time
    watch_s: float = 0.0
    pairs: int = 0
    shadow_ms: list[float] = field(default_factory=list)

    def throughput(self, watch: bool) -> float:
        return self.frames[watch] / self.seconds[watch]

    def p99(self, watch: bool) -> float:
        return float(np.percentile(self.latency_ms[watch], 99))

    def served_median(self, watch: bool) -> float:
        return float(np.median(self.served_ms[watch]))


def measure(
    trial: InferenceEngine, previous: InferenceEngine, fps: float, rounds: int, policy: CanaryPolicy
) -> Scenario:
    """One frame loop serving ``trial`` (``previous`` kept as the slot's previous engine), one ``WatchRun``
    attached and detached in ABBA blocks of ``BLOCK_S``; ``rounds`` x 4 blocks."""
    slot = EngineSlot(previous)
    slot.install(trial)  # the promotion swap's outcome: the trial serves, the engine it replaced is previous
    assert slot.previous is previous
    served: list[tuple[float, float, float]] = []  # (captured_at, handed on) perf_counter s, served total_ms

    def observe(frame: Frame, _digest: str, outcome: FrameResult | Exception) -> None:
        total = outcome.timings.total_ms if isinstance(outcome, FrameResult) else float("nan")
        served.append((frame.captured_at, time.perf_counter(), total))

    real = ShadowRateLimit.from_policy(policy)
    limit = RecordingLimit(real.every_s, real.max_share)
    watch = WatchRun(trial, slot.previous, started_at=time.monotonic(), limit=limit)
    source = open_source("synthetic", fps=fps, seed=3, wall_clock=time.perf_counter)
    runner = FrameRunner(slot, source)
    runner.observer = observe
    runner.start()
    blocks: list[Block] = []
    try:
        time.sleep(1.0)  # the loop's own start-up is no one's steady state
        for on in ORDER * rounds:
            block = Block(on, time.perf_counter())
            spans_before, pairs_before = len(limit.spans), watch.pairs
            if on:
                runner.attach_watch(watch)
            time.sleep(BLOCK_S)
            if on:
                runner.detach_watch(watch)
            block.end = time.perf_counter()
            block.spans = limit.spans[spans_before:]
            block.pairs = watch.pairs - pairs_before
            blocks.append(block)
    finally:
        runner.stop(timeout=30)
    if runner.errors:
        raise RuntimeError(f"the frame loop had {runner.errors} inference errors (last: {runner.last_error})")

    out = Scenario()
    for block in blocks:
        lo, hi = block.start + EDGE_S, block.end
        mine = [(c, d, t) for c, d, t in served if lo <= c < hi]
        out.frames[block.watch] += len(mine)
        out.seconds[block.watch] += hi - lo
        out.latency_ms[block.watch].extend((d - c) * 1000.0 for c, d, _ in mine)
        out.served_ms[block.watch].extend(t for _, _, t in mine)
        if block.watch:
            spans = block.spans
            out.pairs += block.pairs
            out.watch_s += block.end - block.start
            out.shadow_total_s += sum(e - s for s, e in spans)
            out.shadow_ms.extend((e - s) * 1000.0 for s, e in spans)
            if len(spans) >= 2:
                out.shadow_s += sum(e - s for s, e in spans[:-1])
                out.interval_s += spans[-1][0] - spans[0][0]
    return out


def scenario_rows(name: str, s: Scenario, policy: CanaryPolicy, *, fps: float, min_throughput: float) -> list[Row]:
    share = policy.watch_shadow_max_share
    tp_on, tp_off = s.throughput(True), s.throughput(False)
    p99_on, p99_off = s.p99(True), s.p99(False)
    used = s.shadow_s / s.interval_s if s.interval_s > 0 else float("nan")
    raw = s.shadow_total_s / s.watch_s
    per_min = s.pairs / s.watch_s * 60.0
    budget = f"; frame period {1000.0 / fps:.1f} ms" if fps > 0 else ""
    shadow_med = float(np.median(s.shadow_ms)) if s.shadow_ms else float("nan")
    srv_on, srv_off = s.served_median(True), s.served_median(False)
    tp_goal = (
        ">= 0.95 (the camera rate is kept: a shadow fits in a frame period's slack)"
        if fps > 0
        else f">= {min_throughput:.2f} (1 − max_share {share:g}, less 0.03 for block-to-block noise)"
    )
    return [
        row(
            f"watch_shadow.{name}.throughput",
            f"{tp_on:.2f} frames/s served with the paired watch on ({s.frames[True]} frames, {s.pairs} paired; "
            f"1 − shadow share used = {1.0 - raw:.3f})",
            f"{tp_off:.2f} frames/s, same loop, no watch ({s.frames[False]} frames)",
            tp_on / tp_off,
            tp_goal,
            tp_on / tp_off >= min_throughput,
        ),
        row(
            f"watch_shadow.{name}.p99_served_latency",
            f"p99 {p99_on:.2f} ms capture → handed on, watch on{budget}",
            f"p99 {p99_off:.2f} ms, no watch",
            p99_on / p99_off,
            "<= 2.0 (a paired frame also waits for one previous-engine inference of the same cost, never more)",
            p99_on / p99_off <= 2.0,
        ),
        row(
            f"watch_shadow.{name}.served_inference",
            f"served engine's own time (pre+model+post) median {srv_on:.2f} ms, watch on",
            f"median {srv_off:.2f} ms, no watch",
            srv_on / srv_off,
            "<= 1.10 (the shadow adds its own time only; it must not slow the served inference)",
            srv_on / srv_off <= 1.10,
        ),
        row(
            f"watch_shadow.{name}.shadow_share",
            f"shadow {used:.4f} of wall time over admission intervals ({len(s.shadow_ms)} shadows, median "
            f"{shadow_med:.2f} ms; {raw:.4f} over the whole watch)",
            f"configured canary.watch_shadow_max_share {share:g} (every_ms {policy.watch_shadow_every_ms:g})",
            used / share,
            "<= 1.0 (never more than the configured share)",
            used <= share,
        ),
        row(
            f"watch_shadow.{name}.paired_frames_per_minute",
            f"{per_min:.0f} paired frames per minute of watch ({s.pairs} in {s.watch_s:.1f} s)",
            f"WATCH_MIN_PAIRED_FRAMES {WATCH_MIN_PAIRED_FRAMES} for a paired verdict",
            per_min / WATCH_MIN_PAIRED_FRAMES,
            "informational: >= 1 (a window gathers enough pairs within a minute)",
            per_min >= WATCH_MIN_PAIRED_FRAMES,
        ),
    ]


def _engine(work: Path, name: str, seed: int, extra_matmuls: int) -> InferenceEngine:
    model = make_yolo_detector(work / f"{name}.onnx", layout="v8", size=640, seed=seed, extra_matmuls=extra_matmuls)
    return InferenceEngine.load(model, YOLO_PRE, YOLO_POST, LABELS, cache_dir=work, bundle_digest=name, warmup=5)


def run(quick: bool = False) -> list[dict[str, Any]]:
    policy = default_policy()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-watch-shadow-") as tmp:
        work = Path(tmp)
        trial, previous = _engine(work, "cam_trial", 1, 0), _engine(work, "cam_previous", 0, 0)
        camera = measure(trial, previous, 30.0, 2 if quick else 8, policy)
        rows.extend(scenario_rows("camera_30fps", camera, policy, fps=30.0, min_throughput=0.95))
        trial, previous = _engine(work, "sat_trial", 1, 40), _engine(work, "sat_previous", 0, 40)
        saturated = measure(trial, previous, 0.0, 2 if quick else 6, policy)
        floor = 1.0 - policy.watch_shadow_max_share - 0.03
        rows.extend(scenario_rows("saturated_loop", saturated, policy, fps=0.0, min_throughput=floor))
    return rows


if __name__ == "__main__":
    sys.exit(run_alone(run))
