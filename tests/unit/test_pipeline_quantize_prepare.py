"""Quantization pre-processing routes on small generated models, and the CPU feature check behind reduce_range.

The real exports (an Ultralytics YOLOv8n, a paddle2onnx classifier) are in
``tests/integration/test_quantize_real_models.py``; here each route and each failure message is pinned on
graphs built for the purpose: a clean classifier, one ORT's symbolic inference asserts on, one no route can
shape-infer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from structlog.testing import capture_logs

from edgefleet.contract.bundle_sections import Preprocess
from edgefleet_pipeline.cpu_features import cpu_has_vnni, reduce_range_recommended, vnni_in_cpuinfo
from edgefleet_pipeline.errors import QuantizationError
from edgefleet_pipeline.quantize import fixed_input_model, prepare_for_quantization, prepare_model
from edgefleet_testing.modelgen import make_classifier

SKYLAKE = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512bw avx512vl
bugs\t\t: spectre_v1
"""
CASCADE_LAKE = SKYLAKE.replace("avx512vl", "avx512vl avx512_vnni")
ALDER_LAKE = SKYLAKE.replace("avx512f avx512dq avx512bw avx512vl", "avx_vnni")
SAPPHIRE_RAPIDS = SKYLAKE.replace("avx512vl", "avx512vl amx_bf16 amx_tile amx_int8")
RASPBERRY_PI = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid asimddp
CPU implementer\t: 0x41
"""


def _two_node_model(path: Path, node: onnx.NodeProto, *, opsets: list[onnx.OperatorSetIdProto] | None = None) -> Path:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


# --- cpu_features -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SKYLAKE, False),
        (CASCADE_LAKE, True),
        (ALDER_LAKE, True),
        (SAPPHIRE_RAPIDS, True),
        (RASPBERRY_PI, None),
        ("", None),
    ],
    ids=["skylake", "cascade-lake", "alder-lake", "sapphire-rapids", "raspberry-pi", "empty"],
)
def test_vnni_is_read_from_the_cpuinfo_flags(text: str, expected: bool | None) -> None:
    assert vnni_in_cpuinfo(text) is expected


def test_reduce_range_is_recommended_only_on_x86_without_vnni(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text(SKYLAKE)
    new.write_text(CASCADE_LAKE)
    assert cpu_has_vnni(old, machine="x86_64") is False
    assert reduce_range_recommended(old, machine="x86_64") is True
    assert cpu_has_vnni(new, machine="x86_64") is True
    assert reduce_range_recommended(new, machine="x86_64") is False
    # ARM, or a cpuinfo that cannot be read: unknown, and reduce_range (which costs accuracy) is not advised.
    assert cpu_has_vnni(old, machine="aarch64") is None
    assert reduce_range_recommended(old, machine="aarch64") is False
    assert cpu_has_vnni(tmp_path / "missing", machine="x86_64") is None
    assert reduce_range_recommended(tmp_path / "missing", machine="x86_64") is False


def test_this_machine_answers_without_raising() -> None:
    assert cpu_has_vnni() in (True, False, None)
    assert reduce_range_recommended() is (cpu_has_vnni() is False)


# --- prepare_model ------------------------------------------------------------------------------------------


def test_a_clean_model_takes_the_symbolic_route(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "cls.onnx", size=16, num_classes=3)
    with capture_logs() as logs:
        prepared = prepare_model(model, tmp_path / "prepared.onnx")
    assert prepared.route == "symbolic"
    assert prepared.attempts == ()
    assert prepared.path.is_file()
    assert [e["route"] for e in logs if e["event"] == "quantize.prepared"] == ["symbolic"]
    # The thin wrapper existing callers use returns the same file.
    assert prepare_for_quantization(model, tmp_path / "again.onnx") == tmp_path / "again.onnx"


def test_an_assertion_in_symbolic_inference_falls_back_and_names_the_node(tmp_path: Path) -> None:
    # ORT's symbolic Concat rule asserts (a bare AssertionError, empty message) on an out-of-range axis;
    # ONNX's own inference, not strict, goes on.
    model = _two_node_model(tmp_path / "m.onnx", helper.make_node("Concat", ["x", "x"], ["y"], name="cat0", axis=7))
    prepared = prepare_model(model, tmp_path / "prepared.onnx")
    assert prepared.route == "onnx-shapes"
    assert len(prepared.attempts) == 1
    (attempt,) = prepared.attempts
    assert attempt.startswith("symbolic: AssertionError in ORT's symbolic shape inference")
    assert "node 'cat0', op Concat" in attempt


def test_fixed_batch_fixes_the_batch_and_the_symbolic_spatial_dims(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "cls.onnx", size=16, num_classes=3)
    source = onnx.load(str(model))
    # Make the spatial dims symbolic too, as Ultralytics and paddle2onnx exports have them.
    for index, name in ((2, "height"), (3, "width")):
        source.graph.input[0].type.tensor_type.shape.dim[index].dim_param = name
    source.graph.value_info.append(helper.make_tensor_value_info("stale", TensorProto.FLOAT, ["batch", 16]))
    pre = Preprocess(size=(16, 16))
    fixed = fixed_input_model(source, pre)
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 16, 16]
    assert len(fixed.graph.value_info) == 0
    # The source is untouched.
    assert source.graph.input[0].type.tensor_type.shape.dim[0].dim_param

    symbolic = tmp_path / "symbolic.onnx"
    onnx.save(source, str(symbolic))
    prepared = prepare_model(symbolic, tmp_path / "prepared.onnx", pre=pre, routes=("fixed-batch",))
    assert prepared.route == "fixed-batch"
    written = onnx.load(str(prepared.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in written] == [1, 3, 16, 16]


def test_when_every_route_fails_the_error_names_node_op_routes_and_what_to_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = _two_node_model(
        tmp_path / "m.onnx", helper.make_node("Foo", ["x"], ["y"], name="foo0", domain="com.example")
    )
    with pytest.raises(QuantizationError) as caught:
        prepare_model(model, tmp_path / "prepared.onnx", pre=Preprocess(size=(8, 8)))
    message = str(caught.value)
    assert "failed on every route" in message
    for route in ("symbolic:", "onnx-shapes:", "fixed-batch:"):
        assert route in message
    assert "node 'foo0', op Foo" in message
    assert "--precision fp32" in message and "fixed batch" in message
    assert not (tmp_path / "prepared.onnx").exists()
    # Nothing left behind in the working directory by ORT's tooling.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

    # And again: the same model fails the same way (no state kept between calls).
    with pytest.raises(QuantizationError) as again:
        prepare_model(model, tmp_path / "prepared.onnx")
    assert "node 'foo0', op Foo" in str(again.value)


def test_unknown_routes_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "cls.onnx", size=16, num_classes=3)
    with pytest.raises(QuantizationError, match="non-empty selection of symbolic, onnx-shapes, fixed-batch"):
        prepare_model(model, tmp_path / "p.onnx", routes=("magic",))  # type: ignore[arg-type]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model")
    with pytest.raises(QuantizationError, match="cannot be loaded as an ONNX model"):
        prepare_model(junk, tmp_path / "p.onnx")


def test_prepared_model_still_computes_what_the_source_computes(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "cls.onnx", size=16, num_classes=3)
    x = np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32)
    outputs = []
    for route in ("symbolic", "onnx-shapes", "fixed-batch"):
        prepared = prepare_model(model, tmp_path / f"{route}.onnx", pre=Preprocess(size=(16, 16)), routes=(route,))
        session = ort.InferenceSession(str(prepared.path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6)
    np.testing.assert_allclose(outputs[0], outputs[2], rtol=1e-6)
