"""The pure build-time semantic checks (``edgefleet_pipeline.semantics``): output shape vs postprocess kind,
probabilities vs logits and the softmax decision, input layout and [height, width] size; and the spec's
tri-state ``postprocess.softmax`` against bundle.json's bool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgefleet.contract.bundle_sections import Postprocess, Preprocess, TensorSpec, describe_size
from edgefleet.contract.bundle_spec import BundleSpec
from edgefleet.contract.errors import BundleFormatError
from edgefleet.contract.processing.postprocess import softmax
from edgefleet_pipeline.semantics import (
    are_probabilities,
    check_input,
    check_input_dtype,
    check_output_kind,
    looks_like,
    parse_imgsz,
    resolve_softmax,
)

LABELS_18 = tuple(f"c{i}" for i in range(18))


@pytest.mark.parametrize(
    ("shape", "classes", "kind"),
    [
        ((1, 2), None, "classification"),
        ((1, 1000, 1, 1), None, "classification"),
        ((1, 4), 4, "classification"),
        ((1, 4), 3, None),  # a classifier whose labels do not match fits no kind
        ((1, 22, 2100), None, "yolov8"),
        ((1, 22, 2100), 18, "yolov8"),
        ((1, 2100, 23), None, "yolov5"),
        ((1, 2100, 23), 18, "yolov5"),
        ((1, 6, 4), 2, "yolov8"),  # a tiny v8 head (fewer anchors than rows) told apart by its labels
        ((1, 4, 7), 2, "yolov5"),
        ((1, 2100, 22), 18, None),  # a transposed v8 output is neither
        ((2, 22, 2100), None, None),
        ((1, 3, 224, 224), None, None),
    ],
)
def test_looks_like(shape: tuple[int, ...], classes: int | None, kind: str | None) -> None:
    assert looks_like(shape, classes) == kind


@pytest.mark.parametrize(
    ("kind", "shape", "labels", "needles"),
    [
        (
            "classification",
            (1, 22, 2100),
            LABELS_18,
            [
                "'classification' expects the first output as [1, C]",
                "'output0' is [1, 22, 2100]",
                "use postprocess.kind 'yolov8'",
            ],
        ),
        ("yolov5", (1, 22, 2100), LABELS_18, ["[1, A, 5+C]", "that is a yolov8 layout [1, 4+C, A]", "'yolov8'"]),
        ("yolov5", (1, 22, 2100), (), ["that is a yolov8 layout"]),
        ("yolov8", (1, 2100, 23), (), ["that is a yolov5 layout [1, A, 5+C]", "use postprocess.kind 'yolov5'"]),
        ("yolov8", (1, 2), ("0", "180"), ["[1, 4+C, A]", "is [1, 2]", "use postprocess.kind 'classification'"]),
        ("yolov5", (1, 2100, 22), LABELS_18, ["transposed YOLOv8 output [1, A, 4+C] with C=18"]),
        ("yolov8", (1, 6, 4), ("a", "b", "c"), ["that is 2 classes, but 'labels' has 3", "fix 'labels'"]),
        ("classification", (1, 4), ("a", "b", "c"), ["that is 4 classes, but 'labels' has 3"]),
    ],
)
def test_check_output_kind_refuses_with_the_output_its_shape_and_the_fix(
    kind: str, shape: tuple[int, ...], labels: tuple[str, ...], needles: list[str]
) -> None:
    with pytest.raises(BundleFormatError) as info:
        check_output_kind(kind, "output0", shape, labels)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("kind", "shape", "labels", "classes"),
    [
        ("classification", (1, 2), ("0", "180"), 2),
        ("yolov8", (1, 22, 2100), LABELS_18, 18),
        ("yolov5", (1, 2100, 23), LABELS_18, 18),
        ("yolov8", (1, 6, 4), ("a", "b"), 2),
        ("yolov8", (1, 84, 8400), (), 80),
    ],
)
def test_check_output_kind_accepts_and_notes_the_class_count(
    kind: str, shape: tuple[int, ...], labels: tuple[str, ...], classes: int
) -> None:
    assert check_output_kind(kind, "out", shape, labels).endswith(f"with C={classes}")


finite_logits = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 4), st.integers(2, 12)),
    elements=st.floats(-30, 30, width=32),
)


@given(finite_logits)
def test_softmax_outputs_are_probabilities(logits: np.ndarray[Any, Any]) -> None:
    assert are_probabilities([softmax(logits)])


@given(finite_logits, st.floats(0.05, 0.95) | st.floats(1.05, 3.0))
def test_rescaled_probabilities_are_not(logits: np.ndarray[Any, Any], factor: float) -> None:
    # Rows summing to `factor` instead of 1 (a sigmoid head, a temperature left in) are not probabilities.
    assert not are_probabilities([softmax(logits) * np.float32(factor)])


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ([np.array([[0.8381, 0.1619]])], True),
        ([np.array([[0.8381, 0.1619]]), np.array([[0.2, 0.7]])], False),  # one golden input settles it
        ([np.array([[1.2, -0.2]])], False),  # sums to 1 but leaves [0, 1]
        ([np.array([[2.3, -1.1, 0.4]])], False),  # logits
        ([np.array([[np.nan, 1.0]])], False),
        ([np.array([[0.5, 0.5004]])], True),  # within the 1e-3 tolerance
        ([], False),
    ],
)
def test_are_probabilities_table(outputs: list[np.ndarray[Any, Any]], expected: bool) -> None:
    assert are_probabilities(outputs) is expected


PROBS = [np.array([[0.8381, 0.1619]], np.float32), np.array([[0.3, 0.7]], np.float32)]
LOGITS = [np.array([[2.3, -1.1, 0.4]], np.float32)]


def test_softmax_resolution_table() -> None:
    value, notes, warnings = resolve_softmax(None, PROBS, "prob")
    assert (value, warnings) == (False, []) and "resolved to false" in notes[0]
    value, notes, warnings = resolve_softmax(None, LOGITS, "logits")
    assert (value, warnings) == (True, []) and "resolved to true" in notes[0]
    assert resolve_softmax(False, PROBS, "prob") == (False, [], [])
    assert resolve_softmax(True, LOGITS, "logits") == (True, [], [])
    value, notes, warnings = resolve_softmax(False, LOGITS, "logits")
    assert value is False and "raw scores" in warnings[0]


def test_a_one_class_softmax_is_always_one_and_says_so() -> None:
    value, _, warnings = resolve_softmax(None, [np.array([[0.3]], np.float32)], "score")
    assert value is True and "always 1.0" in warnings[0]


def test_explicit_softmax_on_probabilities_is_a_double_softmax_with_its_numbers() -> None:
    with pytest.raises(BundleFormatError) as info:
        resolve_softmax(True, PROBS, "prob")
    text = str(info.value)
    # The issue's own figures: 0.8381 becomes 0.6629 under a second softmax.
    assert "double softmax" in text and "0.8381 would become 0.6629" in text and "set softmax: false" in text


def _pre(size: tuple[int, int], layout: str = "nchw") -> Preprocess:
    return Preprocess.from_dict({"size": list(size), "layout": layout}, source="t.spec.yaml")


def test_transposed_size_is_refused_naming_height_width_and_the_swap() -> None:
    with pytest.raises(BundleFormatError) as info:
        check_input(_pre((192, 48)), "x", (-1, 3, 48, 192))
    text = str(info.value)
    assert "preprocess.size is [height, width] = [192, 48]" in text
    assert "takes height x width [48, 192]" in text and "use size: [48, 192]" in text


@given(st.integers(1, 2048), st.integers(1, 2048), st.sampled_from(["nchw", "nhwc"]))
def test_static_size_check_property(h: int, w: int, layout: str) -> None:
    shape = (1, 3, h, w) if layout == "nchw" else (1, h, w, 3)
    notes, warnings = check_input(_pre((h, w), layout), "x", shape)
    assert warnings == [] and f"[height, width] = [{h}, {w}] matches" in notes[0]
    if h != w:
        with pytest.raises(BundleFormatError, match=rf"transposed: use size: \[{h}, {w}\]"):
            check_input(_pre((w, h), layout), "x", shape)


@pytest.mark.parametrize(
    ("layout", "shape", "needle"),
    [
        ("nchw", (1, 224, 224, 3), "set preprocess.layout: nhwc"),
        ("nhwc", (-1, 3, 224, 224), "set preprocess.layout: nchw"),
        ("nchw", (1, 1, 224, 224), "3-channel"),
    ],
)
def test_layout_against_the_channel_axis(layout: str, shape: tuple[int, ...], needle: str) -> None:
    with pytest.raises(BundleFormatError, match=needle):
        check_input(_pre((224, 224), layout), "x", shape)


def test_input_dtype_must_be_what_preprocess_produces() -> None:
    check_input_dtype(_pre((8, 8)), TensorSpec("x", "float32", (1, 3, 8, 8)))
    check_input_dtype(_pre((8, 8)), TensorSpec("ids", "int64", (1, 8)))  # not an image input
    with pytest.raises(BundleFormatError, match=r"takes uint8; set preprocess\.dtype: uint8"):
        check_input_dtype(_pre((8, 8)), TensorSpec("x", "uint8", (1, 3, 8, 8)))
    with pytest.raises(BundleFormatError, match="takes int8; preprocess produces float32, float16, uint8"):
        check_input_dtype(_pre((8, 8)), TensorSpec("x", "int8", (1, 3, 8, 8)))


def test_one_static_spatial_dim_is_checked_and_a_dynamic_input_is_noted() -> None:
    with pytest.raises(BundleFormatError, match=r"takes height x width \[48, \?\]; use size: \[48, 100\]"):
        check_input(_pre((32, 100)), "x", (-1, 3, 48, "width"))
    notes, warnings = check_input(_pre((48, 192)), "x", (-1, 3, "h", "w"))
    assert warnings == []
    assert "taken as [height, width] = [48, 192] (48 high, 192 wide)" in notes[0]
    assert "cannot be checked against the model" in notes[0]


def test_imgsz_metadata_is_the_size_of_a_dynamic_export() -> None:
    dynamic = (-1, 3, "height", "width")
    assert check_input(_pre((320, 640)), "images", dynamic, imgsz=(320, 640))[1] == []
    with pytest.raises(BundleFormatError, match=r"imgsz \[height, width\] = \[320, 640\].*use size: \[320, 640\]"):
        check_input(_pre((640, 320)), "images", dynamic, imgsz=(320, 640))
    _, warnings = check_input(_pre((480, 480)), "images", dynamic, imgsz=(320, 320))
    assert "differs from the export's imgsz [320, 320]" in warnings[0]


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("[320, 320]", (320, 320)),
        ("[384, 640]", (384, 640)),
        ("640", (640, 640)),
        ("[0, 3]", None),
        ("x", None),
        (None, None),
    ],
)
def test_parse_imgsz(raw: str | None, parsed: tuple[int, int] | None) -> None:
    assert parse_imgsz(raw) == parsed


def test_describe_size_names_the_axes() -> None:
    assert describe_size(_pre((48, 192))) == "48x192 (height x width)"


def _spec(post: dict[str, Any]) -> BundleSpec:
    doc = {"name": "m", "version": "1.0.0", "model": "m.onnx", "preprocess": {"size": [8, 8]}}
    return BundleSpec.from_dict({**doc, "postprocess": post, "latency": {"sla_ms": 5}}, source="s", base_dir=Path())


def test_softmax_is_tri_state_in_a_spec_and_a_bool_in_bundle_json() -> None:
    assert _spec({"kind": "classification"}).postprocess.softmax is None
    assert not _spec({"kind": "classification"}).resolved
    assert _spec({"kind": "classification", "softmax": False}).postprocess.softmax is False
    assert _spec({"kind": "classification", "softmax": True}).resolved
    # bundle.json: absent means true, what every bundle built before the checks meant.
    assert Postprocess.from_dict({"kind": "classification"}).softmax is True
    assert Postprocess.from_dict({"kind": "classification", "softmax": False}).softmax is False
    with pytest.raises(BundleFormatError, match=r"'postprocess\.softmax' must be true or false, got 'no'"):
        _spec({"kind": "classification", "softmax": "no"})
