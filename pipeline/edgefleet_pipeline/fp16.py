"""FP16 variants for GPU targets: ``onnxconverter-common``'s float16 conversion with float32 inputs and outputs.

``convert_fp16`` converts weights and activations to float16 and keeps the graph's inputs and outputs float32
(``keep_io_types=True``), so a device feeds the same tensors as to the FP32 model and its post-processing
reads float32. The variant is for CUDA/TensorRT targets, where FP16 runs on tensor cores; on a CPU onnxruntime
runs most float16 ops by casting, so it is slower there, but it loads and runs (tests check outputs on CPU).

Decisions:
- Cast nodes whose every consumer is an op the converter keeps in float32 (its ``DEFAULT_OP_BLOCK_LIST``:
  Range, Resize, TopK…) are kept in float32 too (``node_block_list``). An Ultralytics YOLOv8 head computes
  its anchor grid with Shape → Gather → Cast(to float) → Range; the converter rewrites such a Cast to float16
  but leaves its declared float32 output, so onnxruntime refuses the model ("Type (tensor(float16)) of output
  arg (/model.22/Cast_5_output_0) … does not match expected type (tensor(float))"). Blocking the Cast op
  type everywhere instead makes the converter loop without end on that model. These Casts carry a handful of
  shape values, not feature maps: nothing is lost.
- Values outside float16's range are clamped by the converter (``max_finite_val`` 1e4, tiny values to
  1e-7); its per-value ``UserWarning``s are counted into the log line ``fp16.converted``, not re-raised.
- The converted model is checked by loading it in an onnxruntime CPU session before it is returned: a variant
  that cannot load is refused here, naming the error, not at a device's staging.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
from onnxconverter_common.float16 import (  # type: ignore[import-untyped]  # ships no type hints
    DEFAULT_OP_BLOCK_LIST,
    convert_float_to_float16,
)

from edgefleet.logging import current_logger
from edgefleet_pipeline.errors import PrecisionUnavailableError

#: Ops the converter keeps in float32 (with casts around them).
FP16_OP_BLOCK_LIST: tuple[str, ...] = tuple(DEFAULT_OP_BLOCK_LIST)

_WHAT_TO_TRY = "build with --precision fp32 or int8, or re-export the model with opset 17"


def _error_text(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    if len(message) > 300:
        message = message[:300] + "…"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def float32_casts(model: onnx.ModelProto, blocked: tuple[str, ...] = FP16_OP_BLOCK_LIST) -> list[str]:
    """Names of the Cast nodes whose outputs feed only ops in ``blocked`` (kept float32, see the docstring)."""
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    graph_outputs = {o.name for o in model.graph.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Cast"
        and node.name
        and node.output[0] not in graph_outputs
        and consumers.get(node.output[0])
        and all(op in blocked for op in consumers[node.output[0]])
    ]


def convert_fp16(model_path: Path | str, out_path: Path | str) -> Path:
    """Write the FP16 variant of ``model_path`` (float32 inputs and outputs) to ``out_path`` and return it.

    Raises ``PrecisionUnavailableError`` naming the step that failed (load, conversion, save, onnxruntime
    load) and the error.
    """
    model_path, out_path = Path(model_path), Path(out_path)
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # protobuf DecodeError, missing file or external data
        raise PrecisionUnavailableError(
            f"{model_path}: fp16: cannot load the model ({_error_text(exc)}); pass the exported .onnx file"
        ) from None
    casts = float32_casts(model)
    with warnings.catch_warnings(record=True) as clamped:
        warnings.simplefilter("always")
        try:
            converted = convert_float_to_float16(
                model, keep_io_types=True, op_block_list=list(FP16_OP_BLOCK_LIST), node_block_list=casts
            )
        except Exception as exc:  # the converter raises plain ValueError/AssertionError/KeyError
            raise PrecisionUnavailableError(
                f"{model_path}: fp16 conversion (onnxconverter-common) failed: {_error_text(exc)}; {_WHAT_TO_TRY}"
            ) from None
    try:
        onnx.save(converted, str(out_path))
    except Exception as exc:  # OSError, or protobuf's 2 GB limit
        raise PrecisionUnavailableError(
            f"{out_path}: fp16: cannot save the converted model: {_error_text(exc)}"
        ) from None
    try:
        ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors are untyped; they name the node and op
        out_path.unlink(missing_ok=True)
        raise PrecisionUnavailableError(
            f"{model_path}: the fp16 model does not load in onnxruntime: {_error_text(exc)}; {_WHAT_TO_TRY}"
        ) from None
    current_logger(__name__).info(
        "fp16.converted",
        model=str(model_path),
        out=str(out_path),
        clamped_values=len(clamped),
        float32_casts=len(casts),
    )
    return out_path
