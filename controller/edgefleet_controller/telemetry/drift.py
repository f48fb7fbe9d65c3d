"""Confidence drift: PSI between a baseline confidence histogram and recent windows, and the baseline rule.

Pure: no I/O, no clock. Decisions:

- **PSI** (population stability index) over the equal-width confidence bins every window carries:
  ``sum((a - e) * ln(a / e))`` over bins, where ``e`` and ``a`` are the bin fractions of the baseline and
  of the current histogram, each floored at ``PSI_EPSILON`` so an empty bin does not make it infinite.
  PSI < 0.1 is usually read as stable, 0.1–0.25 as a moderate shift, > 0.25 (``DEFAULT_PSI_BOUND``) as drift.
  Histograms with no counts (or of different widths) give NaN: there is nothing to compare.
- **Baseline capture rule**: when a device's windows of a bundle arrive and that bundle is not the one its
  baseline was captured for, a new baseline starts — provided the bundle is the device's committed
  (running) bundle, or the committed bundle is unknown. The first ``windows_needed`` windows of that bundle
  (``DEFAULT_BASELINE_WINDOWS``) are summed into the baseline; after that it is complete and fixed until
  the next commit of another bundle. Windows of a bundle other than the committed one (a rolled-back
  candidate) never touch the baseline. Drift is only evaluated against a complete baseline.
- **Alerts** fire on the transition into drift (``DriftFinding.above``); the caller remembers the state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

PSI_EPSILON = 1e-4
DEFAULT_PSI_BOUND = 0.25
DEFAULT_BASELINE_WINDOWS = 6
#: Frames a histogram needs before its PSI means anything.
DEFAULT_MIN_FRAMES = 50


def add_counts(histograms: Iterable[Sequence[int]]) -> list[int]:
    """Bin-wise sum of equal-width histograms; a histogram of another width is a caller error."""
    total: list[int] = []
    for counts in histograms:
        if not counts:
            continue
        if not total:
            total = [0] * len(counts)
        if len(counts) != len(total):
            raise ValueError(f"confidence histograms differ in bins: {len(counts)} vs {len(total)}; they cannot merge")
        for i, c in enumerate(counts):
            total[i] += int(c)
    return total


def psi(expected: Sequence[int], actual: Sequence[int]) -> float:
    """Population stability index of ``actual`` against ``expected`` (bin counts); NaN when incomparable."""
    if not expected or len(expected) != len(actual):
        return math.nan
    e_total = float(sum(expected))
    a_total = float(sum(actual))
    if e_total <= 0 or a_total <= 0:
        return math.nan
    value = 0.0
    for e_count, a_count in zip(expected, actual, strict=True):
        e = max(e_count / e_total, PSI_EPSILON)
        a = max(a_count / a_total, PSI_EPSILON)
        value += (a - e) * math.log(a / e)
    return value


@dataclass(frozen=True, slots=True)
class Baseline:
    """A device's baseline confidence histogram for one bundle, complete once ``windows >= windows_needed``."""

    bundle_digest: str
    windows: int
    windows_needed: int
    counts: tuple[int, ...]
    started_at: datetime

    @property
    def complete(self) -> bool:
        return self.windows >= self.windows_needed


def baseline_step(
    baseline: Baseline | None,
    *,
    window_bundle: str,
    committed_bundle: str | None,
    counts: Sequence[int],
    window_start: datetime,
    windows_needed: int = DEFAULT_BASELINE_WINDOWS,
) -> Baseline | None:
    """The baseline after one more window arrived (see the module docstring); ``baseline`` if unchanged."""
    if committed_bundle and window_bundle != committed_bundle:
        return baseline
    if not counts or sum(counts) == 0:
        return baseline
    if baseline is None or baseline.bundle_digest != window_bundle:
        return Baseline(window_bundle, 1, windows_needed, tuple(int(c) for c in counts), window_start)
    if baseline.complete:
        return baseline
    if len(counts) != len(baseline.counts):
        return baseline
    summed = tuple(a + int(b) for a, b in zip(baseline.counts, counts, strict=True))
    return Baseline(baseline.bundle_digest, baseline.windows + 1, baseline.windows_needed, summed, baseline.started_at)


@dataclass(frozen=True, slots=True)
class DriftFinding:
    """PSI of one scope (``"device"`` or ``"site"``) and key against its baseline."""

    scope: str
    key: str
    psi: float
    bound: float
    frames: int

    @property
    def above(self) -> bool:
        return not math.isnan(self.psi) and self.psi > self.bound


def evaluate_drift(
    scope: str,
    key: str,
    baseline: Sequence[int],
    current: Sequence[int],
    *,
    bound: float = DEFAULT_PSI_BOUND,
    min_frames: int = DEFAULT_MIN_FRAMES,
) -> DriftFinding:
    """PSI of ``current`` against ``baseline``; NaN (never above the bound) with fewer than ``min_frames``."""
    frames = int(sum(current))
    value = psi(baseline, current) if frames >= min_frames else math.nan
    return DriftFinding(scope, key, value, bound, frames)
