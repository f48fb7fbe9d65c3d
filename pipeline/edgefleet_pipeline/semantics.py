"""Build-time semantic checks of a bundle spec against its model: what the builder learns by running the model
(onnxruntime, CPU) on the golden inputs before it writes anything, so that a bundle a device would refuse at
staging, or misread in every canary, is never built and signed.

Owns:
- the tensors bundle.json declares (the model's, or the spec's ``inputs``/``outputs`` checked against them)
  and the golden inputs (given, or seeded random images normalised by the device's own arithmetic);
- input layout and size vs the model's first input, where its dims are static (in the spec's ``inputs`` or
  the model) or an Ultralytics export states its ``imgsz``: ``preprocess.size`` is [height, width];
- ``postprocess.kind`` vs the first output's shape on the golden inputs (the output a device decodes):
  classification ``[1, C]``, yolov8 ``[1, 4+C, A]``, yolov5 ``[1, A, 5+C]``, with C = ``len(labels)``;
- ``postprocess.softmax`` for classifiers: a spec that leaves it out gets false when the outputs are already
  probabilities and true otherwise; an explicit true on probabilities (a double softmax) is refused.

Decisions:
- Contradictions are refused (``BundleFormatError``, naming the tensor, its shape, what the kind or the
  preprocess expects and the fix). Settings that may be deliberate are warnings: a dynamic model run at a size
  other than its export's ``imgsz``, ``softmax: false`` on logits.
- Outputs are probabilities when, on every golden input, every value lies in [0, 1] and each row sums to 1
  within ``PROBABILITY_TOLERANCE``: random inputs are where an un-normalised model is least likely to pass by
  chance, and one row that fails settles it.
- The two YOLO layouts, both rank 3, are told apart by C = ``len(labels)`` (yolov8's rows are 4+C, yolov5's
  columns 5+C) and, without labels, by the longer axis being the anchors; a transposed layout is named.
- Everything here is pure but ``resolve_semantics`` (which loads and runs the model); the check functions
  take shapes and arrays, so they are table-tested without a model.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from edgefleet.contract.bundle_sections import TENSOR_DTYPES, Dim, Preprocess, TensorSpec
from edgefleet.contract.bundle_spec import BundleSpec
from edgefleet.contract.errors import BundleFormatError
from edgefleet.contract.golden import GoldenCase
from edgefleet.contract.processing.postprocess import softmax as softmax_of
from edgefleet.contract.processing.preprocess import Normaliser
from edgefleet.contract.shown import shown

GOLDEN_SEED = 20240601
#: How far a probability row's sum may be from 1 (float32 softmax rows sum to 1 within ~1e-6).
PROBABILITY_TOLERANCE = 1e-3
#: The metadata key Ultralytics writes its export size under (``[height, width]``).
IMGSZ_KEY = "imgsz"

GoldenInputs = Sequence[Mapping[str, NDArray[np.generic]]]
Shape = Sequence[int]

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}
_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class SemanticReport:
    """What running the model decided: ``spec`` resolved (``spec.resolved`` is true), the tensors bundle.json
    declares, the golden cases (inputs and reference outputs), and what was decided (``notes``) or looks
    doubtful without being wrong (``warnings``), one sentence each."""

    spec: BundleSpec
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    cases: tuple[GoldenCase, ...]
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


# --- tensors and golden inputs -------------------------------------------------------------------------------


def model_tensors(args: Sequence[ort.NodeArg]) -> tuple[TensorSpec, ...]:
    """A session's inputs or outputs as bundle.json declares tensors."""
    specs = []
    for arg in args:
        dtype = _ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise BundleFormatError(f"model: tensor '{arg.name}' has unsupported type {arg.type}")
        # Exporters name dynamic dims freely ("DynamicDimension.0", "batch_size"); keep only names that
        # bundle.json accepts and turn the rest into -1.
        shape: list[Dim] = [
            d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and _DIM_NAME.match(d) else -1)
            for d in arg.shape
        ]
        specs.append(TensorSpec(arg.name, dtype, tuple(shape)))
    return tuple(specs)


def check_declared(kind: str, declared: tuple[TensorSpec, ...], actual: tuple[TensorSpec, ...]) -> None:
    """The spec's ``inputs``/``outputs`` must name the model's tensors in order, with their dtypes, and agree
    with every static dim."""
    by_name = {t.name: t for t in actual}
    if [t.name for t in declared] != [t.name for t in actual]:
        raise BundleFormatError(
            f"spec: {kind} names {[t.name for t in declared]} differ from the model's {[t.name for t in actual]}"
        )
    for spec in declared:
        real = by_name[spec.name]
        if spec.dtype != real.dtype:
            raise BundleFormatError(
                f"spec: {kind} '{spec.name}' dtype {spec.dtype!r} differs from the model's {real.dtype!r}"
            )
        fixed_mismatch = len(spec.shape) != len(real.shape) or any(
            isinstance(a, int) and a > 0 and isinstance(b, int) and b > 0 and a != b
            for a, b in zip(spec.shape, real.shape, strict=False)
        )
        if fixed_mismatch:
            raise BundleFormatError(
                f"spec: {kind} '{spec.name}' shape {list(spec.shape)} differs from the model's {list(real.shape)}"
            )


def generate_golden_inputs(
    inputs: Sequence[TensorSpec], preprocess: Preprocess, count: int, *, seed: int = GOLDEN_SEED
) -> list[dict[str, NDArray[np.generic]]]:
    """``count`` seeded input sets with batch 1: image inputs get random BGR pixels normalised as a device
    normalises its frames."""
    rng = np.random.default_rng(seed)
    normalise = Normaliser(preprocess)  # the device's own arithmetic (edgefleet.contract.processing)
    cases: list[dict[str, NDArray[np.generic]]] = []
    for _ in range(count):
        case: dict[str, NDArray[np.generic]] = {}
        for spec in inputs:
            if len(spec.shape) == 4:
                pixels = rng.integers(0, 256, size=(preprocess.height, preprocess.width, 3), dtype=np.uint8)
                case[spec.name] = normalise.to_tensor(pixels)
            else:
                shape = [1 if i == 0 or not (isinstance(d, int) and d > 0) else d for i, d in enumerate(spec.shape)]
                case[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        cases.append(case)
    return cases


# --- input layout and size -----------------------------------------------------------------------------------


def _static(dim: Dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def merged_shape(declared: TensorSpec | None, model: TensorSpec) -> tuple[Dim, ...]:
    """The input's shape with every dim that either the spec or the model fixes (they agree where both do)."""
    if declared is None or len(declared.shape) != len(model.shape):
        return model.shape
    return tuple(d if _static(d) is not None else m for d, m in zip(declared.shape, model.shape, strict=True))


def parse_imgsz(value: str | None) -> tuple[int, int] | None:
    """Ultralytics' ``imgsz`` metadata (``'[320, 320]'`` as [height, width], or ``'640'`` for a square)."""
    if value is None:
        return None
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None
    if isinstance(parsed, int) and not isinstance(parsed, bool) and parsed > 0:
        return (parsed, parsed)
    if (
        isinstance(parsed, list | tuple)
        and len(parsed) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in parsed)
    ):
        return (parsed[0], parsed[1])
    return None


def _hw(dims: Sequence[int | None]) -> str:
    """A shape as people read it: ``[?, 3, 48, 192]`` with ``?`` for a dynamic dim."""
    return f"[{', '.join('?' if v is None else str(v) for v in dims)}]"


def check_input_dtype(pre: Preprocess, tensor: TensorSpec) -> None:
    """A rank-4 image input must take the dtype ``preprocess.dtype`` produces."""
    if len(tensor.shape) == 4 and tensor.dtype != pre.dtype:
        fix = (
            f"set preprocess.dtype: {tensor.dtype}"
            if tensor.dtype in TENSOR_DTYPES
            else f"preprocess produces {', '.join(TENSOR_DTYPES)} tensors: export the model for one of them"
        )
        raise BundleFormatError(
            f"spec: preprocess.dtype is {shown(pre.dtype)} but the model's input {shown(tensor.name)} takes "
            f"{tensor.dtype}; {fix}"
        )


def check_input(
    pre: Preprocess, name: str, shape: Sequence[Dim], *, imgsz: tuple[int, int] | None = None
) -> tuple[list[str], list[str]]:
    """Check ``preprocess.layout`` and ``preprocess.size`` against a rank-4 image input's ``shape``; return
    ``(notes, warnings)`` or raise ``BundleFormatError``. ``imgsz`` is the export's own [height, width]
    (Ultralytics metadata), used where the model's height and width are dynamic."""
    notes: list[str] = []
    warnings: list[str] = []
    shown_shape = _hw([_static(d) for d in shape])
    if len(shape) != 4:
        return notes, warnings
    size = [pre.height, pre.width]
    channels_first, channels_last = _static(shape[1]), _static(shape[3])
    channel = channels_first if pre.layout == "nchw" else channels_last
    other = channels_last if pre.layout == "nchw" else channels_first
    other_layout = "nhwc" if pre.layout == "nchw" else "nchw"
    if channel is not None and channel != 3:
        fix = (
            f"set preprocess.layout: {other_layout}"
            if other == 3
            else "preprocess produces 3-channel images: export the model for 3 input channels"
        )
        raise BundleFormatError(
            f"spec: preprocess.layout is {pre.layout!r} (channels on axis {1 if pre.layout == 'nchw' else 3}) but "
            f"the model's input {shown(name)} {shown_shape} has {channel} there; {fix}"
        )
    h_axis, w_axis = (2, 3) if pre.layout == "nchw" else (1, 2)
    model_hw = [_static(shape[h_axis]), _static(shape[w_axis])]
    if model_hw[0] is not None or model_hw[1] is not None:
        mismatch = any(m is not None and m != s for m, s in zip(model_hw, size, strict=True))
        if mismatch:
            raise BundleFormatError(
                f"spec: preprocess.size is [height, width] = {size} but the model's input {shown(name)} "
                f"{shown_shape} ({pre.layout}) takes height x width {_hw(model_hw)}; " + _size_fix(size, model_hw)
            )
        notes.append(f"preprocess.size [height, width] = {size} matches the model's input {shown(name)} {shown_shape}")
        return notes, warnings
    if imgsz is not None:
        if size != list(imgsz):
            if size == [imgsz[1], imgsz[0]]:
                raise BundleFormatError(
                    f"spec: preprocess.size is [height, width] = {size} but the model was exported for "
                    f"imgsz [height, width] = {list(imgsz)} (its metadata); the size is transposed: "
                    f"use size: {list(imgsz)}"
                )
            warnings.append(
                f"preprocess.size [height, width] = {size} differs from the export's imgsz {list(imgsz)} "
                f"(model metadata); the model's input {shown(name)} {shown_shape} accepts it, but accuracy "
                f"at another size is not what was trained"
            )
        else:
            notes.append(f"preprocess.size [height, width] = {size} matches the export's imgsz (model metadata)")
        return notes, warnings
    notes.append(
        f"preprocess.size is taken as [height, width] = {size} ({size[0]} high, {size[1]} wide); the model's "
        f"input {shown(name)} {shown_shape} has dynamic height and width, so it cannot be checked against "
        f"the model (declare 'inputs' with static dims to have it checked)"
    )
    return notes, warnings


def _size_fix(size: list[int], model_hw: list[int | None]) -> str:
    h, w = model_hw
    if h is not None and w is not None and size == [w, h]:
        return f"the size is transposed: use size: [{h}, {w}]"
    wanted = [h if h is not None else size[0], w if w is not None else size[1]]
    return f"use size: {wanted}"


# --- postprocess kind vs output shape ------------------------------------------------------------------------

_LAYOUTS = {"classification": "[1, C]", "yolov8": "[1, 4+C, A]", "yolov5": "[1, A, 5+C]"}
_EXPECTS = {
    "classification": "[1, C] (one score per class)",
    "yolov8": "[1, 4+C, A] (box and C class scores per anchor, anchors last)",
    "yolov5": "[1, A, 5+C] (a row of box, objectness and C class scores per anchor)",
}


def looks_like(shape: Shape, classes: int | None = None) -> str | None:
    """Which postprocess kind a batch-1 output ``shape`` fits (``None``: none), by its layout and, when
    known, the number of ``classes``: rank 3 is yolov8 when its rows are 4+C, yolov5 when its columns are
    5+C; without C, by which axis is longer (there are more anchors than scores per anchor)."""
    if len(shape) >= 2 and shape[0] == 1 and all(d == 1 for d in shape[2:]):
        return "classification" if classes is None or shape[1] == classes else None
    if len(shape) != 3 or shape[0] != 1:
        return None
    rows, cols = shape[1], shape[2]
    if classes is not None:
        return "yolov8" if rows == 4 + classes else "yolov5" if cols == 5 + classes else None
    if cols > rows >= 5:
        return "yolov8"
    if rows > cols >= 6:
        return "yolov5"
    return None


def _classes(kind: str, dims: Sequence[int]) -> int:
    """How many classes ``kind`` would read from a batch-1 output (0 where its rank does not fit)."""
    if kind == "classification":
        return dims[1] if len(dims) >= 2 else 0
    if len(dims) != 3:
        return 0
    return dims[1] - 4 if kind == "yolov8" else dims[2] - 5


def check_output_kind(kind: str, name: str, shape: Shape, labels: Sequence[str]) -> str:
    """The first output's batch-1 ``shape`` must be what ``kind`` decodes, with C = ``len(labels)`` classes
    when labels are given: a note saying so, or ``BundleFormatError`` naming the output, its shape, what the
    kind expects and the fix."""
    dims = list(shape)
    n = len(labels) if labels else None
    head = f"spec: postprocess.kind {shown(kind)} expects the first output as {_EXPECTS[kind]}, but the model's"
    where = f"output {shown(name)} is {dims}"
    fits = looks_like(shape, n)
    own = _classes(kind, dims)
    if fits != kind:
        layout = looks_like(shape)  # the layout alone, for a labels count that fits no kind
        if fits is not None:
            fix = f"that is a {fits} layout {_LAYOUTS[fits]}: use postprocess.kind {shown(fits)}"
        elif n is not None and len(dims) == 3 and dims[0] == 1 and dims[2] == 4 + n:
            fix = (
                f"that matches a transposed YOLOv8 output [1, A, 4+C] with C={n}: export it untransposed "
                "([1, 4+C, A]) and use postprocess.kind 'yolov8'"
            )
        elif n is not None and (layout == kind or (layout is None and kind != "classification" and own > 0)):
            fix = (
                f"that is {own} classes, but 'labels' has {n}: fix 'labels' (one per class, in output order) "
                "or 'postprocess.kind'"
            )
        elif layout is not None and layout != kind:
            fix = f"that is a {layout} layout {_LAYOUTS[layout]}: use postprocess.kind {shown(layout)}"
        else:
            fix = "check that the model is the one meant and that 'labels' has one entry per class"
        raise BundleFormatError(f"{head} {where}; {fix}")
    return f"postprocess.kind {shown(kind)} fits output {shown(name)} {dims}: {_LAYOUTS[kind]} with C={own}"


# --- softmax resolution --------------------------------------------------------------------------------------


def are_probabilities(outputs: Sequence[NDArray[Any]], *, tolerance: float = PROBABILITY_TOLERANCE) -> bool:
    """Whether every row (last axis) of every output lies in [0, 1] and sums to 1 within ``tolerance``."""
    if not outputs:
        return False
    for out in outputs:
        rows = np.asarray(out, np.float64).reshape(-1, np.shape(out)[-1] if np.ndim(out) else 1)
        if rows.size == 0 or not np.all(np.isfinite(rows)):
            return False
        if rows.min() < -tolerance or rows.max() > 1.0 + tolerance:
            return False
        if np.any(np.abs(rows.sum(axis=-1) - 1.0) > tolerance):
            return False
    return True


def resolve_softmax(
    declared: bool | None, outputs: Sequence[NDArray[Any]], name: str
) -> tuple[bool, list[str], list[str]]:
    """Decide a classifier's ``softmax`` from its first output on the golden inputs: ``(softmax, notes,
    warnings)``, or ``BundleFormatError`` for ``softmax: true`` on outputs that are already probabilities."""
    if are_probabilities(outputs):
        if declared is True:
            before, after = _double_softmax_example(outputs)
            raise BundleFormatError(
                f"spec: postprocess.softmax is true but the model's output {shown(name)} is already "
                f"probabilities (every row in [0, 1], summing to 1 within {PROBABILITY_TOLERANCE} on all "
                f"{len(outputs)} golden inputs): a double softmax would flatten every confidence (top "
                f"confidence {before:.4f} would become {after:.4f}) and shift confidence histograms and drift "
                f"baselines; set softmax: false or leave it out (the build then decides)"
            )
        if declared is None:
            return False, [f"postprocess.softmax resolved to false: output {shown(name)} is already probabilities"], []
        return False, [], []
    if declared is False:
        return (
            False,
            [],
            [
                f"postprocess.softmax is false but output {shown(name)} is not probabilities (rows outside [0, 1] "
                "or not summing to 1): confidences will be raw scores, clamped to [0, 1] in histograms"
            ],
        )
    warnings = []
    if all(np.shape(o)[-1:] == (1,) for o in outputs):
        warnings.append(
            f"output {shown(name)} has one class: a softmax over one score is always 1.0, so every confidence "
            "will be 1.0; export a one-score (sigmoid) classifier with two outputs (1 - p, p) instead"
        )
    if declared is None:
        notes = [f"postprocess.softmax resolved to true: output {shown(name)} is logits, not probabilities"]
        return True, notes, warnings
    return True, [], warnings


def _double_softmax_example(outputs: Sequence[NDArray[Any]]) -> tuple[float, float]:
    """The most confident golden case's top probability, and what a second softmax makes of it."""
    rows = [np.asarray(o, np.float32).reshape(-1) for o in outputs]
    best = max(rows, key=lambda r: float(r.max()))
    return float(best.max()), float(softmax_of(best).max())


# --- the whole check -----------------------------------------------------------------------------------------


def load_session(spec: BundleSpec) -> ort.InferenceSession:
    """The spec's model on onnxruntime's CPU provider, the builder's reference."""
    if not spec.model.is_file():
        raise BundleFormatError(f"spec: field 'model' points to {spec.model}, which does not exist")
    try:
        return ort.InferenceSession(str(spec.model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions for a bad model
        raise BundleFormatError(f"spec: model {spec.model} cannot be loaded by onnxruntime: {exc}") from None


def resolve_semantics(
    spec: BundleSpec,
    *,
    session: ort.InferenceSession | None = None,
    golden_inputs: GoldenInputs | None = None,
    golden_count: int = 4,
) -> SemanticReport:
    """Run ``spec``'s model (``session``, or the model on the CPU provider) on the golden inputs (given, or
    ``golden_count`` generated from ``spec.preprocess``), check the spec against what it computes, and return
    the spec resolved with what was decided; ``BundleFormatError`` for a contradiction."""
    if session is None:
        session = load_session(spec)
    notes: list[str] = []
    warnings: list[str] = []
    model_inputs = model_tensors(session.get_inputs())
    model_outputs = model_tensors(session.get_outputs())
    if not model_inputs or not model_outputs:
        raise BundleFormatError(f"spec: model {spec.model} has no inputs or no outputs; a bundle needs both")
    inputs, outputs = model_inputs, model_outputs
    if spec.inputs is not None:
        check_declared("inputs", spec.inputs, model_inputs)
        inputs = spec.inputs
    if spec.outputs is not None:
        check_declared("outputs", spec.outputs, model_outputs)
        outputs = spec.outputs

    image = model_inputs[0]
    declared = spec.inputs[0] if spec.inputs else None
    imgsz = parse_imgsz(session.get_modelmeta().custom_metadata_map.get(IMGSZ_KEY))
    check_input_dtype(spec.preprocess, image)
    more_notes, more_warnings = check_input(spec.preprocess, image.name, merged_shape(declared, image), imgsz=imgsz)
    notes += more_notes
    warnings += more_warnings

    if golden_inputs is None:
        if golden_count < 1:
            raise BundleFormatError(f"golden_count must be >= 1, got {golden_count}")
        golden_inputs = generate_golden_inputs(inputs, spec.preprocess, golden_count)
    output_names = [o.name for o in outputs]
    cases = []
    for case_inputs in golden_inputs:
        try:
            results = session.run(output_names, dict(case_inputs))
        except Exception as exc:  # onnxruntime's errors are untyped
            raise BundleFormatError(f"golden inputs: the model refused them: {exc}") from None
        cases.append(GoldenCase(dict(case_inputs), dict(zip(output_names, results, strict=True))))
    if not cases:
        raise BundleFormatError("golden inputs: at least one case is required")

    first = output_names[0]
    firsts = [np.asarray(case.outputs[first]) for case in cases]
    post = spec.postprocess
    notes.append(check_output_kind(post.kind, first, firsts[0].shape, spec.labels))
    softmax = True if post.softmax is None else post.softmax
    if post.kind == "classification":
        softmax, more_notes, more_warnings = resolve_softmax(post.softmax, firsts, first)
        notes += more_notes
        warnings += more_warnings
    resolved = dataclasses.replace(spec, postprocess=dataclasses.replace(post, softmax=softmax))
    return SemanticReport(
        spec=resolved,
        inputs=inputs,
        outputs=outputs,
        cases=tuple(cases),
        notes=tuple(notes),
        warnings=tuple(warnings),
    )
