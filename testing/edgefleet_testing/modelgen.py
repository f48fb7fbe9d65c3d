"""Reproducible generation of small ONNX test models (classifier and YOLO-style detectors).

The models are built with ``onnx.helper`` and seeded numpy weights, never trained: tests, the demo and the
benchmarks need real ONNX graphs with the right shapes and known structure, not accuracy. Everything is
deterministic, so the same arguments (seed included) produce a byte-identical file, which keeps bundle
digests stable across runs.

All models use opset 17, take a float32 NCHW input named ``images`` with a dynamic batch dimension
(``batch``), and can be made slower *by construction* with ``extra_matmuls``: chained square MatMul + Relu
layers over the widest feature map, so a "slow" bundle is slow on every machine, not by sleeping.

A classifier can also be slow only on some scenes (``scene_matmuls``): an ``If`` on the input's mean runs
that many extra MatMuls when the frame is brighter than ``scene_threshold`` and nothing extra otherwise, with
the same outputs either way (the heavy branch folds into an exact 0.0) as the same seed's model without
them, up to float rounding (onnxruntime fuses the two graphs' layers differently, ~1e-7). It stands for a
bundle whose cost depends on what the camera sees (NMS on a busy scene): a canary on a quiet scene cannot
see the regression, the watch window on the busy scene must.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INPUT_NAME = "images"
BATCH_DIM = "batch"
DETECTOR_STRIDE = 32
# Kept fixed so files do not change when the onnx package version changes.
_IR_VERSION = 8
_PRODUCER = "edgefleet_testing.modelgen"

YoloLayout = Literal["v8", "v5"]


class _GraphBuilder:
    """Accumulates nodes and initializers with unique, readable names."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = 0
        self.conv_weights: list[tuple[NDArray[np.float32], NDArray[np.float32]]] = []

    def _name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def const(self, prefix: str, value: NDArray[np.generic]) -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name=name))
        return name

    def node(self, op: str, inputs: Sequence[str], prefix: str | None = None, **attrs: Any) -> str:
        out = self._name(prefix or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"{out}_node", **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, *, kernel: int, stride: int, std: float | None = None) -> str:
        fan_in = c_in * kernel * kernel
        scale = std if std is not None else float(np.sqrt(2.0 / fan_in))
        w = (self.rng.standard_normal((c_out, c_in, kernel, kernel)) * scale).astype(np.float32)
        b = (self.rng.standard_normal(c_out) * 0.05).astype(np.float32)
        self.conv_weights.append((w, b))
        pad = kernel // 2
        return self.node(
            "Conv",
            [x, self.const("conv_w", w), self.const("conv_b", b)],
            "conv",
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
        )

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], "relu")

    def square_matmuls(self, x: str, dim: int, count: int, rng: np.random.Generator | None = None) -> str:
        """``count`` chained ``x @ W`` (W is dim×dim over the last axis) + Relu; He-scaled to stay bounded."""
        draw = rng if rng is not None else self.rng
        for _ in range(count):
            w = (draw.standard_normal((dim, dim)) * np.sqrt(2.0 / dim)).astype(np.float32)
            x = self.relu(self.node("MatMul", [x, self.const("slow_w", w)], "slow_matmul"))
        return x

    def scene_matmuls(self, x: str, dim: int, count: int, threshold: float, seed: int) -> str:
        """``x`` unchanged, after ``count`` extra MatMuls only when the input's mean exceeds ``threshold``.

        The heavy branch ends in ``x + float(max(h) > inf)``: always exactly ``x + 0.0``, yet it depends on
        ``h``, so no optimiser can drop the MatMuls. Their weights come from their own generator, so every
        other weight is the same as the same seed's model without them.
        """
        if count == 0:
            return x
        mean = self.node("ReduceMean", [INPUT_NAME], "scene_mean", keepdims=0)
        busy = self.node("Greater", [mean, self.const("scene_threshold", np.array(threshold, np.float32))])
        outer, self.nodes = self.nodes, []
        heavy = self.square_matmuls(x, dim, count, rng=np.random.default_rng([seed, 0x5CE4E]))
        peak = self.node("ReduceMax", [heavy], "scene_peak", keepdims=0)
        never = self.node("Greater", [peak, self.const("inf", np.array(np.inf, np.float32))], "scene_never")
        zero = self.node("Cast", [never], "scene_zero", to=TensorProto.FLOAT)
        busy_out = self.node("Add", [x, zero], "scene_busy_out")
        busy_nodes, self.nodes = self.nodes, []
        quiet_out = self.node("Identity", [x], "scene_quiet_out")
        quiet_nodes, self.nodes = self.nodes, outer

        def branch(name: str, nodes: list[onnx.NodeProto], out: str) -> onnx.GraphProto:
            return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])

        return self.node(
            "If",
            [busy],
            "scene",
            then_branch=branch("scene_busy", busy_nodes, busy_out),
            else_branch=branch("scene_quiet", quiet_nodes, quiet_out),
        )


def _logit_shift_vector(
    conv: tuple[NDArray[np.float32], NDArray[np.float32]],
    fc_w: NDArray[np.float32],
    fc_b: NDArray[np.float32],
    logit_shift: float,
) -> NDArray[np.float32]:
    """Per-class bias shift that always hits the classes the model favours, whatever the seed.

    The favoured classes are found on a constant mid-grey image, where (ignoring borders) the conv output is
    ``relu(sum(w) * 0.5 + b)`` per channel; the extra square MatMuls are ignored, they are a speed knob.
    """
    num_classes = fc_w.shape[0]
    if logit_shift == 0.0 or num_classes == 1:
        return np.zeros(num_classes, np.float32)
    w, b = conv
    features = np.maximum(w.sum(axis=(1, 2, 3)) * 0.5 + b, 0.0)
    probe = fc_w @ features + fc_b
    rank = np.argsort(np.argsort(probe, kind="stable"), kind="stable").astype(np.float32) / (num_classes - 1)
    shift: NDArray[np.float32] = (-np.float32(logit_shift) * rank).astype(np.float32)
    return shift


def _save(
    builder: _GraphBuilder,
    path: Path,
    graph_name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    doc: str,
) -> Path:
    graph = helper.make_graph(builder.nodes, graph_name, inputs, outputs, initializer=builder.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=_PRODUCER,
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def _check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"modelgen: {name} must be > 0, got {value}")


def make_classifier(
    path: Path | str,
    *,
    num_classes: int = 10,
    size: int = 64,
    channels: int = 3,
    seed: int = 0,
    extra_matmuls: int = 0,
    logit_shift: float = 0.0,
    scene_matmuls: int = 0,
    scene_threshold: float = 0.5,
) -> Path:
    """Write a tiny conv classifier: ``images [N,channels,size,size]`` → ``logits [N,num_classes]``.

    Conv → Relu → (extra MatMul+Relu)* → [If bright: scene MatMuls] → GlobalAveragePool → Flatten → Gemm.
    ``logit_shift`` lowers each class's bias by ``logit_shift`` times its rank (0 = least, 1 = most
    favoured on a mid-grey image), so a positive shift makes the model less confident and moves its
    confidence distribution: a "regressed" model for canary tests. Negative shifts make it more confident.
    ``scene_matmuls`` > 0 makes frames whose mean input exceeds ``scene_threshold`` (inputs as the bundle's
    preprocessing feeds them, e.g. 0..1) that much slower, outputs unchanged (see the module docstring).
    """
    for name, value in (("num_classes", num_classes), ("size", size), ("channels", channels)):
        _check_positive(name, value)
    if extra_matmuls < 0:
        raise ValueError(f"modelgen: extra_matmuls must be >= 0, got {extra_matmuls}")
    if scene_matmuls < 0:
        raise ValueError(f"modelgen: scene_matmuls must be >= 0, got {scene_matmuls}")
    b = _GraphBuilder(np.random.default_rng(seed))
    features = 16
    x = b.relu(b.conv(INPUT_NAME, channels, features, kernel=3, stride=1))
    x = b.square_matmuls(x, size, extra_matmuls)
    x = b.scene_matmuls(x, size, scene_matmuls, scene_threshold, seed)
    x = b.node("GlobalAveragePool", [x], "gap")
    x = b.node("Flatten", [x], "flatten", axis=1)
    # Wide weights so logits (and softmax confidences) vary visibly between inputs.
    w = (b.rng.standard_normal((num_classes, features)) * 2.0).astype(np.float32)
    bias = (b.rng.standard_normal(num_classes) * 0.1).astype(np.float32)
    bias = (bias + _logit_shift_vector(b.conv_weights[0], w, bias, logit_shift)).astype(np.float32)
    logits = b.node("Gemm", [x, b.const("fc_w", w), b.const("fc_b", bias)], "gemm", transB=1)
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits_node"))
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, channels, size, size])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH_DIM, num_classes])]
    return _save(b, Path(path), "edgefleet_classifier", inputs, outputs, f"classifier seed={seed}")


def make_yolo_detector(
    path: Path | str,
    *,
    layout: YoloLayout = "v8",
    num_classes: int = 4,
    size: int = 640,
    anchors: Sequence[tuple[float, float]] = ((96.0, 96.0),),
    seed: int = 0,
    extra_matmuls: int = 0,
) -> Path:
    """Write a YOLO-style detector over a stride-32 grid; A = len(anchors) · (size/32)².

    ``v8``: ``output0 [N, 4+num_classes, A]`` — cx, cy, w, h in input pixels, then sigmoid class scores.
    ``v5``: ``output0 [N, A, 5+num_classes]`` — cx, cy, w, h, objectness, class scores.
    Boxes are decoded like YOLOv5 so they are plausible: the centre lies inside its grid cell
    (``(grid + sigmoid) · 32``), the size is ``anchor · (2·sigmoid)²`` (positive, at most 4× the anchor).
    """
    if layout not in ("v8", "v5"):
        raise ValueError(f"modelgen: layout must be 'v8' or 'v5', got {layout!r}")
    _check_positive("num_classes", num_classes)
    _check_positive("size", size)
    if size % DETECTOR_STRIDE:
        raise ValueError(f"modelgen: size must be a multiple of {DETECTOR_STRIDE}, got {size}")
    if not anchors or any(w <= 0 or h <= 0 for w, h in anchors):
        raise ValueError(f"modelgen: anchors must be a non-empty list of positive (w, h), got {anchors!r}")
    if extra_matmuls < 0:
        raise ValueError(f"modelgen: extra_matmuls must be >= 0, got {extra_matmuls}")

    b = _GraphBuilder(np.random.default_rng(seed))
    grid = size // DETECTOR_STRIDE
    na = len(anchors)
    per_anchor = 4 + num_classes if layout == "v8" else 5 + num_classes
    num_anchors = na * grid * grid

    x = b.relu(b.conv(INPUT_NAME, 3, 8, kernel=3, stride=2))
    x = b.relu(b.conv(x, 8, 16, kernel=3, stride=2))
    x = b.square_matmuls(x, size // 4, extra_matmuls)
    for c_in, c_out in ((16, 16), (16, 32), (32, 32)):
        x = b.relu(b.conv(x, c_in, c_out, kernel=3, stride=2))
    # Larger std in the head so sigmoid scores spread over (0, 1) instead of clustering at 0.5.
    head = b.conv(x, 32, na * per_anchor, kernel=1, stride=1, std=0.6)

    # [N, na*K, G, G] → [N, K, na*G*G], anchor-major then row-major cells.
    head = b.node("Reshape", [head, b.const("shape", np.array([0, na, per_anchor, grid * grid], np.int64))])
    head = b.node("Transpose", [head], "transpose", perm=[0, 2, 1, 3])
    head = b.node("Reshape", [head, b.const("shape", np.array([0, per_anchor, num_anchors], np.int64))])
    sig = b.node("Sigmoid", [head], "sigmoid")
    split_sizes = b.const("split", np.array([2, 2, per_anchor - 4], np.int64))
    xy, wh, rest = (f"split_{part}" for part in ("xy", "wh", "rest"))
    b.nodes.append(helper.make_node("Split", [sig, split_sizes], [xy, wh, rest], name="split_node", axis=1))

    cells = np.arange(grid * grid)
    gx = np.tile(cells % grid, na).astype(np.float32)
    gy = np.tile(cells // grid, na).astype(np.float32)
    grid_xy = np.stack([gx, gy])[None]  # [1, 2, A]
    anchor_wh = np.repeat(np.asarray(anchors, np.float32).T, grid * grid, axis=1)[None]  # [1, 2, A]
    centre = b.node("Add", [xy, b.const("grid", grid_xy)], "centre_cells")
    centre = b.node("Mul", [centre, b.const("stride", np.array(DETECTOR_STRIDE, np.float32))], "centre")
    wh2 = b.node("Mul", [wh, b.const("two", np.array(2.0, np.float32))], "wh2")
    wh2 = b.node("Mul", [wh2, wh2], "wh_sq")
    size_wh = b.node("Mul", [wh2, b.const("anchor_wh", anchor_wh)], "size_wh")
    decoded = b.node("Concat", [centre, size_wh, rest], "decoded", axis=1)
    if layout == "v8":
        b.nodes.append(helper.make_node("Identity", [decoded], ["output0"], name="output0_node"))
        out_shape: list[str | int] = [BATCH_DIM, per_anchor, num_anchors]
    else:
        b.nodes.append(helper.make_node("Transpose", [decoded], ["output0"], name="output0_node", perm=[0, 2, 1]))
        out_shape = [BATCH_DIM, num_anchors, per_anchor]
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, 3, size, size])]
    outputs = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)]
    return _save(b, Path(path), f"edgefleet_yolo_{layout}", inputs, outputs, f"yolo {layout} seed={seed}")
