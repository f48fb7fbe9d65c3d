"""Building a bundle with precision variants: FP32 + every lower-precision candidate that passed the gate.

``build_precision_bundle`` is what ``fleetctl bundle build --calibration DIR`` runs:
0. ``semantics.resolve_semantics``: a spec that contradicts its model fails before any calibration;
1. load and hash the calibration set and the evaluation set (``--eval``, else the calibration images);
2. run FP32 once over the evaluation set (``accuracy.reference_outputs``) and refuse an agreement figure
   that would rest on too few images or, for detectors, too few FP32 boxes — before any calibration;
3. make the candidates (``CANDIDATES``) and score each against FP32 (``accuracy.score_candidate``):
   ``int8`` (QDQ S8S8, per-channel weights, artifact ``model.int8``), ``int8-u8s8`` (QDQ U8S8, artifact
   ``model.int8-u8s8``) and ``fp16`` (artifact ``model.fp16``);
4. time FP32 and every carried candidate on this machine, interleaved (``precision.measure_samples``), mark
   the preferred one, and warn when its p95 (the SLA's percentile) misses the SLA budget here;
5. ``build_bundle`` with the carried artifacts and the TensorRT table, bundle.json's ``calibration`` and
   ``precision_variants`` filled in.

Decisions:
- Which candidates: ``int8`` → the two INT8 ones; ``fp16`` → fp16; ``auto`` → both INT8 ones, plus fp16 when
  the bundle's providers include ``tensorrt`` or ``cuda`` (FP16 pays off on GPUs only; on a CPU it mostly
  adds casts) or ``fp16=True``. FP32 (artifact ``model``) is always carried: it is the reference.
- Why U8S8 as well as S8S8: onnxruntime recommends S8S8 for QDQ, and TensorRT consumes signed INT8 only, yet
  on x86 CPUs ORT's U8S8 kernels are often the fast ones (a YOLOv8n ran 7.8 ms U8S8 against 44.3 ms S8S8 and
  24.9 ms FP32 on one builder). Which is faster is measured, not assumed, on the builder and on the device.
- ``reduce_range`` (7-bit weights) on the INT8 candidates where the CPU lacks VNNI
  (``cpu_features.reduce_range_recommended``: there the u8s8 kernels can saturate their 16-bit sums), or as
  ``reduce_range="on"``/``"off"`` asks.
- Every candidate that passes ``max_accuracy_loss`` is carried with its figures; the device measures again
  and serves the fastest eligible one (``edge_runtime.precision``). A refused one is not carried; its reason
  is in ``PrecisionBuild.candidates`` and in the ``fp32`` variant's ``refused`` metrics.
- Calibration ``best`` tries minmax, entropy and percentile per INT8 candidate and keeps the best-agreeing one
  within the bound (ties: that order); the figures of every method tried are recorded.
- ``auto`` with no candidate passing (or too little evidence to judge one) builds FP32 only, with a warning
  and ``fallback_reason`` in the fp32 variant's metrics; an explicit ``int8``/``fp16`` stays an error naming
  each candidate's figure.
- Without an evaluation set the calibration images are scored instead; this flatters INT8 (its ranges came
  from those images), so the metrics say ``accuracy_eval_set: calibration`` and a warning is returned.
- The TensorRT table comes from the calibration run of the S8S8 candidate's method (TensorRT takes signed
  INT8); ``fp32`` with a calibration set still ships it (TensorRT builds INT8 from FP32 + the table).
- Latencies measured by the builder are model-only, labelled with its hardware class and
  ``measured_by: builder``: the builder is not the device, so a missed SLA is a warning, never an error.
- Each carried candidate gets its own golden tolerance (``variant_golden_tolerance``, in its metrics as
  ``golden_tolerance: {atol, rtol, max_abs_deviation, margin, cases, measured_by}``). The bundle's golden
  outputs are FP32's, and a device serving INT8 differs from them by its quantization error (~1e-2 on a
  classifier's probabilities), far above the bundle's ``canary.golden_tolerance`` (1e-3): with that one
  tolerance every INT8 device failed its golden preflight. The rule: ``atol = max(bundle atol,
  GOLDEN_MARGIN (2) × the variant's max abs deviation from the FP32 golden outputs on the golden inputs``,
  measured here on onnxruntime's CPU provider); ``rtol`` is the bundle's. Quantization error alone passes
  (the device's INT8 kernels round differently from the builder's, hence the margin), while a device that
  computes the variant wrongly (a broken TensorRT build, wrong scales, a corrupted artifact) is off by far
  more than twice the error the builder saw, and still fails. The device checks the variant it serves with
  that variant's tolerance (``edge_runtime.agent.canary.evaluator``); no new artifact is needed.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from edgefleet.contract.budget import budget_formula, budget_ms
from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_layout import MODEL_ROLE
from edgefleet.contract.bundle_policy import GoldenTolerance
from edgefleet.contract.bundle_sections import PrecisionVariant
from edgefleet.contract.bundle_spec import BundleSpec, load_spec
from edgefleet.contract.errors import BundleError
from edgefleet.contract.golden import GoldenCase
from edgefleet.contract.hardware import hardware_class
from edgefleet.contract.precision import REFERENCE, LatencyFigures, select_precision
from edgefleet.contract.processing.preprocess import Normaliser
from edgefleet.contract.shown import shown
from edgefleet.logging import current_logger
from edgefleet_pipeline.accuracy import (
    LOSS_ADVICE,
    AccuracyReport,
    ReferenceOutputs,
    evidence_refusal,
    loss_refusal,
    reference_outputs,
    score_candidate,
)
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_pipeline.calibration import ImageSet, load_image_set, read_image
from edgefleet_pipeline.cpu_features import reduce_range_recommended
from edgefleet_pipeline.errors import AccuracyLossError, PipelineError, PrecisionUnavailableError
from edgefleet_pipeline.fp16 import convert_fp16
from edgefleet_pipeline.precision import LatencySamples, measure_samples
from edgefleet_pipeline.quantize import (
    CALIBRATION_METHODS,
    ActivationType,
    CalibrationMethodName,
    CalibrationRun,
    calibrate,
    model_input_name,
    prepare_for_quantization,
    quantize_int8,
)
from edgefleet_pipeline.semantics import resolve_semantics
from edgefleet_pipeline.trt_table import write_trt_calibration_table

PrecisionRequest = Literal["fp32", "fp16", "int8", "auto"]
PRECISION_REQUESTS: tuple[PrecisionRequest, ...] = ("fp32", "fp16", "int8", "auto")
CalibrationRequest = Literal["minmax", "entropy", "percentile", "best"]
CALIBRATION_REQUESTS: tuple[CalibrationRequest, ...] = ("minmax", "entropy", "percentile", "best")
ReduceRangeRequest = Literal["auto", "on", "off"]
REDUCE_RANGE_REQUESTS: tuple[ReduceRangeRequest, ...] = ("auto", "on", "off")
INT8_ROLE = "model.int8"
U8S8_ROLE = "model.int8-u8s8"
FP16_ROLE = "model.fp16"
TABLE_ROLE = "calibration_table"
DEFAULT_MAX_ACCURACY_LOSS = 0.01
DEFAULT_MIN_EVAL_IMAGES = 16
DEFAULT_MIN_EVAL_BOXES = 32
#: Providers on which an FP16 variant pays off; FP16 is a candidate by default when a bundle names one.
FP16_PROVIDERS = frozenset({"tensorrt", "cuda"})
#: A carried variant's golden atol is at least this many times its own deviation from FP32 (module docstring).
GOLDEN_MARGIN = 2.0
#: The key of a variant's golden tolerance in its ``metrics`` (read by the device's golden preflight).
GOLDEN_TOLERANCE_KEY = "golden_tolerance"


@dataclass(frozen=True)
class Candidate:
    """A lower-precision variant the builder can make: bundle variant name, precision, artifact role, types."""

    name: str
    precision: str
    artifact: str
    activations: str
    weights: str

    @property
    def label(self) -> str:
        """``S8S8``, ``U8S8`` or ``FP16``: the activation/weight types in the usual notation."""
        short = {"int8": "S8", "uint8": "U8", "float16": "FP16"}
        if self.precision == "fp16":
            return "FP16"
        return f"{short[self.activations]}{short[self.weights]}"


S8S8 = Candidate("int8", "int8", INT8_ROLE, "int8", "int8")
U8S8 = Candidate("int8-u8s8", "int8", U8S8_ROLE, "uint8", "int8")
FP16 = Candidate("fp16", "fp16", FP16_ROLE, "float16", "float16")
CANDIDATES: tuple[Candidate, ...] = (S8S8, U8S8, FP16)


@dataclass(frozen=True)
class CandidateOutcome:
    """What became of one candidate: carried or refused (``reason``), with its figures.

    ``methods_tried``: calibration method → agreement value, or the reason it could not be scored;
    ``latency``: its builder figures when it was carried and measured.
    """

    candidate: Candidate
    carried: bool
    reason: str | None = None
    accuracy: AccuracyReport | None = None
    method: CalibrationMethodName | None = None
    methods_tried: Mapping[str, float | str] = field(default_factory=dict)
    reduce_range: bool | None = None
    preprocessing: str | None = None
    latency: LatencyFigures | None = None
    preferred: bool = False

    @property
    def name(self) -> str:
        return self.candidate.name


@dataclass(frozen=True)
class SlaCheck:
    """The preferred variant's builder latency at the SLA's percentile against the SLA budget."""

    variant: str
    percentile: float
    measured_ms: float
    sla_ms: float
    headroom: float
    budget_ms: float
    hardware_class: str

    @property
    def fits(self) -> bool:
        return self.measured_ms <= self.budget_ms

    def to_dict(self) -> dict[str, object]:
        return {
            "percentile": self.percentile,
            "measured_ms": round(self.measured_ms, 4),
            "budget_ms": round(self.budget_ms, 4),
            "sla_ms": self.sla_ms,
            "headroom": self.headroom,
            "fits": self.fits,
            "hardware_class": self.hardware_class,
            "measured_by": "builder",
        }

    def warning(self) -> str:
        return (
            f"{self.variant} p{self.percentile:g} {self.measured_ms:.1f} ms (model only) on this builder "
            f"({self.hardware_class}) misses the SLA budget {budget_formula(self.sla_ms, self.headroom, 0.0)} = "
            f"{self.budget_ms:.1f} ms; the builder is not the device: profile the target hardware "
            "(edge-runtime profile) before rolling this bundle out"
        )


@dataclass(frozen=True)
class PrecisionBuild:
    """What ``build_precision_bundle`` built and measured.

    ``accuracy``: the preferred variant's report (else the best-scoring candidate's), kept for callers that
    know one INT8 variant; ``candidates``: every candidate tried, carried or refused; ``fallback``: why an
    ``auto`` build carries FP32 only; ``latency``: builder figures of every measured variant.
    """

    manifest: BundleManifest
    calibration: ImageSet | None
    accuracy: AccuracyReport | None
    preferred: str
    warnings: tuple[str, ...]
    evaluation: ImageSet | None = None
    candidates: tuple[CandidateOutcome, ...] = ()
    fallback: str | None = None
    latency: Mapping[str, LatencyFigures] = field(default_factory=dict)
    sla: SlaCheck | None = None
    hardware_class: str = "unknown"

    @property
    def carried(self) -> tuple[str, ...]:
        """The variants in the bundle: ``fp32`` first, then the carried candidates."""
        return (REFERENCE, *(c.name for c in self.candidates if c.carried))


@dataclass(frozen=True)
class _Made:
    """A candidate made and scored: the outcome, its model file, and (INT8) the calibration run behind it."""

    outcome: CandidateOutcome
    path: Path | None = None
    run: CalibrationRun | None = None


def build_precision_bundle(
    spec: BundleSpec | Path | str,
    out_dir: Path | str,
    *,
    calibration_dir: Path | str | None,
    eval_dir: Path | str | None = None,
    precision: PrecisionRequest = "int8",
    max_accuracy_loss: float = DEFAULT_MAX_ACCURACY_LOSS,
    method: CalibrationRequest = "minmax",
    reduce_range: ReduceRangeRequest = "auto",
    fp16: bool | None = None,
    candidates: Collection[str] | None = None,
    min_eval_images: int = DEFAULT_MIN_EVAL_IMAGES,
    min_eval_boxes: int = DEFAULT_MIN_EVAL_BOXES,
    latency_runs: int = 50,
    created_at: datetime | None = None,
) -> PrecisionBuild:
    """Build an unsigned bundle directory at ``out_dir`` with FP32 and every candidate that passes the gate.

    ``fp16``: make the FP16 candidate under ``auto`` (``None``: when the providers include tensorrt/cuda);
    ``candidates``: try only these of the candidates ``precision`` selects (e.g. ``{"int8"}``: S8S8 only).
    """
    if not isinstance(spec, BundleSpec):
        spec = load_spec(spec)
    _check_arguments(precision, max_accuracy_loss, method, reduce_range, min_eval_images, min_eval_boxes)
    known = {c.name for c in CANDIDATES}
    if candidates is not None and not set(candidates) <= known:
        raise PrecisionUnavailableError(
            f"candidates must be among {', '.join(sorted(known))}, got {shown(sorted(set(candidates) - known))}"
        )
    _check_out_dir(Path(out_dir))
    # A spec whose pre/postprocess contradicts the model fails here, before minutes of calibration.
    semantics = resolve_semantics(spec)
    spec = semantics.spec
    if calibration_dir is None and precision in ("int8", "auto"):
        raise PrecisionUnavailableError(
            f"precision {precision} needs --calibration DIR: 200-500 images from the target environment"
        )
    if calibration_dir is None and precision == "fp16" and eval_dir is None:
        raise PrecisionUnavailableError(
            "precision fp16 needs --eval DIR (or --calibration DIR): held-out images to measure its agreement with FP32"
        )
    if calibration_dir is None and precision == "fp32":
        manifest = build_bundle(spec, out_dir, created_at=created_at)
        return PrecisionBuild(manifest, None, None, REFERENCE, semantics.warnings, hardware_class=hardware_class())

    log = current_logger(__name__)
    warnings: list[str] = list(semantics.warnings)
    calib = None
    if calibration_dir is not None:
        calib = load_image_set(calibration_dir, purpose="calibration")
        if calib.warning:
            warnings.append(calib.warning)
    if eval_dir is not None:
        evalset = load_image_set(eval_dir, purpose="evaluation", recommended=0)
        eval_label = "held-out"
    else:
        assert calib is not None  # fp16 without either was refused above
        evalset, eval_label = calib, "calibration"
        if precision != "fp32":
            warnings.append(
                "no --eval set: accuracy was measured on the calibration images, which flatters INT8; "
                "pass held-out images with --eval DIR"
            )
            log.warning("pipeline.eval_on_calibration_set", count=calib.count)

    wanted = tuple(
        c for c in _wanted_candidates(precision, spec.providers, fp16) if candidates is None or c.name in candidates
    )
    reference: ReferenceOutputs | None = None
    fallback: str | None = None
    if wanted:
        reference = reference_outputs(spec.model, evalset, spec.preprocess, spec.postprocess)
        refusal = evidence_refusal(reference, min_images=min_eval_images, min_boxes=min_eval_boxes)
        if refusal is not None:
            if precision != "auto":
                raise PrecisionUnavailableError(f"precision {precision}: {refusal}; or build with --precision fp32")
            fallback = f"no candidate was scored: {refusal}"
            wanted = ()
    use_reduce_range = reduce_range == "on" or (reduce_range == "auto" and reduce_range_recommended())
    methods: tuple[CalibrationMethodName, ...] = CALIBRATION_METHODS if method == "best" else (method,)

    with tempfile.TemporaryDirectory(prefix="edgefleet-precision-") as tmp:
        work = Path(tmp)
        made: list[_Made] = []
        for candidate in wanted:
            assert reference is not None
            if candidate.precision == "int8":
                assert calib is not None
                made.append(
                    _make_int8(candidate, spec, calib, reference, methods, use_reduce_range, max_accuracy_loss, work)
                )
            else:
                made.append(_make_fp16(spec, reference, max_accuracy_loss, work))
        for m in made:
            o = m.outcome
            log.info(
                "pipeline.candidate_scored",
                candidate=o.name,
                carried=o.carried,
                method=o.method,
                value=o.accuracy.value if o.accuracy else None,
                samples=o.accuracy.samples if o.accuracy else None,
                reference_boxes=o.accuracy.reference_boxes if o.accuracy else None,
                reason=o.reason,
            )
        carried = [m for m in made if m.outcome.carried]
        if wanted and not carried:
            if precision != "auto":
                _raise_none_passed(precision, made, max_accuracy_loss)
            fallback = "no candidate passed the accuracy gate: " + "; ".join(
                f"{m.outcome.name}: {m.outcome.reason}" for m in made
            )
        if fallback is not None:
            warnings.append(f"--precision auto: building FP32 only, {fallback}")
            log.warning("pipeline.precision_fallback", reason=fallback)

        extra: dict[str, Path] = {m.outcome.candidate.artifact: m.path for m in carried if m.path is not None}
        table_method: CalibrationMethodName | None = None
        run: CalibrationRun | None = None
        if calib is not None:
            run = _table_run(made, spec, calib, methods[0], work, warnings)
        if run is not None:
            table_method = run.method
            extra[TABLE_ROLE] = write_trt_calibration_table(run.ranges, work / "calibration.cache", method=run.method)

        hw = hardware_class()
        samples = _measure(
            spec, evalset, {REFERENCE: spec.model, **{m.outcome.name: m.path for m in carried if m.path}}, latency_runs
        )
        preferred = _preferred(precision, samples, carried, warnings)
        figures = {name: s.figures for name, s in samples.items()}
        sla = _sla_check(spec, preferred, samples[preferred], hw)
        if not sla.fits:
            warnings.append(sla.warning())
            log.warning("pipeline.sla_missed_on_builder", **sla.to_dict(), variant=preferred)
        outcomes = tuple(
            dataclasses.replace(m.outcome, latency=figures.get(m.outcome.name), preferred=m.outcome.name == preferred)
            for m in made
        )
        golden = {
            m.outcome.name: variant_golden_tolerance(m.path, semantics.cases, spec.canary.golden_tolerance)
            for m in carried
            if m.path is not None
        }
        variants = _variants(
            outcomes, figures, preferred, sla, fallback, evalset, eval_label, max_accuracy_loss, hw, calib, golden
        )
        calibration_section: dict[str, object] | None = None
        if calib is not None:
            calibration_section = calib.calibration_section(table_method or methods[0])
            calibration_section["evaluation"] = {
                "count": evalset.count,
                "sha256": evalset.sha256,
                "set": eval_label,
                **({"reference_boxes": reference.boxes} if reference and reference.boxes is not None else {}),
            }
            if run is not None:
                calibration_section.update(
                    {
                        "tensors": len(run.ranges),
                        "table": TABLE_ROLE,
                        "table_format": "tensorrt-native",
                        "coverage": round(run.coverage, 4),
                    }
                )
        spec = dataclasses.replace(spec, calibration=calibration_section, precision_variants=variants)
        # The golden inputs the tolerances were measured on are the ones the bundle carries.
        manifest = build_bundle(
            spec,
            out_dir,
            extra_artifacts=extra,
            golden_inputs=[case.inputs for case in semantics.cases],
            created_at=created_at,
        )
    log.info(
        "pipeline.bundle_built",
        bundle=manifest.ref,
        digest=manifest.digest,
        preferred=preferred,
        carried=sorted(variants),
        calibration_images=calib.count if calib else 0,
        evaluation_images=evalset.count,
    )
    best = _headline_accuracy(outcomes, preferred)
    return PrecisionBuild(
        manifest=manifest,
        calibration=calib,
        accuracy=best,
        preferred=preferred,
        warnings=tuple(warnings),
        evaluation=evalset,
        candidates=outcomes,
        fallback=fallback,
        latency=figures,
        sla=sla,
        hardware_class=hw,
    )


# ---------------------------------------------------------------------------------------- arguments


def _check_arguments(
    precision: str, max_loss: float, method: str, reduce_range: str, min_images: int, min_boxes: int
) -> None:
    if precision not in PRECISION_REQUESTS:
        raise PrecisionUnavailableError(
            f"precision must be one of {', '.join(PRECISION_REQUESTS)}, got {shown(precision)}"
        )
    if method not in CALIBRATION_REQUESTS:
        raise PrecisionUnavailableError(
            f"--calibration-method must be one of {', '.join(CALIBRATION_REQUESTS)}, got {shown(method)}"
        )
    if reduce_range not in REDUCE_RANGE_REQUESTS:
        raise PrecisionUnavailableError(
            f"--reduce-range must be one of {', '.join(REDUCE_RANGE_REQUESTS)}, got {shown(reduce_range)}"
        )
    if not 0.0 <= max_loss <= 1.0:
        raise PrecisionUnavailableError(
            f"--max-accuracy-loss must be a fraction in [0, 1] (0.01 = 1%), got {shown(max_loss)}"
        )
    if min_images < 1:
        raise PrecisionUnavailableError(f"--min-eval-images must be >= 1, got {shown(min_images)}")
    if min_boxes < 0:
        raise PrecisionUnavailableError(f"--min-eval-boxes must be >= 0, got {shown(min_boxes)}")


def _check_out_dir(out: Path) -> None:
    # build_bundle checks this too, but only after minutes of calibration.
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: exists and is not an empty directory; bundles are built into a fresh one")


def _wanted_candidates(precision: str, providers: Sequence[str], fp16: bool | None) -> tuple[Candidate, ...]:
    if precision == "fp32":
        return ()
    if precision == "int8":
        return (S8S8, U8S8)
    if precision == "fp16":
        return (FP16,)
    gpu = fp16 if fp16 is not None else bool(FP16_PROVIDERS.intersection(providers))
    return (S8S8, U8S8, FP16) if gpu else (S8S8, U8S8)


# --------------------------------------------------------------------------------------- candidates


def _make_int8(
    candidate: Candidate,
    spec: BundleSpec,
    calib: ImageSet,
    reference: ReferenceOutputs,
    methods: Sequence[CalibrationMethodName],
    reduce_range: bool,
    max_loss: float,
    work: Path,
) -> _Made:
    activation: ActivationType = "uint8" if candidate.activations == "uint8" else "int8"
    tried: dict[str, float | str] = {}
    scored: list[tuple[AccuracyReport, Path, CalibrationRun, str]] = []
    errors: list[str] = []
    for m in methods:
        out = work / f"{candidate.artifact}.{m}.onnx"
        try:
            quantized = quantize_int8(
                spec.model,
                calib,
                spec.preprocess,
                out,
                method=m,
                activation_type=activation,
                reduce_range=reduce_range,
            )
            report = score_candidate(reference, quantized.path, spec.preprocess, precision=candidate.name)
        except PipelineError as exc:
            tried[m] = str(exc)
            errors.append(f"{m}: {exc}")
            continue
        tried[m] = round(report.value, 6)
        scored.append((report, quantized.path, quantized.calibration, quantized.preprocessing))
    if not scored:
        return _Made(
            CandidateOutcome(candidate, False, reason="; ".join(errors), methods_tried=tried, reduce_range=reduce_range)
        )
    # Best agreement first; ties keep the order minmax, entropy, percentile (sort is stable).
    ranked = sorted(scored, key=lambda s: -s[0].value)
    report, path, run, route = ranked[0]
    reason = loss_refusal(report, max_loss)
    if reason is not None and len(methods) > 1:
        reason += f" (best of {', '.join(methods)})"
    outcome = CandidateOutcome(
        candidate,
        carried=reason is None,
        reason=reason,
        accuracy=report,
        method=run.method,
        methods_tried=tried,
        reduce_range=reduce_range,
        preprocessing=route,
    )
    return _Made(outcome, path, run)


def _make_fp16(spec: BundleSpec, reference: ReferenceOutputs, max_loss: float, work: Path) -> _Made:
    try:
        path = convert_fp16(spec.model, work / f"{FP16_ROLE}.onnx")
        report = score_candidate(reference, path, spec.preprocess, precision=FP16.name)
    except PipelineError as exc:
        return _Made(CandidateOutcome(FP16, False, reason=str(exc)))
    reason = loss_refusal(report, max_loss)
    return _Made(CandidateOutcome(FP16, reason is None, reason=reason, accuracy=report), path)


def _raise_none_passed(precision: str, made: Sequence[_Made], max_loss: float) -> None:
    detail = "; ".join(f"{m.outcome.name} ({m.outcome.candidate.label}): {m.outcome.reason}" for m in made)
    message = (
        f"precision {precision}: no {precision.upper()} candidate passed the accuracy gate: {detail}; {LOSS_ADVICE}"
    )
    reports = [m.outcome.accuracy for m in made if m.outcome.accuracy is not None]
    if reports:
        best = max(reports, key=lambda r: r.value)
        raise AccuracyLossError(message, report=best, max_loss=max_loss)
    raise PrecisionUnavailableError(message)


def _table_run(
    made: Sequence[_Made],
    spec: BundleSpec,
    calib: ImageSet,
    method: CalibrationMethodName,
    work: Path,
    warnings: list[str],
) -> CalibrationRun | None:
    """The calibration run the TensorRT table is written from: the S8S8 candidate's, else any, else a new one."""
    runs = [m.run for m in made if m.run is not None and m.outcome.candidate == S8S8 and m.outcome.carried]
    runs += [m.run for m in made if m.run is not None]
    if runs:
        return runs[0]
    try:
        prepared = prepare_for_quantization(spec.model, work / "prepared.onnx")
        return calibrate(prepared, calib, spec.preprocess, method=method, work_dir=work, reference_model=spec.model)
    except PipelineError as exc:
        warnings.append(f"no TensorRT calibration table: {exc}")
        return None


# ---------------------------------------------------------------------------------------- measuring


def _measure(spec: BundleSpec, evalset: ImageSet, variants: Mapping[str, Path], runs: int) -> dict[str, LatencySamples]:
    sample = Normaliser(spec.preprocess)(read_image(evalset.paths[0]))[0]
    return measure_samples(variants, {model_input_name(spec.model): sample}, runs=runs)


def _preferred(
    precision: str, samples: Mapping[str, LatencySamples], carried: Sequence[_Made], warnings: list[str]
) -> str:
    figures = {name: s.figures for name, s in samples.items()}
    names = [m.outcome.name for m in carried]
    if precision == "auto":
        return select_precision(figures, hardware_class=hardware_class()).chosen
    if not names:
        return REFERENCE
    # An explicit precision is what the publisher asked for: its fastest candidate here, even if FP32 is faster.
    chosen = min(names, key=lambda n: figures[n].p50_ms)
    if figures[chosen].p50_ms > figures[REFERENCE].p50_ms:
        warnings.append(
            f"{chosen} p50 {figures[chosen].p50_ms:.2f} ms is slower than fp32 {figures[REFERENCE].p50_ms:.2f} ms "
            "on this builder; a device measures again and serves fp32 where it is faster (--precision auto "
            "prefers the fastest)"
        )
    return chosen


def _sla_check(spec: BundleSpec, variant: str, samples: LatencySamples, hw: str) -> SlaCheck:
    pct = spec.latency.percentile
    return SlaCheck(
        variant=variant,
        percentile=pct,
        measured_ms=samples.percentile_ms(pct),
        sla_ms=spec.latency.sla_ms,
        headroom=spec.canary.headroom,
        budget_ms=budget_ms(spec.latency.sla_ms, spec.canary.headroom, 0.0),
        hardware_class=hw,
    )


# ------------------------------------------------------------------------------------------ metrics


def variant_golden_tolerance(
    model: Path, cases: Sequence[GoldenCase], base: GoldenTolerance, *, margin: float = GOLDEN_MARGIN
) -> dict[str, object]:
    """The golden tolerance of the variant ``model``, from its deviation from FP32 on the golden ``cases``.

    ``cases``: the bundle's golden inputs with FP32's outputs; ``base``: the bundle's ``canary.golden_tolerance``.
    Returns the ``metrics.golden_tolerance`` value: ``atol = max(base.atol, margin × max abs deviation)``
    (rounded up), ``rtol = base.rtol``, and the figures it rests on (see the module docstring for why).
    """
    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        deviation = 0.0
        for case in cases:
            for name, got in zip(names, session.run(names, dict(case.inputs)), strict=True):
                want = case.outputs.get(name)
                if want is None or not want.size:
                    continue
                diff = np.asarray(got, np.float64).reshape(want.shape) - want.astype(np.float64)
                deviation = max(deviation, float(np.max(np.abs(diff))))
    except Exception as exc:  # onnxruntime raises its own untyped exceptions; reshape a ValueError
        raise PipelineError(
            f"variant {model.name}: cannot be run on the golden inputs to measure its golden tolerance: {exc}"
        ) from None
    if not math.isfinite(deviation):
        raise PipelineError(
            f"variant {model.name}: its outputs on the golden inputs are not finite (max abs deviation from FP32 "
            f"{deviation}); rebuild it with another calibration method or set"
        )
    # Rounded UP to 1e-6: the recorded tolerance never sits below what the rule asks for.
    atol = max(base.atol, math.ceil(margin * deviation * 1e6) / 1e6)
    return {
        "atol": atol,
        "rtol": base.rtol,
        "max_abs_deviation": round(deviation, 8),
        "margin": margin,
        "cases": len(cases),
        "measured_by": "builder",
    }


def _variants(
    outcomes: Sequence[CandidateOutcome],
    figures: Mapping[str, LatencyFigures],
    preferred: str,
    sla: SlaCheck,
    fallback: str | None,
    evalset: ImageSet,
    eval_label: str,
    max_loss: float,
    hw: str,
    calib: ImageSet | None,
    golden: Mapping[str, Mapping[str, object]],
) -> dict[str, PrecisionVariant]:
    def latency(name: str) -> dict[str, object]:
        return {**figures[name].to_dict(), "hardware_class": hw, "measured_by": "builder"}

    fp32: dict[str, object] = {
        "preferred": preferred == REFERENCE,
        "reference": True,
        "activation_type": "float32",
        "weight_type": "float32",
        "latency": latency(REFERENCE),
    }
    refused = {o.name: o.reason or "" for o in outcomes if not o.carried}
    if refused:
        fp32["refused"] = refused
    if fallback is not None:
        fp32["fallback_reason"] = fallback
    variants = {REFERENCE: PrecisionVariant(MODEL_ROLE, REFERENCE, fp32)}
    for o in outcomes:
        if not o.carried or o.accuracy is None:
            continue
        c = o.candidate
        metrics: dict[str, object] = {
            "preferred": preferred == o.name,
            "activation_type": c.activations,
            "weight_type": c.weights,
            "accuracy_eval_set": eval_label,
            "accuracy_eval_sha256": evalset.sha256,
            "accuracy_passed": True,
            "max_accuracy_loss": max_loss,
            **o.accuracy.to_metrics(),
            "latency": latency(o.name),
            "speedup_vs_fp32": round(figures[REFERENCE].p50_ms / figures[o.name].p50_ms, 4),
        }
        if o.name in golden:
            metrics[GOLDEN_TOLERANCE_KEY] = dict(golden[o.name])
        if c.precision == "int8":
            metrics.update(
                {
                    "quant_format": "qdq",
                    "per_channel": True,
                    "reduce_range": o.reduce_range,
                    "calibration_method": o.method,
                    "calibration_methods_tried": dict(o.methods_tried),
                    "calibration_images": calib.count if calib else 0,
                    "preprocessing": o.preprocessing,
                }
            )
        variants[o.name] = PrecisionVariant(c.artifact, c.precision, metrics)
    pick = dict(variants[preferred].metrics)
    pick["builder_sla"] = sla.to_dict()
    variants[preferred] = dataclasses.replace(variants[preferred], metrics=pick)
    return variants


def _headline_accuracy(outcomes: Sequence[CandidateOutcome], preferred: str) -> AccuracyReport | None:
    for o in outcomes:
        if o.name == preferred and o.accuracy is not None:
            return o.accuracy
    reports = [o.accuracy for o in outcomes if o.accuracy is not None]
    return max(reports, key=lambda r: r.value) if reports else None
