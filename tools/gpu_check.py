"""``make gpu-check``: the TensorRT and CUDA paths of the edge runtime, run for real on an NVIDIA GPU.

One short script (``python -m tools.gpu_check``), prepared for a lent GPU machine (< 8 minutes on an H200):

1. **Preflight** — ``nvidia-smi`` answers; ``onnxruntime`` is the GPU build with ``CUDAExecutionProvider`` and
   ``TensorrtExecutionProvider``; a tiny model really starts on each (onnxruntime drops a provider whose
   libraries are missing and silently runs on CPU). Anything missing exits 3 with what is missing and what to
   install (``ldd``'s "not found" libraries of the provider, when it can tell).
2. **A bundle built by the pipeline** — a generated YOLOv8-style detector (``edgefleet_testing.modelgen``,
   8400 anchors and ~8.4 GFLOP at 640, random weights), calibrated on synthetic images by
   ``build_precision_bundle``: FP32 ``model``, QDQ INT8 variants, FP16 and the TensorRT ``calibration_table``.
3. **Every case through the runtime's own ``InferenceEngine.load``** (provider × precision): TensorRT FP32,
   FP16 (``trt_fp16_enable``), INT8 from the bundle's calibration table, INT8 from the QDQ model; CUDA FP32,
   QDQ INT8 and an ``fp16`` variant when the bundle carries one; CPU FP32 as the reference. Each case is
   started twice over the same data dir: the providers really in use (``SessionInfo.active``) must be the
   ones asked for; for TensorRT the engine and timing caches must exist after the first start, the second
   start must change none of them (names, sizes, mtimes) and must be faster; an INT8-from-table case must
   find the table copied beside the engines. Then model-only and whole-frame latency (p50/p95) and mAP@0.5 of
   the case's detections against CPU FP32 on the evaluation images.
4. **Report** — ``gpu_check.json`` and ``gpu_check.txt`` under ``--out`` (default ``$OUT``, else
   ``gpu-check-out``). Exit 0 when every check passed, 1 when one failed, 3 when the machine lacks what the
   check needs.

``--providers cpu`` runs the very same code path on the CPU alone (cases CPU FP32 and each QDQ variant; the
cache checks are recorded as skipped): the rehearsal ``tests/integration/test_gpu_check_cpu.py`` runs, so the
script cannot rot on machines without a GPU. Without a GPU the default mode exits 3 with "no NVIDIA GPU"; it
never reports success it did not measure.

Needs on the GPU machine (it has no network, so install beforehand): ``onnxruntime-gpu==1.31.1`` (CUDA 12,
cuDNN 9) in place of ``onnxruntime``, and TensorRT 10 libraries (``libnvinfer.so.10``: the
``tensorrt-cu12-libs`` wheel or a system install on ``LD_LIBRARY_PATH``). See ``docs/gpu-check.md``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_ENVIRONMENT = 3
ORT_GPU_PIN = "onnxruntime-gpu==1.31.1"
REPORT_JSON = "gpu_check.json"
REPORT_TEXT = "gpu_check.txt"
# YOLOv8n's head at 640: 8400 anchors (21 anchor shapes x 20x20 cells), as bench_inference builds it.
YOLOV8N_ANCHORS = tuple((16.0 * (1 + i % 7), 32.0 * (1 + i // 7)) for i in range(21))
TRT_PROVIDER = "TensorrtExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class EnvironmentMissing(Exception):
    """The machine lacks what the check needs (GPU, onnxruntime-gpu, TensorRT libraries): exit 3."""


@dataclass(frozen=True)
class Case:
    """One provider × precision run: ``variant`` is the bundle's precision variant whose artifact is loaded;
    ``table`` loads the bundle's TensorRT calibration table; ``fp16``/``int8`` are the TensorRT flags."""

    provider: str  # bundle name: tensorrt, cuda, cpu
    precision: str  # fp32, fp16, int8-table, int8-qdq, int8-u8s8 …
    variant: str
    fp16: bool = False
    int8: bool = False
    table: bool = False

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.precision}"

    @property
    def expected(self) -> str:
        return {"tensorrt": TRT_PROVIDER, "cuda": CUDA_PROVIDER, "cpu": CPU_PROVIDER}[self.provider]


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str


@dataclass
class CaseReport:
    case: str
    provider: str
    precision: str
    variant: str
    artifact: str
    requested: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)
    first_start_s: float | None = None
    second_start_s: float | None = None
    cache_files: dict[str, dict[str, int]] = field(default_factory=dict)
    latency_model_ms: dict[str, float] = field(default_factory=dict)
    latency_frame_ms: dict[str, float] = field(default_factory=dict)
    map50_vs_cpu_fp32: float | None = None
    reference_boxes: int | None = None
    error: str | None = None
    checks: list[Check] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- preflight


def _nvidia_smi() -> dict[str, str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise EnvironmentMissing(
            "no NVIDIA GPU: nvidia-smi is not on PATH (no NVIDIA driver here); run this on a GPU machine, or "
            "rehearse the same code path on the CPU with --providers cpu"
        )
    query = "name,driver_version,memory.total,compute_cap"
    try:
        done = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentMissing(f"no NVIDIA GPU: nvidia-smi could not run: {exc}") from None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise EnvironmentMissing(
            f"no NVIDIA GPU: nvidia-smi exited {done.returncode}: {(done.stderr or done.stdout).strip()[:400]}"
        )
    name, driver, memory, cap = ([*(p.strip() for p in lines[0].split(",")), "", "", ""])[:4]
    return {"gpu": name, "driver": driver, "memory": memory, "compute_capability": cap, "gpus": str(len(lines))}


def _missing_libraries(ort: Any, provider_lib: str) -> list[str]:
    """``ldd``'s "not found" lines for one of onnxruntime's provider libraries (empty when it cannot tell)."""
    lib = Path(ort.__file__).parent / "capi" / provider_lib
    ldd = shutil.which("ldd")
    if ldd is None or not lib.is_file():
        return []
    try:
        done = subprocess.run([ldd, str(lib)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split("=>")[0].strip() for line in done.stdout.splitlines() if "not found" in line]


def _load_gpu_libraries(ort: Any) -> dict[str, str]:
    """Load CUDA/cuDNN (onnxruntime's ``preload_dlls``, from the nvidia-* wheels when installed) and TensorRT
    (the ``tensorrt`` / ``tensorrt_libs`` wheels, when installed) so the providers find them by soname."""
    found: dict[str, str] = {}
    preload = getattr(ort, "preload_dlls", None)
    if callable(preload):
        try:
            preload()
            found["preload_dlls"] = "ok"
        except Exception as exc:  # best effort: system libraries on LD_LIBRARY_PATH serve as well
            found["preload_dlls"] = f"failed: {exc}"
    for module in ("tensorrt", "tensorrt_libs"):
        try:
            loaded = importlib.import_module(module)
        except Exception:  # absent, or present without its libraries
            continue
        found[module] = str(getattr(loaded, "__version__", "present"))
    return found


def preflight(mode: str, work: Path, facts: dict[str, Any]) -> None:
    """Gather facts about this machine into ``facts`` (kept when it stops); raises ``EnvironmentMissing``
    (naming what is missing) in GPU mode."""
    facts.update(python=sys.version.split()[0], machine=platform.machine())
    if mode == "gpu":
        facts["nvidia_smi"] = _nvidia_smi()
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EnvironmentMissing(f"onnxruntime is not importable ({exc}); install {ORT_GPU_PIN}") from None
    facts["onnxruntime"] = ort.__version__
    if mode == "gpu":
        facts["libraries"] = _load_gpu_libraries(ort)
    available = list(ort.get_available_providers())
    facts["available_providers"] = available
    if mode == "cpu":
        return
    missing = [p for p in (CUDA_PROVIDER, TRT_PROVIDER) if p not in available]
    if missing:
        raise EnvironmentMissing(
            f"onnxruntime {ort.__version__} offers {available}, without {', '.join(missing)}: this is not the "
            f"GPU build; in this environment run `pip uninstall -y onnxruntime && pip install {ORT_GPU_PIN}` "
            "(CUDA 12, cuDNN 9) and provide TensorRT 10 (tensorrt-cu12-libs or a system install)"
        )
    facts["probe"] = _probe_providers(ort, work)


def _probe_providers(ort: Any, work: Path) -> dict[str, list[str]]:
    """Start a tiny model on TensorRT and on CUDA through the runtime's session factory; a provider that
    fails to initialise is dropped by onnxruntime, which this turns into a clear refusal."""
    from edge_runtime.inference import create_session
    from edgefleet_testing.modelgen import make_classifier

    model = make_classifier(work / "probe.onnx", num_classes=4, size=32, seed=0)
    seen: dict[str, list[str]] = {}
    for name, full, lib in (
        ("cuda", CUDA_PROVIDER, "libonnxruntime_providers_cuda.so"),
        ("tensorrt", TRT_PROVIDER, "libonnxruntime_providers_tensorrt.so"),
    ):
        try:
            session, info = create_session(model, (name, "cpu"), cache_dir=work / "probe-cache")
            session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 32, 32), np.float32)})
            active = list(info.active)
        except Exception as exc:  # a provider's own load error says most about what is missing
            active = [f"error: {exc}"]
        seen[name] = active
        if not active or active[0] != full:
            missing = _missing_libraries(ort, lib)
            hint = f"; libraries not found: {', '.join(missing)}" if missing else ""
            what = (
                "TensorRT 10 libraries (libnvinfer.so.10: tensorrt-cu12-libs)"
                if name == "tensorrt"
                else ("CUDA 12 and cuDNN 9 libraries (nvidia-cudnn-cu12, nvidia-cuda-runtime-cu12 …)")
            )
            raise EnvironmentMissing(
                f"{full} is listed by onnxruntime but did not start (a session asked for it runs on {active}){hint}; "
                f"install {what} or put their directory on LD_LIBRARY_PATH"
            )
    return seen


# -------------------------------------------------------------------------------------------- the bundle


def build_bundle(work: Path, *, size: int, calibration_images: int, eval_images: int) -> tuple[Path, Any, Any, bool]:
    """The detector, its calibration/evaluation images, and the bundle ``build_precision_bundle`` makes;
    a bundle already in ``work`` (a second run over the same data dir, like a device restart) is reused."""
    from edgefleet.contract.bundle import read_manifest
    from edgefleet.contract.bundle_layout import MANIFEST_NAME
    from edgefleet.contract.bundle_spec import BundleSpec
    from edgefleet_pipeline.calibration import load_image_set
    from edgefleet_pipeline.precision_bundle import build_precision_bundle
    from edgefleet_pipeline.synthetic_documents import write_document_set
    from edgefleet_testing.modelgen import make_yolo_detector

    bundle_dir = work / "bundle"
    if (bundle_dir / MANIFEST_NAME).is_file() and (work / "eval").is_dir():
        evaluation = load_image_set(work / "eval", purpose="evaluation", recommended=0)
        return bundle_dir, read_manifest(bundle_dir), evaluation, True
    # At 640: YOLOv8n's head (8400 anchors) and roughly its compute (~8.4 GFLOP, as bench_inference builds it),
    # so the GPU latencies mean something; smaller sizes are for the quick CPU rehearsal.
    full = size == 640
    model = make_yolo_detector(
        work / "detector.onnx",
        layout="v8",
        size=size,
        seed=0,
        anchors=YOLOV8N_ANCHORS if full else YOLOV8N_ANCHORS[:3],
        extra_matmuls=64 if full else 0,
    )
    write_document_set(work / "calibration", calibration_images, seed=101, size=(size, size))
    write_document_set(work / "eval", eval_images, seed=202, size=(size, size))
    spec = BundleSpec.from_dict(
        {
            "name": "gpu-check-detector",
            "version": "1.0.0",
            "model": str(model),
            "preprocess": {"size": [size, size]},
            "postprocess": {"kind": "yolov8", "conf_threshold": 0.25, "iou_threshold": 0.45},
            "labels": ["a", "b", "c", "d"],
            "providers": ["tensorrt", "cuda", "cpu"],
            "latency": {"sla_ms": 1000},
        },
        source="gpu-check spec",
        base_dir=work,
    )
    # Random weights: the accuracy gate has nothing to protect here, so every variant ships (bound 100%).
    build = build_precision_bundle(
        spec,
        bundle_dir,
        calibration_dir=work / "calibration",
        eval_dir=work / "eval",
        precision="auto",  # S8S8 and U8S8 QDQ, plus FP16 where the pipeline makes it for GPU providers
        max_accuracy_loss=1.0,
        latency_runs=10,  # the builder's CPU timing is not what this check measures
    )
    for warning in build.warnings:
        print(f"  bundle build: {warning}", file=sys.stderr)
    manifest = read_manifest(bundle_dir)
    evaluation = load_image_set(work / "eval", purpose="evaluation", recommended=0)
    return bundle_dir, manifest, evaluation, False


def plan_cases(mode: str, manifest: Any) -> list[Case]:
    """The provider × precision cases for ``mode``, from the variants the bundle carries."""
    variants = dict(manifest.precision_variants or {})
    qdq = sorted(n for n, v in variants.items() if v.precision == "int8")
    signed = [n for n in qdq if "u8" not in n]
    fp16 = sorted(n for n, v in variants.items() if v.precision == "fp16")
    cases = [Case("cpu", "fp32", "fp32")]
    if mode == "cpu":
        return cases + [Case("cpu", "int8-qdq" if n == "int8" else n, n) for n in qdq]
    cases += [
        Case("tensorrt", "fp32", "fp32"),
        Case("tensorrt", "fp16", "fp32", fp16=True),
    ]
    if "calibration_table" in manifest.artifacts:
        cases.append(Case("tensorrt", "int8-table", "fp32", int8=True, table=True))
    # TensorRT consumes signed INT8 Q/DQ only; U8S8 variants are CPU candidates.
    cases += [Case("tensorrt", "int8-qdq", n, int8=True) for n in signed[:1]]
    cases.append(Case("cuda", "fp32", "fp32"))
    cases += [Case("cuda", "fp16", n) for n in fp16[:1]]
    cases += [Case("cuda", "int8-qdq", n) for n in signed[:1]]
    return cases


# ------------------------------------------------------------------------------------------ measurement


def _snapshot(root: Path) -> dict[str, dict[str, int]]:
    if not root.is_dir():
        return {}
    return {
        str(p.relative_to(root)): {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _percentiles(samples_ns: Sequence[int]) -> dict[str, float]:
    ms = np.asarray(samples_ns, np.float64) / 1e6
    return {
        "p50": round(float(np.percentile(ms, 50)), 4),
        "p95": round(float(np.percentile(ms, 95)), 4),
        "runs": len(samples_ns),
    }


def _timed(fn: Callable[[], object], runs: int) -> list[int]:
    out = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - start)
    return out


def run_case(
    case: Case,
    bundle_dir: Path,
    manifest: Any,
    images: list[Any],
    reference: list[Any] | None,
    *,
    data_dir: Path,
    runs: int,
    mode: str,
) -> tuple[CaseReport, list[Any]]:
    """Start ``case`` twice over ``data_dir``, check what runs and what the caches did, time it, score it."""
    from edge_runtime.inference import InferenceEngine
    from edge_runtime.inference.providers import TRT_ENGINE_DIR, TRT_TIMING_DIR
    from edgefleet.contract.processing.preprocess import preprocess
    from edgefleet_pipeline.accuracy import decode_yolo, mean_average_precision

    variant = manifest.precision_variants[case.variant] if manifest.precision_variants else None
    artifact = variant.artifact if variant is not None else "model"
    model_path = bundle_dir / manifest.artifact(artifact).path
    table = bundle_dir / manifest.artifact("calibration_table").path if case.table else None
    report = CaseReport(case.name, case.provider, case.precision, case.variant, artifact)
    cache_dir = data_dir / "cache"

    def start() -> tuple[Any, float]:
        began = time.perf_counter()
        engine = InferenceEngine.load(
            model_path,
            manifest.preprocess,
            manifest.postprocess,
            list(manifest.labels),
            providers=(case.provider, "cpu"),
            cache_dir=cache_dir,
            bundle_digest=manifest.digest,
            warmup=1,  # the first run builds the TensorRT engine: part of the start, as on a device
            calibration_table=table,
            fp16=case.fp16,
            int8=case.int8,
        )
        return engine, time.perf_counter() - began

    before = _snapshot(cache_dir)
    engine, report.first_start_s = start()
    after_first = _snapshot(cache_dir)
    report.requested = list(engine.session_info.requested)
    report.active = list(engine.session_info.active)
    report.checks.append(
        Check(
            "provider_in_use",
            bool(report.active) and report.active[0] == case.expected,
            f"asked for {case.expected}, session.get_providers() = {report.active}",
        )
    )
    del engine
    gc.collect()
    engine, report.second_start_s = start()
    after_second = _snapshot(cache_dir)
    created = {k: v for k, v in after_first.items() if before.get(k) != v}
    report.cache_files = created
    if case.provider == "tensorrt":
        engines = [k for k in created if k.startswith(TRT_ENGINE_DIR) and k.endswith(".engine")]
        timing = [k for k in after_first if k.startswith(TRT_TIMING_DIR)]
        report.checks.append(
            Check(
                "trt_caches_written",
                bool(engines) and bool(timing),
                f"first start wrote engines {engines}; timing caches present {timing}",
            )
        )
        changed = sorted(k for k in after_second if after_first.get(k) != after_second[k])
        report.checks.append(
            Check(
                "trt_caches_reused",
                not changed,
                "second start changed nothing in the cache" if not changed else f"second start rewrote {changed}",
            )
        )
        report.checks.append(
            Check(
                "second_start_faster",
                report.second_start_s < report.first_start_s,
                f"first {report.first_start_s:.2f} s, second {report.second_start_s:.2f} s",
            )
        )
        if table is not None:
            copied = cache_dir / TRT_ENGINE_DIR / table.name
            same = copied.is_file() and copied.read_bytes() == table.read_bytes()
            report.checks.append(
                Check("calibration_table_in_engine_dir", same, f"{copied} {'matches' if same else 'missing/differs'}")
            )
    else:
        why = "cpu mode" if mode == "cpu" else f"{case.provider} keeps no engine cache"
        report.checks.append(Check("trt_caches", None, f"skipped: {why}"))

    tensors = [np.ascontiguousarray(preprocess(image, manifest.preprocess)[0]) for image in images]
    report.latency_model_ms = _percentiles(_timed(lambda: engine.run_model(tensors[0]), runs))
    report.latency_frame_ms = _percentiles(_timed(lambda: engine.infer(images[0], 0), max(1, runs // 2)))
    outputs = [np.asarray(engine.run_model(t)) for t in tensors]
    post = manifest.postprocess

    def decode(o: Any, conf: float) -> Any:
        return decode_yolo(
            o,
            post.kind,
            conf_threshold=conf,
            iou_threshold=post.iou_threshold,
            max_detections=post.max_detections,
        )

    if reference is not None:
        truth = [decode(o, post.conf_threshold) for o in reference]
        preds = [decode(o, min(0.001, post.conf_threshold)) for o in outputs]
        report.map50_vs_cpu_fp32 = round(
            mean_average_precision(truth, preds, empty_conf_threshold=post.conf_threshold), 4
        )
        report.reference_boxes = sum(len(t) for t in truth)
    report.checks.append(
        Check("latency_measured", report.latency_model_ms["p50"] > 0, f"model p50 {report.latency_model_ms['p50']} ms")
    )
    return report, outputs


# -------------------------------------------------------------------------------------------- reporting


def summary_text(report: Mapping[str, Any]) -> str:
    lines = [f"gpu-check ({report['mode']} mode): {'PASSED' if report['ok'] else 'FAILED'}"]
    if report.get("error"):
        lines.append(f"  {report['error']}")
    env = report.get("environment", {})
    if "nvidia_smi" in env:
        smi = env["nvidia_smi"]
        lines.append(f"  GPU {smi['gpu']} (driver {smi['driver']}, {smi['memory']}, sm {smi['compute_capability']})")
    if env:
        lines.append(f"  onnxruntime {env.get('onnxruntime')}, providers {env.get('available_providers')}")
    cases = report.get("cases", [])
    if cases:
        lines.append("")
        lines.append(
            f"  {'case':<22} {'active':<28} {'start1 s':>8} {'start2 s':>8} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'frame p50':>9} {'mAP50':>6}"
        )
        for c in cases:
            lat = c.get("latency_model_ms") or {}
            frame = c.get("latency_frame_ms") or {}
            active = (c.get("active") or ["-"])[0]
            m = c.get("map50_vs_cpu_fp32")
            lines.append(
                f"  {c['case']:<22} {active:<28} {c.get('first_start_s') or 0:>8.2f} "
                f"{c.get('second_start_s') or 0:>8.2f} {lat.get('p50', 0):>8.3f} {lat.get('p95', 0):>8.3f} "
                f"{frame.get('p50', 0):>9.3f} {'-' if m is None else f'{m:.3f}':>6}"
            )
            if c.get("error"):
                lines.append(f"      error: {c['error']}")
    failed = [f"{k['name']}: {k['detail']}" for k in report.get("checks", []) if k["ok"] is False]
    failed += [f"{c['case']}: {k['name']}: {k['detail']}" for c in cases for k in c["checks"] if k["ok"] is False]
    if failed:
        lines.append("")
        lines.extend(f"  FAILED {f}" for f in failed)
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / REPORT_TEXT).write_text(summary_text(report))


def check(
    mode: str, *, data_dir: Path, runs: int, size: int, calib: int, evals: int, budget_s: float
) -> dict[str, Any]:
    report: dict[str, Any] = {"tool": "tools.gpu_check", "mode": mode, "ok": False, "started": time.time()}
    began = time.perf_counter()
    report["environment"] = {}
    try:
        preflight(mode, data_dir, report["environment"])
    except EnvironmentMissing as exc:
        report["error"] = str(exc)
        report["exit_code"] = EXIT_ENVIRONMENT
        return report
    from edgefleet_pipeline.calibration import read_image

    try:
        bundle_dir, manifest, evaluation, reused = build_bundle(
            data_dir, size=size, calibration_images=calib, eval_images=evals
        )
    except Exception as exc:  # the pipeline's own error says what was wrong; the report must still be written
        report["error"] = f"bundle build failed: {type(exc).__name__}: {exc}"
        report["exit_code"] = EXIT_CHECK_FAILED
        return report
    report["bundle"] = {
        "digest": manifest.digest,
        "variants": {n: v.artifact for n, v in (manifest.precision_variants or {}).items()},
        "artifacts": sorted(manifest.artifacts),
        "reused": reused,
        "ready_s": round(time.perf_counter() - began, 2),
    }
    images = [read_image(p) for p in evaluation.paths]
    cases: list[CaseReport] = []
    variants = report["bundle"]["variants"]
    qdq = sorted(set(variants) - {"fp32", "fp16"})
    # Without a QDQ variant the INT8 cases cannot run: say so instead of passing on FP32 alone.
    report["checks"] = [
        asdict(Check("bundle_has_int8_variant", bool(qdq), f"variants {sorted(variants)}")),
    ]
    reference: list[Any] | None = None
    for case in plan_cases(mode, manifest):
        if time.perf_counter() - began > budget_s:
            skipped = CaseReport(case.name, case.provider, case.precision, case.variant, "")
            skipped.error = f"not run: the check passed its {budget_s:.0f} s budget (--budget-s)"
            skipped.checks.append(Check("case_ran", False, skipped.error))
            cases.append(skipped)
            continue
        try:
            result, outputs = run_case(
                case, bundle_dir, manifest, images, reference, data_dir=data_dir, runs=runs, mode=mode
            )
        except Exception as exc:  # one broken case must not hide the others' figures
            result = CaseReport(case.name, case.provider, case.precision, case.variant, "")
            result.error = f"{type(exc).__name__}: {exc}"
            result.checks.append(Check("case_ran", False, result.error))
            outputs = []
        if case.name == "cpu/fp32" and outputs:
            reference = outputs
            result.map50_vs_cpu_fp32 = 1.0
        cases.append(result)
        print(f"  {case.name}: {'ok' if all(c.ok is not False for c in result.checks) else 'FAILED'}", flush=True)
    report["cases"] = [asdict(c) for c in cases]
    report["ok"] = (
        bool(cases)
        and all(k.ok is not False for c in cases for k in c.checks)
        and all(k["ok"] is not False for k in report["checks"])
    )
    report["exit_code"] = EXIT_OK if report["ok"] else EXIT_CHECK_FAILED
    report["elapsed_s"] = round(time.perf_counter() - began, 2)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", choices=("gpu", "cpu"), default="gpu", help="gpu (default) or the cpu rehearsal")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    parser.add_argument("--data-dir", type=Path, help="device data dir for bundle and caches (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=200, help="timed model runs per case")
    parser.add_argument("--size", type=int, default=640, help="detector input size (640: 8400 anchors)")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--eval-images", type=int, default=16)
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="start no new case after this many seconds (default 420)"
    )
    args = parser.parse_args(argv)
    from edgefleet.logging import configure_logging

    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="edgefleet-gpu-check-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        report = check(
            args.providers,
            data_dir=data_dir,
            runs=args.runs,
            size=args.size,
            calib=args.calibration_images,
            evals=args.eval_images,
            budget_s=args.budget_s,
        )
    write_report(args.out, report)
    text = summary_text(report)
    print(text, end="", file=sys.stderr if report["exit_code"] == EXIT_ENVIRONMENT else sys.stdout)
    return int(report["exit_code"])


if __name__ == "__main__":
    raise SystemExit(main())
