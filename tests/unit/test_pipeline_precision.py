"""Precision by measurement: the pure selection rule and the interleaved measuring shell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract.errors import PrecisionError
from edgefleet.contract.hardware import hardware_class
from edgefleet.contract.precision import LatencyFigures, select_precision
from edgefleet_pipeline.precision import LatencySamples, choose_precision, measure_latency, measure_samples
from edgefleet_testing.modelgen import make_classifier


def _fig(p50: float) -> LatencyFigures:
    return LatencyFigures(p50_ms=p50, p90_ms=p50 * 1.2, mean_ms=p50 * 1.05, runs=50)


def test_faster_int8_is_chosen_with_its_speedup() -> None:
    choice = select_precision({"fp32": _fig(8.0), "int8": _fig(5.0)}, hardware_class="x86-avx2")
    assert choice.chosen == "int8" and choice.speedup == pytest.approx(1.6)
    doc = choice.to_dict()
    assert doc["chosen"] == "int8" and doc["speedup"] == 1.6 and doc["hardware_class"] == "x86-avx2"
    assert doc["fp32"] == {"p50_ms": 8.0, "p90_ms": 9.6, "mean_ms": 8.4, "runs": 50}


def test_fp32_kept_when_int8_is_slower_or_within_noise() -> None:
    assert select_precision({"fp32": _fig(1.0), "int8": _fig(2.3)}).chosen == "fp32"
    assert select_precision({"fp32": _fig(1.0), "int8": _fig(0.98)}).chosen == "fp32"
    assert select_precision({"fp32": _fig(1.0), "int8": _fig(0.98)}, min_speedup=1.0).chosen == "int8"


def test_only_eligible_variants_are_chosen() -> None:
    figures = {"fp32": _fig(8.0), "int8": _fig(2.0), "fp16": _fig(4.0)}
    choice = select_precision(figures, eligible={"fp32", "fp16"})
    assert choice.chosen == "fp16" and set(choice.figures) == {"fp32", "fp16"}
    with pytest.raises(PrecisionError, match="reference variant 'fp32'"):
        select_precision({"int8": _fig(1.0)})


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["fp32", "fp16", "int8"]), st.floats(0.01, 100.0), min_size=1))
def test_choice_is_never_slower_than_fp32(p50s: dict[str, float]) -> None:
    p50s.setdefault("fp32", 10.0)
    choice = select_precision({k: _fig(v) for k, v in p50s.items()})
    assert choice.figures[choice.chosen].p50_ms <= p50s["fp32"]
    assert choice.speedup >= 1.0
    if choice.chosen != "fp32":
        assert choice.speedup >= 1.05


def test_figures_from_samples() -> None:
    fig = LatencyFigures.from_samples_ns([1_000_000, 2_000_000, 3_000_000])
    assert (fig.p50_ms, fig.mean_ms, fig.runs) == (2.0, 2.0, 3)
    with pytest.raises(PrecisionError):
        LatencyFigures.from_samples_ns([])


def test_measure_interleaves_and_choose_returns_figures(tmp_path: Path) -> None:
    fast = make_classifier(tmp_path / "fast.onnx", size=16)
    slow = make_classifier(tmp_path / "slow.onnx", size=16, extra_matmuls=24)
    x = {"images": np.zeros((1, 3, 16, 16), np.float32)}
    ticks = iter(range(0, 10**9, 1000))
    figures = measure_latency({"fp32": slow, "int8": fast}, x, runs=6, warmup=1, clock=lambda: next(ticks))
    assert {f.runs for f in figures.values()} == {6}
    choice = choose_precision({"fp32": slow, "int8": fast}, x, runs=30)
    assert set(choice.figures) == {"fp32", "int8"}
    assert choice.hardware_class == hardware_class() != ""
    assert choice.figures["fp32"].p50_ms > 0


def test_samples_give_any_percentile_and_the_same_figures(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "m.onnx", size=16)
    x = {"images": np.zeros((1, 3, 16, 16), np.float32)}
    ticks = iter(range(0, 10**9, 1_000_000))  # each timed run reads two ticks: 1 ms apart
    samples = measure_samples({"fp32": model}, x, runs=20, warmup=1, clock=lambda: next(ticks))["fp32"]
    assert samples.samples_ns == (1_000_000,) * 20
    assert samples.percentile_ms(95) == pytest.approx(1.0) and samples.figures.p50_ms == pytest.approx(1.0)
    varied = LatencySamples(tuple(range(1_000_000, 101_000_000, 1_000_000)))  # 1..100 ms
    assert varied.percentile_ms(95) == pytest.approx(95.05) and varied.figures.p50_ms == pytest.approx(50.5)
