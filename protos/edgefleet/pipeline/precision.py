"""Precision chosen by measurement: benchmark the variants that passed the accuracy gate, keep the fastest.

Pure core: ``select_precision(figures, eligible=...)`` picks from latency figures already measured.
Thin shell: ``measure_latency`` times the variants on this machine, ``choose_precision`` composes both.

Decisions:
- Runs are interleaved (round-robin, rotating which variant goes first each round) so drift in clocks,
  thermal state and background load hits every variant alike; the median (p50) decides.
- A lower precision must be at least ``min_speedup`` (default 1.05×) faster than the reference to be
  chosen: a 1% difference is noise, and FP32 is the safer artifact (no quantization error, every provider).
  On a CPU without fast INT8 kernels, QDQ INT8 can be *slower* than FP32 — that is why this is measured.
- Figures are labelled with the hardware class of the machine that measured them (``hardware_class()``):
  the builder's latencies say nothing certain about a Jetson, devices profile themselves.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from edgefleet.contract.hardware import hardware_class
from edgefleet.pipeline.errors import PipelineError

REFERENCE = "fp32"
MIN_SPEEDUP = 1.05


@dataclass(frozen=True)
class LatencyFigures:
    """Model-only latency of one variant over ``runs`` timed runs, in milliseconds."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    runs: int

    def to_dict(self) -> dict[str, object]:
        return {
            "p50_ms": round(self.p50_ms, 4),
            "p90_ms": round(self.p90_ms, 4),
            "mean_ms": round(self.mean_ms, 4),
            "runs": self.runs,
        }

    @staticmethod
    def from_samples_ns(samples: Sequence[int]) -> LatencyFigures:
        if not samples:
            raise PipelineError("latency figures need at least one timed run")
        ms = np.asarray(samples, np.float64) / 1e6
        return LatencyFigures(
            p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)),
            mean_ms=float(statistics.fmean(ms)),
            runs=len(samples),
        )


@dataclass(frozen=True)
class PrecisionChoice:
    """The chosen variant, every eligible variant's figures, and the speedup over the reference."""

    chosen: str
    figures: Mapping[str, LatencyFigures]
    speedup: float
    reference: str = REFERENCE
    hardware_class: str = field(default="unknown")

    def to_dict(self) -> dict[str, object]:
        """``{"fp32": {"p50_ms": ..}, "int8": {..}, "chosen": "int8", "speedup": 1.6, ...}``."""
        out: dict[str, object] = {name: fig.to_dict() for name, fig in sorted(self.figures.items())}
        out["chosen"] = self.chosen
        out["speedup"] = round(self.speedup, 4)
        out["reference"] = self.reference
        out["hardware_class"] = self.hardware_class
        return out


def select_precision(
    figures: Mapping[str, LatencyFigures],
    *,
    eligible: Collection[str] | None = None,
    reference: str = REFERENCE,
    min_speedup: float = MIN_SPEEDUP,
    hardware_class: str = "unknown",
) -> PrecisionChoice:
    """Pick the variant with the lowest p50 among ``eligible`` (default: all measured).

    The reference (FP32) is kept unless another eligible variant is at least ``min_speedup`` times faster.
    """
    names = [n for n in figures if eligible is None or n in eligible]
    if reference not in figures:
        raise PipelineError(
            f"precision choice needs the reference variant '{reference}' measured, got {sorted(figures)}"
        )
    base = figures[reference].p50_ms
    best = reference
    for name in sorted(names):
        if name == reference:
            continue
        fig = figures[name]
        if fig.p50_ms > 0 and base / fig.p50_ms >= min_speedup and fig.p50_ms < figures[best].p50_ms:
            best = name
    speedup = base / figures[best].p50_ms if figures[best].p50_ms > 0 else 1.0
    kept = {n: figures[n] for n in figures if n in names or n == reference}
    return PrecisionChoice(
        chosen=best, figures=kept, speedup=speedup, reference=reference, hardware_class=hardware_class
    )


def measure_latency(
    variants: Mapping[str, Path | str],
    inputs: Mapping[str, NDArray[Any]],
    *,
    runs: int = 50,
    warmup: int = 5,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 0,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, LatencyFigures]:
    """Time each variant ``runs`` times on ``inputs``, interleaved round-robin; figures per variant."""
    if runs < 1:
        raise PipelineError(f"runs must be >= 1, got {runs}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    sessions: dict[str, ort.InferenceSession] = {}
    for name, path in variants.items():
        try:
            sessions[name] = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:  # onnxruntime's errors are untyped
            raise PipelineError(f"variant '{name}': {path} cannot be loaded: {exc}") from None
    feed = dict(inputs)
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, feed)
    order = list(sessions)
    samples: dict[str, list[int]] = {name: [] for name in order}
    for i in range(runs):
        shift = i % len(order)
        for name in order[shift:] + order[:shift]:
            start = clock()
            sessions[name].run(None, feed)
            samples[name].append(clock() - start)
    return {name: LatencyFigures.from_samples_ns(s) for name, s in samples.items()}


def choose_precision(
    variants: Mapping[str, Path | str],
    inputs: Mapping[str, NDArray[Any]],
    *,
    runs: int = 50,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    eligible: Collection[str] | None = None,
    min_speedup: float = MIN_SPEEDUP,
) -> PrecisionChoice:
    """Measure the eligible variants (plus FP32) on this machine and pick the fastest, as ``select_precision``."""
    measured = {n: p for n, p in variants.items() if eligible is None or n in eligible or n == REFERENCE}
    figures = measure_latency(measured, inputs, runs=runs, providers=providers)
    return select_precision(figures, eligible=eligible, min_speedup=min_speedup, hardware_class=hardware_class())
