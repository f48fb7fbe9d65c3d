"""Precision chosen by measurement: benchmark the variants that passed the accuracy gate, keep the fastest.

The rule (``select_precision``, ``MIN_SPEEDUP``, ``LatencyFigures``) is the contract's
(``edgefleet.contract.precision``): a device picks between a bundle's variants by the rule the builder used.
Here, the thin shell: ``measure_samples`` times the variants on this machine (``measure_latency`` summarises
them), ``choose_precision`` composes both.

Decisions:
- Runs are interleaved (round-robin, rotating which variant goes first each round) so drift in clocks,
  thermal state and background load hits every variant alike; the median (p50) decides.
- A lower precision must be at least ``min_speedup`` (default 1.05×) faster than the reference to be
  chosen: a 1% difference is noise, and FP32 is the safer artifact (no quantization error, every provider).
  On a CPU without fast INT8 kernels, QDQ INT8 can be *slower* than FP32 — that is why this is measured.
- The raw samples are kept (``LatencySamples``) so a caller can read any percentile, e.g. the SLA's p95:
  ``LatencyFigures`` carries p50/p90/mean only.
- Figures are labelled with the hardware class of the machine that measured them (``hardware_class()``):
  the builder's latencies say nothing certain about a Jetson, devices profile themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from edgefleet.contract.hardware import hardware_class
from edgefleet.contract.precision import MIN_SPEEDUP, REFERENCE, LatencyFigures, PrecisionChoice, select_precision
from edgefleet_pipeline.errors import PipelineError


@dataclass(frozen=True)
class LatencySamples:
    """One variant's timed runs (nanoseconds, in run order) on this machine."""

    samples_ns: tuple[int, ...]

    @property
    def figures(self) -> LatencyFigures:
        return LatencyFigures.from_samples_ns(self.samples_ns)

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in milliseconds."""
        return float(np.percentile(np.asarray(self.samples_ns, np.float64) / 1e6, q))


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
    samples = measure_samples(
        variants,
        inputs,
        runs=runs,
        warmup=warmup,
        providers=providers,
        intra_op_threads=intra_op_threads,
        clock=clock,
    )
    return {name: s.figures for name, s in samples.items()}


def measure_samples(
    variants: Mapping[str, Path | str],
    inputs: Mapping[str, NDArray[Any]],
    *,
    runs: int = 50,
    warmup: int = 5,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 0,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, LatencySamples]:
    """Time each variant ``runs`` times on ``inputs``, interleaved round-robin; the samples per variant."""
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
    return {name: LatencySamples(tuple(s)) for name, s in samples.items()}


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
