"""``tools/gpu_check.py`` on a machine without a GPU: its CPU rehearsal runs the very code path the GPU check
runs (pipeline bundle build, the runtime's ``InferenceEngine`` twice per case, provider assertion, latency,
agreement, the JSON report), so the script cannot rot where no GPU is lent; and its default mode refuses with
"no NVIDIA GPU" instead of reporting a success it did not measure.

Both run the script as a subprocess, the way ``make gpu-check`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgefleet.contract.bundle import read_manifest
from tools.gpu_check import plan_cases

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _gpu_check(
    *args: str, out: Path, path_prefix: Path | None = None, path_only: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the script; ``path_prefix`` goes before PATH, ``path_only`` replaces it (a machine without the tools)."""
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env.get('PATH', '')}"
    if path_only is not None:
        env["PATH"] = str(path_only)
    return subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--out", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _report(out: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((out / "gpu_check.json").read_text())
    return report


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_case_and_writes_the_report(tmp_path: Path) -> None:
    out, data = tmp_path / "out", tmp_path / "data"
    args = ("--providers", "cpu", "--data-dir", str(data), "--runs", "10", "--size", "320")
    done = _gpu_check(*args, "--calibration-images", "12", "--eval-images", "16", out=out)
    assert done.returncode == 0, done.stdout + done.stderr
    report = _report(out)
    assert report["ok"] is True and report["mode"] == "cpu" and report["exit_code"] == 0
    assert {"model", "model.int8", "calibration_table"} <= set(report["bundle"]["artifacts"])
    assert report["bundle"]["reused"] is False
    cases = {c["case"]: c for c in report["cases"]}
    assert "cpu/fp32" in cases and "cpu/int8-qdq" in cases
    assert [c["name"] for c in report["checks"] if c["ok"]] == ["bundle_has_int8_variant"]
    for case in cases.values():
        assert case["active"][0] == "CPUExecutionProvider", case
        assert case["error"] is None
        checks = {c["name"]: c for c in case["checks"]}
        assert checks["provider_in_use"]["ok"] is True
        assert checks["trt_caches"]["ok"] is None and "cpu mode" in checks["trt_caches"]["detail"]
        assert case["first_start_s"] > 0 and case["second_start_s"] > 0
        assert 0 < case["latency_model_ms"]["p50"] <= case["latency_model_ms"]["p95"]
        assert case["latency_model_ms"]["runs"] == 10
        assert 0.0 <= case["map50_vs_cpu_fp32"] <= 1.0
    assert cases["cpu/fp32"]["map50_vs_cpu_fp32"] == 1.0
    # The int8 case was scored against the FP32 reference's own boxes.
    assert cases["cpu/int8-qdq"]["reference_boxes"] is not None
    text = (out / "gpu_check.txt").read_text()
    assert "gpu-check (cpu mode): PASSED" in text and "cpu/int8-qdq" in text

    # Again over the same data dir (a device restart): the bundle on disk is reused, the same cases pass.
    again = _gpu_check(*args, "--calibration-images", "12", "--eval-images", "16", out=out)
    assert again.returncode == 0, again.stdout + again.stderr
    second = _report(out)
    assert second["bundle"]["reused"] is True and second["bundle"]["digest"] == report["bundle"]["digest"]
    assert {c["case"] for c in second["cases"]} == set(cases)
    assert second["started"] > report["started"]


def test_default_mode_without_a_gpu_refuses_and_reports_no_success(tmp_path: Path) -> None:
    # A PATH without nvidia-smi is a machine without an NVIDIA driver, wherever this test runs (a GPU host too).
    no_driver = tmp_path / "no-driver-bin"
    no_driver.mkdir()
    out = tmp_path / "out"
    done = _gpu_check(out=out, path_only=no_driver)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no NVIDIA GPU" in done.stderr
    assert "PASSED" not in done.stdout + done.stderr
    report = _report(out)
    assert report["ok"] is False and report["mode"] == "gpu"
    assert "no NVIDIA GPU" in report["error"] and "--providers cpu" in report["error"]
    assert "cases" not in report

    # Asked again, the answer is the same: nothing from the first refusal makes the second one pass.
    assert _gpu_check(out=out, path_only=no_driver).returncode == 3


def test_a_gpu_without_onnxruntime_gpu_is_refused_naming_the_package(tmp_path: Path) -> None:
    """Past the GPU check (an ``nvidia-smi`` that answers), the CPU build of onnxruntime installed here is
    refused with the pinned package to install, before anything is built."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 570.00, 143771 MiB, 9.0'\n")
    smi.chmod(0o755)
    out = tmp_path / "out"
    done = _gpu_check(out=out, path_prefix=bin_dir)
    assert done.returncode == 3, done.stdout + done.stderr
    report = _report(out)
    assert report["ok"] is False and "cases" not in report and "bundle" not in report
    assert report["environment"]["nvidia_smi"]["gpu"] == "NVIDIA H200"
    assert "CPUExecutionProvider" in report["environment"]["available_providers"]
    assert "onnxruntime-gpu==1.31.1" in report["error"] and "CUDAExecutionProvider" in report["error"]
    assert "onnxruntime-gpu==1.31.1" in done.stderr


@pytest.mark.slow
def test_the_gpu_plan_of_a_pipeline_bundle_covers_every_provider_and_precision(tmp_path: Path) -> None:
    """What the GPU run would start, planned from a bundle the pipeline really built (the rehearsal's): TensorRT
    FP32, FP16, INT8 from the bundle's table and from the signed QDQ model; CUDA FP32, the FP16 variant and the
    QDQ model; CPU FP32 first, as the reference. U8S8 is never handed to TensorRT (signed INT8 only)."""
    out, data = tmp_path / "out", tmp_path / "data"
    args = ("--providers", "cpu", "--data-dir", str(data), "--runs", "3", "--size", "320")
    done = _gpu_check(*args, "--calibration-images", "12", "--eval-images", "16", out=out)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = read_manifest(data / "bundle")
    assert {"fp32", "int8", "int8-u8s8", "fp16"} <= set(manifest.precision_variants or {})
    plan = {c.name: c for c in plan_cases("gpu", manifest)}
    assert list(plan) == [
        "cpu/fp32",
        "tensorrt/fp32",
        "tensorrt/fp16",
        "tensorrt/int8-table",
        "tensorrt/int8-qdq",
        "cuda/fp32",
        "cuda/fp16",
        "cuda/int8-qdq",
    ]
    assert plan["tensorrt/fp16"].fp16 and plan["tensorrt/fp16"].variant == "fp32"
    assert plan["tensorrt/int8-table"].table and plan["tensorrt/int8-table"].variant == "fp32"
    assert plan["tensorrt/int8-qdq"].variant == "int8" and plan["tensorrt/int8-qdq"].int8
    assert plan["cuda/fp16"].variant == "fp16" and plan["cuda/int8-qdq"].variant == "int8"
    assert [c.name for c in plan_cases("cpu", manifest)] == ["cpu/fp32", "cpu/int8-qdq", "cpu/int8-u8s8"]
