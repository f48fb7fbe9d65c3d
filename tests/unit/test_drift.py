"""Drift: PSI, the baseline capture rule, the contiguous-mark advance."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet_controller.telemetry.drift import add_counts, baseline_step, evaluate_drift, psi
from edgefleet_controller.telemetry.ingest import advance

T = datetime(2025, 1, 1, tzinfo=UTC)
A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    assert psi([10, 20, 70], [1, 2, 7]) == 0.0
    assert psi([0, 0, 100], [100, 0, 0]) > 5
    assert 0.0 < psi([30, 40, 30], [35, 40, 25]) < 0.1


def test_psi_is_nan_when_there_is_nothing_to_compare() -> None:
    assert math.isnan(psi([], [1]))
    assert math.isnan(psi([0, 0], [1, 2]))
    assert math.isnan(psi([1, 2], [1, 2, 3]))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=2, max_size=20).flatmap(
        lambda e: st.tuples(st.just(e), st.lists(st.integers(0, 1000), min_size=len(e), max_size=len(e)))
    )
)
def test_psi_is_never_negative(pair: tuple[list[int], list[int]]) -> None:
    value = psi(*pair)
    assert math.isnan(value) or value >= -1e-12


def test_drift_finding_needs_enough_frames_and_a_value_above_the_bound() -> None:
    assert not evaluate_drift("device", "d", [50, 50], [5, 5], min_frames=50).above
    assert evaluate_drift("device", "d", [90, 10], [10, 90], min_frames=50).above
    assert not evaluate_drift("device", "d", [90, 10], [88, 12], min_frames=50).above


def test_baseline_starts_at_a_new_committed_bundle_and_fills_n_windows() -> None:
    b = baseline_step(None, window_bundle=A, committed_bundle=A, counts=[1, 2], window_start=T, windows_needed=2)
    assert b is not None and b.windows == 1 and not b.complete
    b = baseline_step(b, window_bundle=A, committed_bundle=A, counts=[3, 4], window_start=T, windows_needed=2)
    assert b is not None and b.counts == (4, 6) and b.complete
    same = baseline_step(b, window_bundle=A, committed_bundle=A, counts=[9, 9], window_start=T, windows_needed=2)
    assert same == b  # complete baselines stay fixed
    # a candidate that is not the committed bundle never touches the baseline
    assert baseline_step(b, window_bundle=B, committed_bundle=A, counts=[1, 1], window_start=T) == b
    # B committed: a new baseline starts
    nb = baseline_step(b, window_bundle=B, committed_bundle=B, counts=[1, 1], window_start=T)
    assert nb is not None and nb.bundle_digest == B and nb.windows == 1


def test_add_counts_sums_bins() -> None:
    assert add_counts([[1, 2], [3, 4], []]) == [4, 6]


def test_mark_passes_contiguous_and_declared_ranges_only() -> None:
    assert advance(0, [(1, 1), (2, 2), (4, 6)]).mark == 2
    moved = advance(2, [(4, 6), (3, 3), (9, 9)])
    assert moved.mark == 6 and moved.pending == ((9, 9),)
    assert advance(5, [(1, 3)]).mark == 5
