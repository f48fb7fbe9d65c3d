"""``convert_fp16`` on a generated classifier and on inputs it must refuse; the real exports are converted in
``tests/integration/test_quantize_real_models.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from structlog.testing import capture_logs

from edgefleet_pipeline.errors import PrecisionUnavailableError
from edgefleet_pipeline.fp16 import convert_fp16, float32_casts
from edgefleet_testing.modelgen import make_classifier


def test_a_generated_classifier_converts_and_keeps_float32_io(tmp_path: Path) -> None:
    source = make_classifier(tmp_path / "cls.onnx", size=16, num_classes=3)
    with capture_logs() as logs:
        out = convert_fp16(source, tmp_path / "cls.fp16.onnx")
    assert [e["event"] for e in logs] == ["fp16.converted"]
    model = onnx.load(str(out))
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer if t.data_type != 7)
    x = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    fp32 = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    fp16 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert fp16.dtype == np.float32
    # float16 keeps ~3 significant decimal digits; logits of this size stay within 1e-2.
    np.testing.assert_allclose(fp16, fp32, atol=1e-2)


def test_casts_feeding_only_float32_ops_are_kept_float32() -> None:
    h = onnx.helper
    graph = h.make_graph(
        [
            h.make_node("Shape", ["x"], ["s"], name="shape"),
            h.make_node("Cast", ["s"], ["sf"], name="to_range", to=onnx.TensorProto.FLOAT),
            h.make_node("Range", ["zero", "sf", "one"], ["r"], name="range"),
            h.make_node("Cast", ["s"], ["sm"], name="to_mul", to=onnx.TensorProto.FLOAT),
            h.make_node("Mul", ["sm", "sm"], ["y"], name="mul"),
        ],
        "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1]), h.make_tensor_value_info("r", 1, None)],
    )
    assert float32_casts(h.make_model(graph)) == ["to_range"]


def test_unreadable_models_are_refused_with_the_step_that_failed(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model")
    with pytest.raises(PrecisionUnavailableError, match=r"fp16: cannot load the model .*pass the exported \.onnx"):
        convert_fp16(junk, tmp_path / "out.onnx")
    with pytest.raises(PrecisionUnavailableError, match="cannot load the model"):
        convert_fp16(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
