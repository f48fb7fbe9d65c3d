"""INT8 and FP16 on real exports: an Ultralytics YOLOv8n (symbolic batch/height/width, symbolic anchor count)
and a PaddlePaddle (paddle2onnx) text-direction classifier, both from pinned wheels.

On both, ORT's symbolic shape inference fails (the detector: incomplete at ``/model.11/Concat``; the
classifier: a bare AssertionError at ``Concat@0``), so pre-processing must fall back and say so. Each model is
quantized S8S8, U8S8 and U8S8 with reduce_range; the QDQ models must load and run in onnxruntime and agree with
FP32 on generated inputs. Calibration images are generated here (text lines, shapes), never downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from structlog.testing import capture_logs

from edgefleet.contract.bundle_sections import Preprocess
from edgefleet.contract.processing.preprocess import preprocess
from edgefleet_pipeline.calibration import ImageSet, load_image_set
from edgefleet_pipeline.errors import QuantizationError
from edgefleet_pipeline.fp16 import convert_fp16
from edgefleet_pipeline.quantize import ActivationType, prepare_model, quantize_int8
from edgefleet_testing.real_models import (
    text_direction_classifier,
    text_direction_spec,
    yolov8n_detector,
    yolov8n_spec,
)

pytestmark = pytest.mark.integration

DETECTOR = yolov8n_detector()
CLASSIFIER = text_direction_classifier()
DETECTOR_PRE = Preprocess.from_dict(yolov8n_spec()["preprocess"])
CLASSIFIER_PRE = Preprocess.from_dict(text_direction_spec()["preprocess"])
WORDS = ("HELLO 42", "edge fleet", "INVOICE 7", "total 19.90", "Rollout", "canary ok", "BUNDLE v2", "site A-3")
VARIANTS: list[tuple[ActivationType, bool]] = [("int8", False), ("uint8", False), ("uint8", True)]
VARIANT_IDS = ["s8s8", "u8s8", "u8s8-reduce-range"]


def _text_line(index: int, *, upside_down: bool) -> NDArray[np.uint8]:
    """A 48x192 dark-on-white text line, as the classifier reads them; rotated 180 degrees on request."""
    image = np.full((48, 192, 3), 255, np.uint8)
    cv2.putText(image, WORDS[index % len(WORDS)], (4, 34), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (20, 20, 20), 2)
    return np.ascontiguousarray(cv2.rotate(image, cv2.ROTATE_180), np.uint8) if upside_down else image


def _scene(index: int) -> NDArray[np.uint8]:
    """A 240x320 frame with a few filled shapes: something for a detector's activations to range over."""
    rng = np.random.default_rng(index)
    image = np.full((240, 320, 3), int(rng.integers(60, 180)), np.uint8)
    for _ in range(3):
        x, y = int(rng.integers(0, 260)), int(rng.integers(0, 180))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(image, (x, y), (x + int(rng.integers(20, 60)), y + int(rng.integers(20, 60))), colour, -1)
    cv2.circle(image, (160, 120), int(rng.integers(10, 50)), (250, 250, 250), -1)
    return image


@pytest.fixture(scope="module")
def calibration_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImageSet]:
    root = tmp_path_factory.mktemp("calibration")
    (root / "lines").mkdir()
    (root / "scenes").mkdir()
    for i in range(12):
        cv2.imwrite(str(root / "lines" / f"{i:02}.png"), _text_line(i, upside_down=i % 2 == 1))
        cv2.imwrite(str(root / "scenes" / f"{i:02}.png"), _scene(i))
    with capture_logs():  # 12 images: the "fewer than recommended" warning is expected
        return {"lines": load_image_set(root / "lines"), "scenes": load_image_set(root / "scenes")}


def _run(model: Path, tensors: list[NDArray[np.float32]]) -> NDArray[np.float32]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x})[0] for x in tensors])


def _line_inputs() -> tuple[list[NDArray[np.float32]], NDArray[np.int64]]:
    """Held-out lines (other words than calibration's first ones) and their true class: 0 = 0°, 1 = 180°."""
    tensors, truth = [], []
    for i in range(3, 7):
        for upside_down in (False, True):
            tensors.append(preprocess(_text_line(i, upside_down=upside_down), CLASSIFIER_PRE)[0])
            truth.append(int(upside_down))
    return tensors, np.asarray(truth)


def _qdq_activation_and_weight_ranges(path: Path) -> tuple[set[int], int]:
    """Element types of the activation zero points, and the largest |weight| among int8 initializers."""
    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    zero_point_types = {
        initializers[node.input[2]].data_type
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in initializers
    }
    weights = [
        np.abs(onnx.numpy_helper.to_array(t).astype(np.int32)).max()
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("_quantized")
    ]
    return zero_point_types, int(max(weights))


@pytest.fixture
def no_stray_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in an empty working directory and check ORT's tools left nothing in it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd
    assert sorted(p.name for p in cwd.iterdir()) == []


# --- pre-processing routes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "symbolic_failure"),
    [
        (DETECTOR, "symbolic: Incomplete symbolic shape inference (stopped at node '/model.11/Concat', op Concat)"),
        (
            CLASSIFIER,
            "symbolic: AssertionError in ORT's symbolic shape inference (stopped at node 'Concat@0', op Concat)",
        ),
    ],
    ids=["yolov8n", "paddle-classifier"],
)
def test_real_exports_fall_back_to_onnx_shapes_and_say_why(
    model: Path, symbolic_failure: str, tmp_path: Path, no_stray_files: Path
) -> None:
    with capture_logs() as logs:
        prepared = prepare_model(model, tmp_path / "prepared.onnx")
    assert prepared.route == "onnx-shapes"
    assert prepared.attempts == (symbolic_failure,)
    (logged,) = [e for e in logs if e["event"] == "quantize.prepared"]
    assert logged["route"] == "onnx-shapes" and logged["failed_routes"] == [symbolic_failure]
    # The dynamic input survives this route.
    dims = onnx.load(str(prepared.path)).graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") or dims[0].dim_value <= 0

    # With only the symbolic route allowed, the error says where it stopped and what to try.
    with pytest.raises(QuantizationError) as caught:
        prepare_model(model, tmp_path / "only-symbolic.onnx", routes=("symbolic",))
    message = str(caught.value)
    assert symbolic_failure in message
    assert "--precision fp32" in message


@pytest.mark.parametrize(
    ("model", "pre", "inputs"),
    [
        (DETECTOR, DETECTOR_PRE, [1, 3, 320, 320]),
        (CLASSIFIER, CLASSIFIER_PRE, [1, 3, 48, 192]),
    ],
    ids=["yolov8n", "paddle-classifier"],
)
def test_the_fixed_batch_route_works_on_real_exports_and_computes_the_same(
    model: Path, pre: Preprocess, inputs: list[int], tmp_path: Path
) -> None:
    prepared = prepare_model(model, tmp_path / "fixed.onnx", pre=pre, routes=("fixed-batch",))
    assert prepared.route == "fixed-batch"
    dims = onnx.load(str(prepared.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == inputs
    x = [np.random.default_rng(5).random(inputs, dtype=np.float32)]
    np.testing.assert_allclose(_run(prepared.path, x), _run(model, x), rtol=1e-4, atol=1e-4)


# --- INT8 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("activation", "reduce_range"), VARIANTS, ids=VARIANT_IDS)
def test_paddle_classifier_quantizes_and_keeps_its_top1(
    activation: ActivationType, reduce_range: bool, calibration_sets: dict[str, ImageSet], tmp_path: Path
) -> None:
    with capture_logs():
        quantized = quantize_int8(
            CLASSIFIER, calibration_sets["lines"], CLASSIFIER_PRE, tmp_path / "q.onnx",
            activation_type=activation, reduce_range=reduce_range,
        )  # fmt: skip
    assert quantized.preprocessing == "onnx-shapes"
    assert (quantized.activation_type, quantized.reduce_range) == (activation, reduce_range)
    zero_point_types, largest_weight = _qdq_activation_and_weight_ranges(quantized.path)
    expected = onnx.TensorProto.UINT8 if activation == "uint8" else onnx.TensorProto.INT8
    assert expected in zero_point_types
    assert largest_weight <= (64 if reduce_range else 127)

    tensors, truth = _line_inputs()
    fp32 = _run(CLASSIFIER, tensors)
    int8 = _run(quantized.path, tensors)
    assert np.array_equal(fp32.argmax(axis=1), truth)  # the inputs are ones the FP32 model reads right
    assert np.array_equal(int8.argmax(axis=1), fp32.argmax(axis=1))
    assert np.all(np.isfinite(int8)) and np.allclose(int8.sum(axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize(("activation", "reduce_range"), VARIANTS, ids=VARIANT_IDS)
def test_yolov8n_quantizes_and_runs(
    activation: ActivationType, reduce_range: bool, calibration_sets: dict[str, ImageSet], tmp_path: Path
) -> None:
    with capture_logs():
        quantized = quantize_int8(
            DETECTOR, calibration_sets["scenes"], DETECTOR_PRE, tmp_path / "q.onnx",
            activation_type=activation, reduce_range=reduce_range,
        )  # fmt: skip
    assert quantized.preprocessing == "onnx-shapes"
    zero_point_types, largest_weight = _qdq_activation_and_weight_ranges(quantized.path)
    assert (onnx.TensorProto.UINT8 if activation == "uint8" else onnx.TensorProto.INT8) in zero_point_types
    assert largest_weight <= (64 if reduce_range else 127)

    tensors = [preprocess(_scene(100 + i), DETECTOR_PRE)[0] for i in range(3)]
    fp32 = _run(DETECTOR, tensors)
    int8 = _run(quantized.path, tensors)
    assert int8.shape == fp32.shape == (3, 4 + 18, 2100)
    assert np.all(np.isfinite(int8))
    # The box rows (cx, cy, w, h in input pixels) follow FP32's: the float tail decodes them in float.
    boxes32, boxes8 = fp32[:, :4].ravel(), int8[:, :4].ravel()
    assert np.corrcoef(boxes32, boxes8)[0, 1] > 0.95
    assert np.all((int8[:, 4:] >= 0.0) & (int8[:, 4:] <= 1.0))  # class scores stay sigmoid outputs


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_quantization_prints_nothing_on_stdout(
    method: str, calibration_sets: dict[str, ImageSet], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with capture_logs():  # structlog's default printer would write to stdout; fleetctl sends it to stderr
        quantized = quantize_int8(
            CLASSIFIER, calibration_sets["lines"], CLASSIFIER_PRE, tmp_path / "q.onnx",
            method=method,  # type: ignore[arg-type]
        )  # fmt: skip
    assert quantized.path.is_file()
    out, err = capfd.readouterr()
    assert out == ""
    if method == "percentile":  # ORT prints its histogram progress: it went to stderr
        assert "Finding optimal threshold" in err


# --- FP16 ---------------------------------------------------------------------------------------------------


def test_fp16_variants_of_both_exports_load_and_agree_with_fp32(tmp_path: Path) -> None:
    """Tolerances: float16 keeps 11 significant bits (relative step 2^-11 ≈ 5e-4), so a box coordinate of up to
    320 px is within ~0.2 px per rounding; a few roundings through the head stay under 1 px. Probabilities and
    sigmoid scores in [0, 1] stay within 1e-2."""
    with capture_logs() as logs:
        detector = convert_fp16(DETECTOR, tmp_path / "det.fp16.onnx")
        classifier = convert_fp16(CLASSIFIER, tmp_path / "cls.fp16.onnx")
    assert [e["event"] for e in logs].count("fp16.converted") == 2
    for path in (detector, classifier):
        model = onnx.load(str(path))
        # Weights are initializers (Ultralytics) or Constant nodes (paddle2onnx): float16 either way.
        tensors = [
            *model.graph.initializer,
            *(a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute),
        ]
        assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in tensors) > 0.5 * len(tensors)
        # Inputs and outputs stay float32: a device feeds the same tensors and reads the same outputs.
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    scenes = [preprocess(_scene(200 + i), DETECTOR_PRE)[0] for i in range(2)]
    det32, det16 = _run(DETECTOR, scenes), _run(detector, scenes)
    assert det16.dtype == np.float32 and det16.shape == det32.shape
    np.testing.assert_allclose(det16[:, :4], det32[:, :4], atol=1.0)
    np.testing.assert_allclose(det16[:, 4:], det32[:, 4:], atol=1e-2)

    lines, truth = _line_inputs()
    cls32, cls16 = _run(CLASSIFIER, lines), _run(classifier, lines)
    np.testing.assert_allclose(cls16, cls32, atol=1e-2)
    assert np.array_equal(cls16.argmax(axis=1), truth)
