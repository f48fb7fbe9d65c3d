"""Static INT8 quantization with onnxruntime: shape pre-processing, one calibration run, a QDQ model, and the
ranges it used.

Steps: ``prepare_model`` (shape inference, see the fallback chain below) → one calibration run with
``create_calibrator`` + ``collect_data`` + ``compute_data`` over the calibration images → the ranges are saved
with ORT's own ``save_tensors_data`` and handed to ``quantize_static(calibration_cache_path=...)``, which then
skips its own calibration. The same ranges feed the TensorRT calibration table (``trt_table.py``), so the QDQ
model and the table come from the SAME run over the same images.

Decisions:
- Pre-processing falls back through three routes and says which one it took (``PreparedModel.route``, log
  ``quantize.prepared``): ``symbolic`` (ORT's symbolic shape inference, then ONNX's) → ``onnx-shapes`` (ONNX
  shape inference only, ``skip_symbolic_shape=True``) → ``fixed-batch`` (the batch dim and symbolic spatial dims
  of the input fixed to 1 and the preprocess size, stale ``value_info`` dropped, then ONNX shape inference).
  Real exports need the fallback: ORT's symbolic inference stops at an Ultralytics YOLOv8n's
  ``/model.11/Concat`` ("Incomplete symbolic shape inference") and asserts on a paddle2onnx classifier's shape
  ``Concat`` (axis != 0). ONNX shape inference alone handles both; the QDQ model keeps the dynamic input. The
  ``fixed-batch`` model has a batch-1 input, which is what devices feed. When every route fails, the error
  names the failing node and op (from ORT's traceback or log, or ONNX's strict shape inference) and what to try.
- paddle2onnx writes every weight as a ``Constant`` node; ORT quantizes only initializers as weights, so
  ``prepare_model`` moves tensor Constants to initializers of the same name (tensor names, and so the
  TensorRT table, are unchanged). Per-channel weights need DequantizeLinear's ``axis`` (opset 13); ORT's
  quantizer writes it into an opset-11 model without raising the opset and onnxruntime then refuses the
  model, so ``quantize_int8`` converts such a model to opset 13 first, or quantizes weights per tensor (log
  ``quantize.per_tensor_weights``, ``QuantizedModel.per_channel`` False) when the converter cannot.
- The symbolic route drives ORT's ``SymbolicShapeInference`` loop itself instead of calling its
  ``infer_shapes``: on failure that one saves a debug model (plus an external data file) into the CURRENT
  directory, and it does not say at which node it stopped.
- ``skip_optimization=True`` by default: ORT's optimizer renames about a third of the tensors of a Conv+BN
  network (fusions), and the TensorRT table must name the tensors of the FP32 model the TensorRT path builds
  from — the bundle's ``model`` artifact, unchanged. ORT still fuses and optimises the QDQ model when a session
  loads it. ``optimize=True`` is there for models that quantize badly unfused; the table then covers only the
  names both graphs share (``CalibrationRun.coverage`` says how many).
- The float tail stays float: nodes between the last Conv/MatMul/Gemm and the graph outputs (a YOLO
  head's Sigmoid/Split/Mul/Add/Concat decode, a classifier's Softmax) are excluded from quantization. One
  INT8 scale for a Concat of box pixels (0..640) and class scores (0..1) rounds every score to 0; in a
  trial the generated YOLOv8 detector's INT8 mAP@0.5 against FP32 was 0.0 with the tail quantized.
- QDQ format, per-channel ``QInt8`` weights, and two activation types, both candidates: ``int8`` (S8S8,
  what TensorRT consumes and ORT recommends for QDQ on ARM and VNNI x86) and ``uint8`` (U8S8). Which is faster
  on a CPU is measured, not assumed: on one x86 builder a YOLOv8n ran U8S8 7.8 ms, FP32 24.9 ms, S8S8 44.3 ms.
- ``reduce_range`` (7-bit weights) is for U8S8 on x86 without VNNI, where ORT's u8s8 kernels can saturate
  the 16-bit intermediate sums; ``cpu_features.reduce_range_recommended()`` says when.
- ORT's calibration prints progress with ``print``/tqdm; every ORT call here runs with stdout redirected to
  stderr, so a command's stdout carries only its own output (``-o json`` stays parseable).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgefleet.contract.bundle_sections import Preprocess
from edgefleet.contract.shown import shown
from edgefleet.logging import current_logger
from edgefleet_pipeline.calibration import ImageSet, ImageSetReader
from edgefleet_pipeline.errors import QuantizationError

CalibrationMethodName = Literal["minmax", "entropy", "percentile"]
ActivationType = Literal["int8", "uint8"]
PreprocessingRoute = Literal["symbolic", "onnx-shapes", "fixed-batch"]
CALIBRATION_METHODS: tuple[CalibrationMethodName, ...] = ("minmax", "entropy", "percentile")
#: The pre-processing routes in the order they are tried.
PREPROCESSING_ROUTES: tuple[PreprocessingRoute, ...] = ("symbolic", "onnx-shapes", "fixed-batch")
_ORT_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_ACTIVATION_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
_SYMBOLIC_LOGGER = "onnxruntime.tools.symbolic_shape_infer"
_WHAT_TO_TRY = (
    "try: re-export the model with a fixed batch size (1) and opset 17 using standard ONNX ops, "
    "or build with --precision fp32"
)


@dataclass(frozen=True)
class CalibrationRun:
    """The ranges one calibration run measured: ``{tensor: (lowest, highest)}`` and how they were found."""

    method: CalibrationMethodName
    ranges: Mapping[str, tuple[float, float]]
    images: int
    model_tensors: int
    tensors_data: Any  # onnxruntime.quantization.calibrate.TensorsData, kept for quantize_static

    @property
    def coverage(self) -> float:
        """Share of the FP32 model's node outputs (and inputs) that have a range."""
        return len(self.ranges) / self.model_tensors if self.model_tensors else 0.0


@dataclass(frozen=True)
class PreparedModel:
    """A model ready for calibration: where it was written, the route that worked, and why earlier ones failed.

    ``attempts`` holds one line per route that failed before ``route``, e.g.
    ``"symbolic: Incomplete symbolic shape inference (stopped at node '/model.11/Concat', op Concat)"``.
    """

    path: Path
    route: PreprocessingRoute
    attempts: tuple[str, ...]


@dataclass(frozen=True)
class QuantizedModel:
    """The QDQ INT8 model written by ``quantize_int8``, the calibration run behind it and how it was made.

    ``preprocessing`` is the ``PreparedModel.route`` the model went through.
    """

    path: Path
    calibration: CalibrationRun
    activation_type: ActivationType
    reduce_range: bool
    preprocessing: PreprocessingRoute
    per_channel: bool


@dataclass(frozen=True)
class _Node:
    name: str
    op_type: str

    def __str__(self) -> str:
        return f"node {shown(self.name)}, op {self.op_type}"


class _RouteFailed(Exception):
    """One pre-processing route failed: why, and the node it failed at when known."""

    def __init__(self, reason: str, node: _Node | None) -> None:
        self.reason = reason
        self.node = node
        super().__init__(reason)


def model_input_name(model_path: Path) -> str:
    """The single graph input that is not an initializer; calibration feeds one image tensor."""
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise QuantizationError(
            f"{model_path}: has {len(inputs)} inputs {inputs}; INT8 calibration from images needs exactly one"
        )
    return inputs[0]


def _graph_tensor_names(model_path: Path) -> set[str]:
    model = onnx.load(str(model_path), load_external_data=False)
    names = {o for node in model.graph.node for o in node.output if o}
    names.update(i.name for i in model.graph.input)
    return names


_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def float_tail_nodes(model_path: Path) -> list[str]:
    """Names of the nodes reachable backwards from the graph outputs without crossing a weighted op."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output if out}
    tail: list[str] = []
    seen: set[int] = set()
    stack = [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.op_type in _WEIGHTED_OPS or id(node) in seen:
            continue
        seen.add(id(node))
        if node.name:
            tail.append(node.name)
        stack.extend(i for i in node.input if i)
    return sorted(tail)


# --- failure descriptions ---------------------------------------------------------------------------------

_NODE_PATTERNS = (
    # onnx: "(op_type:Concat, node name: cat0): [ShapeInferenceError] ..."
    re.compile(r"\(op_type:(?P<op>[\w.]+), node name: (?P<name>[^)]*)\)"),
    # onnx: "Cannot infer type and shape for node name foo0. No opset import for domain d optype Foo"
    re.compile(r"node name (?P<name>\S*?)\. .*?optype (?P<op>[\w.]+)"),
    # onnxruntime session load: "Node (foo0) Op (Foo) [ShapeInferenceError] ..."
    re.compile(r"Node \((?P<name>[^)]*)\) Op \((?P<op>[^)]*)\)"),
    # onnxruntime run: "Non-zero status code returned while running Conv node. Name:'conv0' ..."
    re.compile(r"running (?P<op>[\w.]+) node\. Name:'(?P<name>[^']*)'"),
)


def _exception_text(exc: BaseException) -> str:
    """``Type: first lines of the message``, or the type name alone when the message is empty."""
    message = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3] if line.strip())
    if len(message) > 300:
        message = message[:300] + "…"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _node_in_text(text: str) -> _Node | None:
    for pattern in _NODE_PATTERNS:
        match = pattern.search(text)
        if match:
            return _Node(match.group("name"), match.group("op"))
    return None


def _node_in_traceback(exc: BaseException) -> _Node | None:
    """The innermost ``node`` local of the failing call: ORT's inference and quantizer loops name it so."""
    found: _Node | None = None
    tb = exc.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if isinstance(node, onnx.NodeProto):
            found = _Node(node.name, node.op_type)
        tb = tb.tb_next
    return found


def _failing_node(exc: BaseException) -> _Node | None:
    return _node_in_text(str(exc)) or _node_in_traceback(exc)


def _strict_inference_node(model: onnx.ModelProto) -> tuple[_Node | None, str | None]:
    """The first node ONNX's strict shape inference rejects, and its message, if it rejects one."""
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError and, for broken graphs, others
        return _node_in_text(str(exc)), _exception_text(exc)
    return None, None


@contextlib.contextmanager
def _library_output_to_stderr() -> Iterator[None]:
    """ORT's calibration and pre-processing print progress; our stdout is for our own output."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


# --- pre-processing routes --------------------------------------------------------------------------------


class _StopRecorder(logging.Handler):
    """Catches ORT's 'Stopping at incomplete shape inference at <op>: <name>' debug line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.node: _Node | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.node is None and record.msg == "Stopping at incomplete shape inference at %s: %s":
            op, name = record.args if isinstance(record.args, tuple) else ("?", "?")
            self.node = _Node(str(name), str(op))


def _symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    if importlib.util.find_spec("sympy") is None:
        raise _RouteFailed("sympy is not installed (ORT's symbolic shape inference needs it)", None)
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # needs sympy

    engine = SymbolicShapeInference(2**31 - 1, False, False, 0)  # int_max, auto_merge, guess_rank, verbose
    logger = logging.getLogger(_SYMBOLIC_LOGGER)
    recorder = _StopRecorder()
    saved = (logger.level, logger.propagate)
    # Its failure dump is debug lines of whole value infos: caught here, kept out of the root handlers.
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(recorder)
    try:
        engine._preprocess(model)
        complete = False
        while engine.run_:
            complete = engine._infer_impl()
        engine._update_output_from_vi()
    except Exception as exc:  # ORT asserts (bare AssertionError) on graphs its rules do not cover
        raise _RouteFailed(f"{_exception_text(exc)} in ORT's symbolic shape inference", _failing_node(exc)) from exc
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    if not complete:
        raise _RouteFailed("Incomplete symbolic shape inference", recorder.node)
    result: onnx.ModelProto = engine.out_mp_
    return result


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn the main graph's tensor ``Constant`` nodes into initializers of the same name, in place; returns
    how many. paddle2onnx writes every weight as a Constant node, and ORT's quantizer quantizes only
    initializers as weights: left as nodes, Conv weights would be quantized like activations (per tensor, and
    unsigned in U8S8)."""
    graph = model.graph
    if model.ir_version < 4:  # before IR 4 every initializer also had to be a graph input: left as it is
        return 0
    outputs = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    moved: list[onnx.TensorProto] = []
    for node in graph.node:
        is_tensor_constant = node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]
        if is_tensor_constant and node.output[0] not in outputs:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            moved.append(tensor)
            continue
        kept.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(moved)
    return len(moved)


def _is_fixed(dim: onnx.TensorShapeProto.Dimension) -> bool:
    return dim.HasField("dim_value") and dim.dim_value > 0


def fixed_input_model(model: onnx.ModelProto, pre: Preprocess | None) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs have batch 1 and, for 4-D image inputs, the preprocess
    (height, width) wherever the export left a dimension symbolic (``dim_param``, or paddle2onnx's -1).
    Recorded ``value_info`` is dropped: it describes the dynamic shapes and would contradict the fixed ones."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {i.name for i in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        wanted: dict[int, int] = {0: 1} if len(dims) else {}
        if pre is not None and len(dims) == 4:
            height, width = pre.size
            wanted.update({2: height, 3: width} if pre.layout == "nchw" else {1: height, 2: width})
        for index, size in wanted.items():
            if not _is_fixed(dims[index]):
                dims[index].Clear()
                dims[index].dim_value = size
    del fixed.graph.value_info[:]
    return fixed


def _pre_process(model: onnx.ModelProto | str, out_path: Path, *, optimize: bool) -> None:
    """ORT's ``quant_pre_process`` without its symbolic step: ONNX shape inference, optional optimisation."""
    try:
        with _library_output_to_stderr():
            quant_pre_process(model, str(out_path), skip_optimization=not optimize, skip_symbolic_shape=True)
    except Exception as exc:  # onnxruntime/onnx raise untyped errors for graphs they cannot infer
        raise _RouteFailed(_exception_text(exc), _failing_node(exc)) from exc


def _run_route(
    route: PreprocessingRoute,
    model: onnx.ModelProto,
    out_path: Path,
    *,
    pre: Preprocess | None,
    optimize: bool,
) -> None:
    if route == "symbolic":
        _pre_process(_symbolic_shapes(model), out_path, optimize=optimize)
    elif route == "onnx-shapes":
        _pre_process(model, out_path, optimize=optimize)
    else:
        _pre_process(fixed_input_model(model, pre), out_path, optimize=optimize)


def prepare_model(
    model_path: Path | str,
    out_path: Path | str,
    *,
    pre: Preprocess | None = None,
    optimize: bool = False,
    routes: Sequence[PreprocessingRoute] = PREPROCESSING_ROUTES,
) -> PreparedModel:
    """Shape-infer ``model_path`` for quantization into ``out_path``, trying ``routes`` in order (default:
    symbolic → onnx-shapes → fixed-batch; ``pre`` gives the fixed-batch route the input's height and width).

    Raises ``QuantizationError`` naming every route's failure, the failing node and op where one can be
    found, and what to try.
    """
    model_path, out_path = Path(model_path), Path(out_path)
    unknown = [r for r in routes if r not in PREPROCESSING_ROUTES]
    if unknown or not routes:
        raise QuantizationError(
            f"pre-processing routes must be a non-empty selection of {', '.join(PREPROCESSING_ROUTES)}, "
            f"got {shown(list(routes))}"
        )
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # protobuf DecodeError, missing file, external data missing
        raise QuantizationError(
            f"{model_path}: cannot be loaded as an ONNX model ({_exception_text(exc)}); pass the exported .onnx file"
        ) from None
    constants = constants_to_initializers(model)
    attempts: list[str] = []
    nodes: list[_Node] = []
    for route in routes:
        try:
            _run_route(route, model, out_path, pre=pre, optimize=optimize)
        except _RouteFailed as failure:
            where = f" (stopped at {failure.node})" if failure.node else ""
            attempts.append(f"{route}: {failure.reason}{where}")
            if failure.node:
                nodes.append(failure.node)
            continue
        prepared = PreparedModel(path=out_path, route=route, attempts=tuple(attempts))
        current_logger(__name__).info(
            "quantize.prepared",
            model=str(model_path),
            route=route,
            failed_routes=list(attempts),
            constants_to_initializers=constants,
        )
        return prepared
    node, strict_message = _strict_inference_node(model)
    node = nodes[0] if nodes else node
    culprit = f"first failure at {node}" if node else "no single failing node could be identified"
    detail = f"; ONNX strict shape inference: {strict_message}" if strict_message and not nodes else ""
    raise QuantizationError(
        f"{model_path}: quantization pre-processing failed on every route ({'; '.join(attempts)}); "
        f"{culprit}{detail}; {_WHAT_TO_TRY}"
    )


def prepare_for_quantization(model_path: Path, out_path: Path, *, optimize: bool = False) -> Path:
    """``prepare_model`` for callers that need only the prepared file."""
    return prepare_model(model_path, out_path, optimize=optimize).path


# --- calibration and quantization -------------------------------------------------------------------------

#: DequantizeLinear takes a per-channel ``axis`` from opset 13 on.
PER_CHANNEL_OPSET = 13


def _ai_onnx_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _opset_for_per_channel(prepared: Path, work: Path) -> tuple[Path, str | None]:
    """The prepared model at opset >= 13 for per-channel weights, or why it cannot be (then per tensor).

    ORT's quantizer writes per-channel DequantizeLinear nodes (``axis``) into an opset-11 model (paddle2onnx's
    default) without raising its opset, and onnxruntime then refuses the model as invalid."""
    model = onnx.load(str(prepared))
    opset = _ai_onnx_opset(model)
    if opset >= PER_CHANNEL_OPSET:
        return prepared, None
    try:
        converted = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        converted = onnx.shape_inference.infer_shapes(converted)
    except Exception as exc:  # the converter raises RuntimeError/ValueError for ops it has no adapter for
        return prepared, f"opset {opset} cannot be converted to {PER_CHANNEL_OPSET} ({_exception_text(exc)})"
    out = work / f"prepared.opset{PER_CHANNEL_OPSET}.onnx"
    onnx.save(converted, str(out))
    return out, None


def calibrate(
    model_path: Path,
    images: ImageSet,
    pre: Preprocess,
    *,
    method: CalibrationMethodName = "minmax",
    work_dir: Path,
    reference_model: Path | None = None,
) -> CalibrationRun:
    """One calibration run over ``images`` on the CPU; ``reference_model`` (default: ``model_path``) is the
    graph whose tensor names the coverage is counted against."""
    if method not in _ORT_METHODS:
        raise QuantizationError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    reader = ImageSetReader(images, pre, model_input_name(model_path))
    try:
        with _library_output_to_stderr():
            calibrator = create_calibrator(
                Path(model_path),
                None,
                augmented_model_path=str(work_dir / "augmented.onnx"),
                calibrate_method=_ORT_METHODS[method],
                providers=["CPUExecutionProvider"],
            )
            calibrator.collect_data(reader)
            tensors_data = calibrator.compute_data()
    except Exception as exc:  # onnxruntime's errors are untyped
        node = _failing_node(exc)
        raise QuantizationError(
            f"{reference_model or model_path}: calibration ({method}) failed: {_exception_text(exc)}"
            + (f" at {node}" if node else "")
            + f"; check that preprocess.size/layout/dtype match the model input {shown(pre.input_shape)}, "
            "try another --calibration-method, or build with --precision fp32"
        ) from None
    ranges: dict[str, tuple[float, float]] = {}
    for name, data in tensors_data.data.items():
        low, high = data.range_value
        # ORT keeps each bound as a 1-element array (per-tensor calibration).
        ranges[name] = (float(np.min(low)), float(np.max(high)))
    reference = _graph_tensor_names(reference_model or model_path)
    return CalibrationRun(
        method=method,
        ranges={k: v for k, v in sorted(ranges.items()) if k in reference},
        images=images.count,
        model_tensors=len(reference),
        tensors_data=tensors_data,
    )


def quantize_int8(
    model_path: Path | str,
    images: ImageSet,
    pre: Preprocess,
    out_path: Path | str,
    *,
    method: CalibrationMethodName = "minmax",
    activation_type: ActivationType = "int8",
    per_channel: bool = True,
    reduce_range: bool = False,
    optimize: bool = False,
    keep_float_tail: bool = True,
) -> QuantizedModel:
    """Write the QDQ INT8 model of ``model_path`` to ``out_path`` from one calibration run over ``images``:
    ``activation_type`` ``int8`` is S8S8, ``uint8`` is U8S8 (weights are always signed, per channel unless
    ``per_channel=False``); ``reduce_range`` quantizes weights to 7 bits (for U8S8 on x86 without VNNI)."""
    model_path, out_path = Path(model_path), Path(out_path)
    if activation_type not in _ACTIVATION_TYPES:
        raise QuantizationError(f"activation type must be int8 or uint8, got {shown(activation_type)}")
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as tmp:
        work = Path(tmp)
        prepared = prepare_model(model_path, work / "prepared.onnx", pre=pre, optimize=optimize)
        source = prepared.path
        if per_channel:
            source, per_tensor_reason = _opset_for_per_channel(prepared.path, work)
            if per_tensor_reason is not None:
                per_channel = False
                current_logger(__name__).warning(
                    "quantize.per_tensor_weights", model=str(model_path), reason=per_tensor_reason
                )
        run = calibrate(source, images, pre, method=method, work_dir=work, reference_model=model_path)
        excluded = float_tail_nodes(source) if keep_float_tail else []
        cache = work / "ranges.json"
        save_tensors_data(run.tensors_data, cache)
        # ORT's quantizer warns on the root logger for every per-channel BatchNorm weight it cannot split
        # ("Axis 1 is out-of-range"); harmless and noisy, so it is silenced for this call only.
        root = logging.getLogger()
        previous_level = root.level
        root.setLevel(logging.ERROR)
        try:
            with _library_output_to_stderr():
                quantize_static(
                    str(source),
                    str(out_path),
                    None,
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=_ACTIVATION_TYPES[activation_type],
                    weight_type=QuantType.QInt8,
                    calibrate_method=_ORT_METHODS[method],
                    calibration_cache_path=str(cache),
                    nodes_to_exclude=excluded,
                )
        except Exception as exc:  # onnxruntime's errors are untyped
            node = _failing_node(exc)
            raise QuantizationError(
                f"{model_path}: static INT8 quantization ({activation_type} activations, "
                f"pre-processing route {prepared.route}) failed: {_exception_text(exc)}"
                + (f" at {node}" if node else "")
                + "; try the other activation type, per_channel off, or build with --precision fp32"
            ) from None
        finally:
            root.setLevel(previous_level)
    current_logger(__name__).info(
        "quantize.int8_written",
        model=str(model_path),
        out=str(out_path),
        method=method,
        activation_type=activation_type,
        reduce_range=reduce_range,
        preprocessing=prepared.route,
        per_channel=per_channel,
        images=images.count,
        tensors=len(run.ranges),
        coverage=round(run.coverage, 4),
        float_tail=len(excluded),
    )
    return QuantizedModel(
        path=out_path,
        calibration=run,
        activation_type=activation_type,
        reduce_range=reduce_range,
        preprocessing=prepared.route,
        per_channel=per_channel,
    )
