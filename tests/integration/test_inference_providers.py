"""Execution-provider selection (pure, for GPU devices too) and the real session factory on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge_runtime.inference.errors import ProviderError
from edge_runtime.inference.providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderChoice,
    create_session,
    select_providers,
)
from edgefleet_testing.modelgen import make_classifier

pytestmark = pytest.mark.integration

JETSON = [TENSORRT, CUDA, CPU]


def options_of(choice: ProviderChoice) -> dict[str, str]:
    assert not isinstance(choice, str), f"expected (provider, options), got {choice!r}"
    return choice[1]


def test_tensorrt_first_with_caches_under_the_data_dir(tmp_path: Path) -> None:
    chosen = select_providers(["tensorrt", "cuda", "cpu"], JETSON, cache_dir=tmp_path, fp16=True)
    assert [p if isinstance(p, str) else p[0] for p in chosen] == [TENSORRT, CUDA, CPU]
    options = options_of(chosen[0])
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt-engines")
    assert options["trt_timing_cache_enable"] == "True"
    assert options["trt_timing_cache_path"] == str(tmp_path / "trt-timing")
    assert options["trt_fp16_enable"] == "True"
    assert options["trt_int8_enable"] == "False"
    assert "trt_int8_calibration_table_name" not in options


def test_int8_with_calibration_table(tmp_path: Path) -> None:
    table = tmp_path / "bundle" / "calibration.flatbuffers"
    chosen = select_providers(["tensorrt"], JETSON, cache_dir=tmp_path, calibration_table=table, int8=True)
    assert chosen[-1] == CPU
    options = options_of(chosen[0])
    assert options["trt_int8_enable"] == "True"
    assert options["trt_int8_calibration_table_name"] == "calibration.flatbuffers"


def test_unavailable_providers_are_skipped_and_cpu_is_the_floor(tmp_path: Path) -> None:
    assert select_providers(["tensorrt", "cuda", "cpu"], [CPU], cache_dir=tmp_path) == [CPU]
    only_cuda = select_providers(["tensorrt", "cuda"], [CUDA, CPU], cache_dir=tmp_path)
    assert only_cuda == [(CUDA, {"device_id": "0"}), CPU]
    # Preference order is the bundle's, not the device's.
    assert [
        p if isinstance(p, str) else p[0] for p in select_providers(["cuda", "tensorrt"], JETSON, cache_dir=tmp_path)
    ] == [
        CUDA,
        TENSORRT,
        CPU,
    ]


def test_unknown_provider_name_is_an_error(tmp_path: Path) -> None:
    accepted = "tensorrt, cuda, rocm, openvino, directml, coreml, cpu"
    with pytest.raises(ProviderError, match=f"unknown execution provider 'vulkan'; accepted: {accepted}"):
        select_providers(["vulkan"], JETSON, cache_dir=tmp_path)


def test_session_reports_what_actually_runs_and_logs_fallback(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "m.onnx")
    # Pretend onnxruntime lists CUDA (a GPU build on a box whose driver is missing): it silently
    # falls back to CPU, and we must notice. This CPU-only build also warns about the unknown provider.
    with capture_logs() as logs, pytest.warns(UserWarning, match="not in available provider names"):
        _, info = create_session(model, ["cuda", "cpu"], cache_dir=tmp_path, available=[CUDA, CPU], intra_op_threads=1)
    assert info.requested == (CUDA, CPU)
    assert info.active == (CPU,)
    assert info.fell_back is True
    assert info.provider == CPU
    fallback = [e for e in logs if e["event"] == "inference.provider_fallback"]
    assert fallback and fallback[0]["requested"] == [CUDA, CPU] and fallback[0]["active"] == [CPU]


def test_cpu_session_does_not_report_fallback(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "m.onnx")
    with capture_logs() as logs:
        _, info = create_session(model, ["tensorrt", "cpu"], cache_dir=tmp_path)
    assert info.active[0] == CPU and info.fell_back is False
    assert TENSORRT in info.unavailable
    assert not [e for e in logs if e["event"] == "inference.provider_fallback"]
