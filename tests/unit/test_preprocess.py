"""Pre-processing: spec validation, letterbox geometry, normalisation and the inverse transform."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract.bundle_sections import Preprocess
from edgefleet.contract.errors import BundleFormatError, ContractError, FrameError
from edgefleet.contract.processing.preprocess import letterbox_geometry, preprocess, resize_frame

YOLO = {"resize": "letterbox", "size": [640, 640], "color": "rgb", "scale": 1 / 255, "pad_value": 114}


def test_from_mapping_reads_every_field() -> None:
    spec = Preprocess.from_dict(
        {
            "resize": "stretch",
            "size": [224, 320],
            "color": "bgr",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "scale": 0.00392156862745098,
            "layout": "nhwc",
            "dtype": "float16",
            "pad_value": 0,
        }
    )
    assert spec.size == (224, 320)
    assert (spec.resize, spec.color, spec.layout, spec.dtype, spec.pad_value) == (
        "stretch",
        "bgr",
        "nhwc",
        "float16",
        0,
    )
    assert spec.mean == (0.485, 0.456, 0.406)
    assert spec.input_shape == (1, 224, 320, 3)


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        (
            {"size": [0, 640]},
            "'preprocess.size' must be [height, width] with positive integers, got [0, 640]",
        ),
        ({"size": [640]}, "'preprocess.size'"),
        ({}, "'preprocess.size' is required"),
        (
            {"size": [64, 64], "resize": "crop"},
            "'preprocess.resize' must be one of letterbox, stretch, got 'crop'",
        ),
        ({"size": [64, 64], "color": "rgba"}, "got 'rgba'"),
        ({"size": [64, 64], "mean": [1, 2]}, "'preprocess.mean' must have 3 values (one per channel), got [1, 2]"),
        (
            {"size": [64, 64], "std": [1, 0, 1]},
            "'preprocess.std[1]' must be > 0, got 0",
        ),
        ({"size": [64, 64], "scale": -5}, "'preprocess.scale' must be > 0, got -5"),
        ({"size": [64, 64], "scale": True}, "'preprocess.scale' must be a number, got True"),
        ({"size": [64, 64], "layout": "chw"}, "'preprocess.layout'"),
        ({"size": [64, 64], "dtype": "int8"}, "'preprocess.dtype' must be one of float32, float16, uint8"),
        (
            {"size": [64, 64], "pad_value": 300},
            "'preprocess.pad_value' must be <= 255, got 300",
        ),
        ({"size": [64, 64], "dtype": "uint8", "scale": 0.5}, "dtype 'uint8' (raw pixels)"),
        ({"size": [64, 64], "mystery": 1}, "unknown field 'preprocess.mystery'"),
    ],
)
def test_from_mapping_rejects_with_field_and_value(section: dict[str, Any], needle: str) -> None:
    with pytest.raises(BundleFormatError) as info:
        Preprocess.from_dict(section)
    assert needle in str(info.value)
    # A bad section is a malformed bundle for code guarding untrusted input with ContractError.
    assert isinstance(info.value, ContractError)


def test_letterbox_geometry_hand_computed() -> None:
    # 480x640 (HxW) into 640x640: ratio min(640/480, 640/640) = 1 → 480x640 inner, 80 px bars top and bottom.
    assert letterbox_geometry((480, 640), (640, 640)) == (480, 640, 80, 0)
    # 720x1280 into 640x640: ratio 0.5 → 360x640, pad (640-360)/2 = 140 on top.
    assert letterbox_geometry((720, 1280), (640, 640)) == (360, 640, 140, 0)
    # Portrait 1000x500 into 320x320: ratio 0.32 → 320x160, pad 80 left.
    assert letterbox_geometry((1000, 500), (320, 320)) == (320, 160, 0, 80)
    # Odd remainder goes to bottom/right: 100x301 into 64x64 → ratio 64/301 → 21x64, top (64-21)//2 = 21.
    assert letterbox_geometry((100, 301), (64, 64)) == (21, 64, 21, 0)


def test_letterbox_pads_with_pad_value_and_keeps_content() -> None:
    spec = Preprocess.from_dict(YOLO)
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :, 0] = 10  # B
    frame[:, :, 2] = 200  # R
    boxed, transform = resize_frame(frame, spec)
    assert boxed.shape == (640, 640, 3)
    assert (boxed[:80] == 114).all() and (boxed[560:] == 114).all()
    assert (boxed[80:560] == frame).all()
    assert (transform.scale_x, transform.scale_y, transform.pad_x, transform.pad_y) == (1.0, 1.0, 0.0, 80.0)


def test_tensor_is_rgb_nchw_scaled() -> None:
    spec = Preprocess.from_dict(YOLO)
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 200
    x, _ = preprocess(frame, spec)
    assert x.shape == (1, 3, 640, 640) and x.dtype == np.float32
    # Channel 0 is R after BGR→RGB.
    np.testing.assert_allclose(x[0, :, 300, 300], np.array([200, 20, 10], np.float32) / 255, rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 0, 0], np.full(3, 114 / 255, np.float32), rtol=1e-6)


def test_mean_std_applied_per_channel_in_model_colour_order() -> None:
    spec = Preprocess.from_dict(
        {
            "resize": "stretch",
            "size": [4, 4],
            "color": "bgr",
            "mean": [0.5, 0.25, 0.0],
            "std": [0.5, 0.25, 2.0],
            "scale": 1 / 255,
        }
    )
    frame = np.full((8, 8, 3), 255, np.uint8)
    x, transform = preprocess(frame, spec)
    # (1 - 0.5)/0.5 = 1, (1 - 0.25)/0.25 = 3, (1 - 0)/2 = 0.5
    np.testing.assert_allclose(x[0, :, 0, 0], [1.0, 3.0, 0.5], rtol=1e-6)
    assert (transform.scale_x, transform.scale_y) == (0.5, 0.5)


@pytest.mark.parametrize(("layout", "dtype"), [("nhwc", "float32"), ("nchw", "float16"), ("nchw", "uint8")])
def test_layouts_and_dtypes_agree_with_the_float32_nchw_reference(layout: str, dtype: str) -> None:
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ident: dict[str, Any] = {"scale": 1.0} if dtype == "uint8" else {}
    base = {"size": [32, 48], "resize": "letterbox", **ident}
    ref, _ = preprocess(frame, Preprocess.from_dict({**base, "dtype": "float32"}))
    x, _ = preprocess(frame, Preprocess.from_dict({**base, "layout": layout, "dtype": dtype}))
    assert x.dtype == np.dtype(dtype)
    got = x.astype(np.float32)
    if layout == "nhwc":
        got = got.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


def test_rejects_non_bgr_frames() -> None:
    spec = Preprocess.from_dict(YOLO)
    with pytest.raises(FrameError, match=r"got dtype float32 shape \(4, 4, 3\)"):
        preprocess(np.zeros((4, 4, 3), np.float32), spec)
    with pytest.raises(FrameError, match=r"shape \(4, 4\)"):
        preprocess(np.zeros((4, 4), np.uint8), spec)


@settings(max_examples=150, deadline=None)
@given(
    fh=st.integers(16, 1200),
    fw=st.integers(16, 1200),
    th=st.sampled_from([32, 64, 320, 640]),
    tw=st.sampled_from([32, 64, 320, 640]),
    fx=st.floats(0.05, 0.95),
    fy=st.floats(0.05, 0.95),
)
def test_letterbox_transform_round_trips_points(fh: int, fw: int, th: int, tw: int, fx: float, fy: float) -> None:
    spec = Preprocess.from_dict({"size": [th, tw]})
    frame = np.zeros((fh, fw, 3), np.uint8)
    _, t = resize_frame(frame, spec)
    new_h, new_w, top, left = letterbox_geometry((fh, fw), (th, tw))
    assert top >= 0 and top + new_h <= th and left >= 0 and left + new_w <= tw
    assert new_h == th or new_w == tw  # one side always fills the input
    # A frame point mapped forward into the input and back lands where it started.
    px, py = fx * fw, fy * fh
    forward = np.array([[px * t.scale_x + t.pad_x, py * t.scale_y + t.pad_y] * 2], np.float32)
    back = t.to_frame(forward)
    np.testing.assert_allclose(back[0, :2], [px, py], rtol=1e-4, atol=1e-2)


def test_to_frame_undoes_letterbox_and_clips() -> None:
    spec = Preprocess.from_dict(YOLO)
    _, t = resize_frame(np.zeros((720, 1280, 3), np.uint8), spec)  # scale 0.5, pad_y 140
    boxes = np.array([[100, 190, 200, 290], [-10, 100, 700, 600]], np.float32)
    out = t.to_frame(boxes)
    np.testing.assert_allclose(out[0], [200, 100, 400, 300])
    # Second box extends into the padding and off the input: clipped to the 1280x720 frame.
    np.testing.assert_allclose(out[1], [0, 0, 1280, 720])
