"""Which precision a device runs: the rule the bundle builder and the device share.

Pure core: ``select_precision(figures, eligible=...)`` picks the fastest variant from latency figures already
measured; a lower precision must beat the reference (fp32) by ``MIN_SPEEDUP`` (1.05×), a 1% difference being
noise and FP32 the safer artifact. The builder measures on its own machine
(``edgefleet_pipeline.precision.measure_latency``), a device on itself (``edge_runtime.precision``): both call
this one function.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgefleet.contract.errors import PrecisionError

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
            raise PrecisionError("latency figures need at least one timed run")
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
        raise PrecisionError(
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
