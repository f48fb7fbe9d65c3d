"""onnxruntime session factory: which execution providers to ask for, and what actually runs.

``select_providers`` is pure: bundle preference (the contract's ``KNOWN_PROVIDERS``: ``tensorrt``, ``cuda``,
``rocm``, ``openvino``, ``directml``, ``coreml``, ``cpu``) × what this device's onnxruntime offers → the provider
list with options, in preference order, CPU always last as the floor. A provider this onnxruntime build does not
offer is skipped (and reported in ``SessionInfo.unavailable``), never an error: one bundle serves a fleet of
Jetsons, Intel boxes, Macs and Pis. ``create_session`` is the shell: it prepares the cache directories, creates
the session and then reads ``session.get_providers()`` back, because onnxruntime silently drops a provider that
fails to initialise (missing libnvinfer, wrong CUDA, an OpenVINO device that is not there) and would otherwise
run on CPU while we report TensorRT. docs/providers.md says, per provider, its options, caches and install.

TensorRT decisions:
- Engine and timing caches live under the device's data dir (``cache_dir/trt-engines``,
  ``cache_dir/trt-timing``) so a restart reuses built engines instead of spending minutes rebuilding them.
- onnxruntime resolves ``trt_int8_calibration_table_name`` relative to the engine cache path, so the
  factory copies the bundle's table there; the table is TensorRT's native format (what bundles ship).
- ``int8`` without a table is legal: a QDQ model carries its own scales.

OpenVINO decisions (``onnxruntime-openvino``, an alternative install: it replaces the ``onnxruntime`` module):
- ``device_type`` is ``CPU`` unless the caller names another OpenVINO device (``GPU``, ``GPU.1``, ``NPU``,
  ``AUTO:GPU,CPU``…); a device that is not there makes onnxruntime drop the provider, which ``fell_back`` shows.
- ``precision`` is pinned rather than left to OpenVINO's per-host default (on CPUs with AMX the CPU plugin
  computes in bf16 by default, and the device would serve a model other than the FP32 one the bundle's accuracy
  gate measured): CPU ``FP32`` (the CPU plugin accepts only FP32 or ACCURACY), GPU ``FP16`` when ``fp16`` else
  ``FP32``; NPU and compound devices keep OpenVINO's device default (the NPU computes in FP16).
- Compiled blobs are cached in ``cache_dir/openvino`` (OpenVINO's ``cache_dir``), so a restart skips the
  compile, like TensorRT's engine cache. ``num_of_threads`` follows ``intra_op_threads``: OpenVINO runs its
  subgraph on its own thread pool, which onnxruntime's intra-op setting does not reach.

CoreML (macOS, onnxruntime's own macOS wheel): ``ModelFormat=MLProgram`` (the current Core ML format; the
older NeuralNetwork format lacks many ops), ``MLComputeUnits`` ``ALL`` unless the caller names ``CPUAndGPU``,
``CPUAndNeuralEngine`` or ``CPUOnly``, compiled models cached in ``cache_dir/coreml``
(``ModelCacheDirectory``), ``AllowLowPrecisionAccumulationOnGPU`` when ``fp16``.

ROCm and DirectML get ``device_id`` 0 and nothing else: they are mapped so a bundle naming them loads, but no
build this project pins offers them (onnxruntime removed its ROCm provider in 1.23, MIGraphX replaces it;
DirectML is the Windows-only ``onnxruntime-directml``), so on every supported device they are skipped as
unavailable and the bundle's next provider serves.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import structlog

from edge_runtime.inference.errors import ModelLoadError, ProviderError
from edgefleet.contract.shown import shown

log = structlog.get_logger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
ROCM = "ROCMExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
DIRECTML = "DmlExecutionProvider"
COREML = "CoreMLExecutionProvider"
CPU = "CPUExecutionProvider"
#: Bundle name (the contract's ``KNOWN_PROVIDERS``, same order) → onnxruntime's name.
PROVIDER_NAMES: dict[str, str] = {
    "tensorrt": TENSORRT,
    "cuda": CUDA,
    "rocm": ROCM,
    "openvino": OPENVINO,
    "directml": DIRECTML,
    "coreml": COREML,
    "cpu": CPU,
}

ProviderOptions = dict[str, str]
ProviderChoice = str | tuple[str, ProviderOptions]

TRT_ENGINE_DIR = "trt-engines"
TRT_TIMING_DIR = "trt-timing"
OPENVINO_CACHE_DIR = "openvino"
COREML_CACHE_DIR = "coreml"

OPENVINO_DEFAULT_DEVICE = "CPU"
# One OpenVINO device (CPU, GPU, GPU.1, NPU) or a virtual device over a list of them (AUTO:GPU,CPU).
_OV_DEVICE = r"(?:CPU|GPU(?:\.\d+)?|NPU)"
_OPENVINO_DEVICE_RE = re.compile(rf"^(?:{_OV_DEVICE}|(?:AUTO|HETERO|MULTI):{_OV_DEVICE}(?:,{_OV_DEVICE})*)$")
COREML_COMPUTE_UNITS = ("ALL", "CPUAndGPU", "CPUAndNeuralEngine", "CPUOnly")


def _flag(value: bool) -> str:
    return "True" if value else "False"


def provider_name(choice: ProviderChoice) -> str:
    return choice if isinstance(choice, str) else choice[0]


def resolve_preference(preferred: Sequence[str]) -> list[str]:
    """Bundle names (``KNOWN_PROVIDERS``, or onnxruntime's own) → onnxruntime names (deduplicated)."""
    out: list[str] = []
    for name in preferred:
        full = PROVIDER_NAMES.get(name.lower()) if isinstance(name, str) else None
        if full is None and name in PROVIDER_NAMES.values():
            full = name
        if full is None:
            raise ProviderError(
                f"bundle.json: field 'providers' names unknown execution provider {shown(name)}; "
                f"accepted: {', '.join(PROVIDER_NAMES)}"
            )
        if full not in out:
            out.append(full)
    return out


def select_providers(
    preferred: Sequence[str],
    available: Sequence[str] | None = None,
    *,
    cache_dir: Path,
    calibration_table: Path | None = None,
    fp16: bool = False,
    int8: bool = False,
    threads: int | None = None,
    openvino_device: str = OPENVINO_DEFAULT_DEVICE,
    coreml_compute_units: str = "ALL",
) -> list[ProviderChoice]:
    """Providers to request, in preference order, limited to ``available``; CPU is always the last entry.

    ``available`` defaults to ``ort.get_available_providers()``; pass it explicitly to decide for another
    device (the function is then pure). ``threads`` (None: the provider's default) sizes OpenVINO's own pool;
    ``openvino_device`` and ``coreml_compute_units`` pick the accelerator behind those providers.
    """
    openvino_device = _check_openvino_device(openvino_device)
    if coreml_compute_units not in COREML_COMPUTE_UNITS:
        raise ProviderError(
            f"CoreML compute units must be one of {', '.join(COREML_COMPUTE_UNITS)}, got {shown(coreml_compute_units)}"
        )
    have = set(ort.get_available_providers() if available is None else available)
    chosen: list[ProviderChoice] = []
    for name in resolve_preference(preferred):
        if name not in have or name == CPU:
            continue
        if name == TENSORRT:
            options: ProviderOptions = {
                "device_id": "0",
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cache_dir / TRT_ENGINE_DIR),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(cache_dir / TRT_TIMING_DIR),
                "trt_fp16_enable": _flag(fp16),
                "trt_int8_enable": _flag(int8 or calibration_table is not None),
            }
            if calibration_table is not None:
                options["trt_int8_calibration_table_name"] = calibration_table.name
                options["trt_int8_use_native_calibration_table"] = "True"
            chosen.append((TENSORRT, options))
        elif name == OPENVINO:
            chosen.append((OPENVINO, _openvino_options(openvino_device, cache_dir, fp16=fp16, threads=threads)))
        elif name == COREML:
            coreml: ProviderOptions = {
                "ModelFormat": "MLProgram",
                "MLComputeUnits": coreml_compute_units,
                "ModelCacheDirectory": str(cache_dir / COREML_CACHE_DIR),
            }
            if fp16:
                coreml["AllowLowPrecisionAccumulationOnGPU"] = "1"
            chosen.append((COREML, coreml))
        elif name in (CUDA, ROCM, DIRECTML):
            chosen.append((name, {"device_id": "0"}))
    chosen.append(CPU)
    return chosen


def _check_openvino_device(device: str) -> str:
    if not isinstance(device, str) or not _OPENVINO_DEVICE_RE.match(device.upper()):
        raise ProviderError(
            f"OpenVINO device_type must be CPU, GPU, GPU.<n>, NPU or AUTO:/HETERO:/MULTI: over a list of them "
            f"(e.g. AUTO:GPU,CPU), got {shown(device)}"
        )
    return device.upper()


def _openvino_options(device: str, cache_dir: Path, *, fp16: bool, threads: int | None) -> ProviderOptions:
    options: ProviderOptions = {"device_type": device, "cache_dir": str(cache_dir / OPENVINO_CACHE_DIR)}
    if device == "CPU":
        options["precision"] = "FP32"
    elif device.startswith("GPU"):
        options["precision"] = "FP16" if fp16 else "FP32"
    if threads is not None and threads > 0:  # session_options refuses a non-positive count, with the reason
        options["num_of_threads"] = str(threads)
    return options


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What was asked of onnxruntime and what it actually runs on.

    ``requested``: the providers passed to the session (after availability filtering); ``active``: what
    ``session.get_providers()`` reports; ``fell_back``: the first active provider is not the first requested
    one; ``unavailable``: preferred providers this device's onnxruntime does not offer at all.
    """

    requested: tuple[str, ...]
    active: tuple[str, ...]
    fell_back: bool
    unavailable: tuple[str, ...] = ()

    @property
    def provider(self) -> str:
        """The provider that runs the model (the first active one)."""
        return self.active[0] if self.active else CPU


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    """Options of every session the runtime creates.

    Thread spinning is off. A device runs two sessions back to back on the same cores whenever it judges
    something — the candidate and the current bundle in the canary, the trial and the previous bundle in the
    watch window — and onnxruntime's default lets each session's worker threads spin after a run, stealing
    the cores the other session needs next (``bench/bench_watch_shadow.py`` measured the served engine ~1.25x
    slower beside a spinning shadow). Spinning also burns power and heat a fanless box does not have.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if intra_op_threads is not None:
        if intra_op_threads <= 0:
            raise ModelLoadError(
                f"intra_op_threads must be > 0 (or None for onnxruntime's default), got {intra_op_threads}"
            )
        opts.intra_op_num_threads = intra_op_threads
    return opts


def create_session(
    model_path: Path,
    preferred: Sequence[str],
    *,
    cache_dir: Path,
    calibration_table: Path | None = None,
    fp16: bool = False,
    int8: bool = False,
    intra_op_threads: int | None = None,
    available: Sequence[str] | None = None,
    openvino_device: str = OPENVINO_DEFAULT_DEVICE,
    coreml_compute_units: str = "ALL",
) -> tuple[ort.InferenceSession, SessionInfo]:
    """Create an onnxruntime session on the best available provider and report what really runs."""
    have = list(ort.get_available_providers() if available is None else available)
    wanted = resolve_preference(preferred)
    providers = select_providers(
        wanted,
        have,
        cache_dir=cache_dir,
        calibration_table=calibration_table,
        fp16=fp16,
        int8=int8,
        threads=intra_op_threads,
        openvino_device=openvino_device,
        coreml_compute_units=coreml_compute_units,
    )
    requested = tuple(provider_name(p) for p in providers)
    if OPENVINO in requested:
        (cache_dir / OPENVINO_CACHE_DIR).mkdir(parents=True, exist_ok=True)
    if COREML in requested:
        (cache_dir / COREML_CACHE_DIR).mkdir(parents=True, exist_ok=True)
    if TENSORRT in requested:
        engine_dir = cache_dir / TRT_ENGINE_DIR
        engine_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / TRT_TIMING_DIR).mkdir(parents=True, exist_ok=True)
        if calibration_table is not None:
            target = engine_dir / calibration_table.name
            if calibration_table.resolve() != target.resolve():
                shutil.copyfile(calibration_table, target)
    if not Path(model_path).is_file():
        raise ModelLoadError(f"model file {shown(str(model_path))} does not exist; check the bundle's artifacts")
    try:
        session = ort.InferenceSession(
            str(model_path), sess_options=session_options(intra_op_threads), providers=providers
        )
    except Exception as exc:  # onnxruntime raises its own untyped exception family
        raise ModelLoadError(f"onnxruntime cannot load {shown(str(model_path))}: {exc}") from exc
    active = tuple(session.get_providers())
    info = SessionInfo(
        requested=requested,
        active=active,
        fell_back=not active or active[0] != requested[0],
        unavailable=tuple(p for p in wanted if p not in have),
    )
    if info.fell_back:
        log.warning(
            "inference.provider_fallback",
            model=str(model_path),
            requested=list(requested),
            active=list(active),
        )
    if info.unavailable:
        log.info("inference.providers_unavailable", model=str(model_path), unavailable=list(info.unavailable))
    return session, info
