"""TensorRT calibration tables: symmetric scales, the native text format, and its checked parser."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet_pipeline.errors import CalibrationTableError
from edgefleet_pipeline.trt_table import (
    format_trt_calibration_table,
    parse_trt_calibration_table,
    read_trt_calibration_table,
    symmetric_scales,
    write_trt_calibration_table,
)

_names = st.text(
    alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="._/-"), min_size=1, max_size=30
)
_bounds = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


def test_scale_is_max_abs_over_127() -> None:
    scales = symmetric_scales({"a": (-2.54, 1.0), "b": (0.0, 12.7), "c": (0.0, 0.0)})
    assert scales["a"] == pytest.approx(2.54 / 127, rel=1e-6)
    assert scales["b"] == pytest.approx(0.1, rel=1e-6)
    assert scales["c"] > 0  # a zero scale would make TensorRT divide by zero


def test_known_bytes() -> None:
    text = format_trt_calibration_table({"images": 1.0 / 127, "conv_1": 0.5}, algorithm="EntropyCalibration2")
    one_127 = struct.pack(">f", np.float32(1.0 / 127)).hex()
    assert text == f"TRT-8601-EntropyCalibration2\nconv_1: 3f000000\nimages: {one_127}\n"


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_names, st.tuples(_bounds, _bounds), min_size=1, max_size=20))
def test_round_trip_matches_ranges(
    tmp_path_factory: pytest.TempPathFactory, ranges: dict[str, tuple[float, float]]
) -> None:
    path = tmp_path_factory.mktemp("table") / "calibration.cache"
    write_trt_calibration_table(ranges, path, method="minmax")
    assert path.read_text().splitlines()[0] == "TRT-8601-MinMaxCalibration"
    scales = read_trt_calibration_table(path)
    assert set(scales) == set(ranges)
    for name, (low, high) in ranges.items():
        expected = max(abs(low), abs(high)) / 127
        assert scales[name] == pytest.approx(max(expected, float(np.finfo(np.float32).tiny)), rel=1e-6)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "line 1 must be a header"),
        ("calibration table\nx: 3f000000\n", "line 1 must be a header"),
        ("TRT-8601-EntropyCalibration2\n", "no tensor lines"),
        ("TRT-8601-EntropyCalibration2\nx 3f000000\n", "line 2 must be '<tensor>: <8 hex digits>'"),
        ("TRT-8601-EntropyCalibration2\nx: 3f0000000\n", "line 2"),
        ("TRT-8601-EntropyCalibration2\nx: zz\n", "line 2"),
        ("TRT-8601-EntropyCalibration2\nx: 3f000000\nx: 3f000000\n", "repeats tensor 'x'"),
        ("TRT-8601-EntropyCalibration2\nx: 7fc00000\n", "finite and > 0"),
        ("TRT-8601-EntropyCalibration2\nx: 00000000\n", "finite and > 0"),
    ],
)
def test_parser_rejects_malformed_tables(text: str, fragment: str) -> None:
    with pytest.raises(CalibrationTableError) as info:
        parse_trt_calibration_table(text, source="t.cache")
    assert fragment in str(info.value)
    assert str(info.value).startswith("t.cache:")


def test_writer_rejects_names_the_tensorrt_ep_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(CalibrationTableError, match="':'"):
        write_trt_calibration_table({"scope:0": (0.0, 1.0)}, tmp_path / "t.cache")
    with pytest.raises(CalibrationTableError, match="not finite"):
        write_trt_calibration_table({"x": (0.0, float("inf"))}, tmp_path / "t.cache")
    with pytest.raises(CalibrationTableError, match="no tensor ranges"):
        write_trt_calibration_table({}, tmp_path / "t.cache")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CalibrationTableError, match="not found"):
        read_trt_calibration_table(tmp_path / "absent.cache")
