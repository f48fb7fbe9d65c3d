"""PyTorch → ONNX export for bundles: opset 17, dynamic batch, named inputs and outputs.

torch is an optional dependency (the publisher's training machine has it; the controller and devices do
not), so it is imported inside ``export_torch`` and its absence is an ``ExportError`` that says how to get
it. After export the file is checked with ``onnx.checker`` so a broken graph fails here, not on a device.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from edgefleet_pipeline.errors import ExportError

DEFAULT_OPSET = 17


def export_torch(
    module: Any,
    sample_input: Any,
    path: Path | str,
    *,
    input_names: Sequence[str] = ("images",),
    output_names: Sequence[str] = ("output0",),
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``module`` (put in eval mode) traced on ``sample_input`` to an ONNX file at ``path``."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        raise ExportError(
            "PyTorch export needs torch, which is not installed; install it (pip install torch) on the "
            "machine that exports, or export to ONNX where the model was trained"
        ) from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {name: {0: "batch"} for name in (*input_names, *output_names)} if dynamic_batch else None
    module.eval()
    # torch >= 2.5 defaults towards the dynamo exporter; the TorchScript one honours opset and dynamic_axes.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    args = sample_input if isinstance(sample_input, tuple) else (sample_input,)
    try:
        # The TorchScript exporter announces its deprecation (and that of the helpers it calls) on every
        # call; it is chosen on purpose: the dynamo exporter needs onnxscript and does not take
        # opset_version/dynamic_axes the same way.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                **legacy,
            )
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # torch.onnx and the checker raise many untyped errors
        raise ExportError(f"exporting {type(module).__name__} to {path} (opset {opset}) failed: {exc}") from None
    return path
