"""TensorRT INT8 calibration tables: written from a calibration run's ranges, parsed back with checks.

Format (TensorRT's native calibration cache, as ``IInt8Calibrator::writeCalibrationCache`` writes it and
onnxruntime's TensorRT EP reads it with ``trt_int8_use_native_calibration_table=1``)::

    TRT-8601-EntropyCalibration2
    images: 3c010a14
    conv_1: 3d8f5c29

The first line is ``TRT-<version>-<algorithm>``; then one ``<tensor>: <hex>`` line per tensor, where hex is
the IEEE-754 float32 bit pattern (8 hex digits, big-endian) of the *scale*. TensorRT quantization is
symmetric: ``scale = max(|lowest|, |highest|) / 127`` and the EP sets the dynamic range ``±scale·127``.

Decisions:
- We write the native text form ourselves instead of ``onnxruntime.quantization.quant_utils.
  write_calibration_table``: that helper's ``calibration.cache`` is ``name value`` text (not the TensorRT
  format), its value is ``max(highest, lowest)`` — not the symmetric ``max(|·|)`` — and its flatbuffers
  file is only readable by onnxruntime. The native table is readable by both TensorRT and the EP.
- The algorithm name in the header follows the calibration method (``MinMaxCalibration`` for minmax,
  ``EntropyCalibration2`` otherwise, TensorRT's names); the version ``8601`` (TensorRT 8.6.1) is the oldest
  JetPack 5 release we target. The EP only checks the ``TRT-`` prefix.
- A tensor whose range is zero on both sides gets the smallest positive scale instead of 0: a zero scale
  makes TensorRT divide by zero, and such a tensor is constant anyway.
- ORT's limit: the TensorRT EP applies a calibration table only to a non-QDQ (FP32) model; a QDQ model
  carries its own scales. So a bundle keeps the FP32 ``model`` for the TensorRT path, with this table as
  artifact ``calibration_table``, and the QDQ ``model.int8`` for CPU/CUDA.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgefleet.contract.user_files import read_user_text
from edgefleet_pipeline.errors import CalibrationTableError

TRT_VERSION_TAG = "8601"
INT8_MAX = 127.0
_HEADER_RE = re.compile(r"^TRT-(\d+)-([A-Za-z]+Calibration\d*)$")
_LINE_RE = re.compile(r"^([^:\s](?:[^:]*[^:\s])?): ([0-9a-fA-F]{1,8})$")
_TINY_SCALE = float(np.finfo(np.float32).tiny)


def trt_algorithm(method: str) -> str:
    """TensorRT's calibrator name for a calibration method."""
    return "MinMaxCalibration" if method == "minmax" else "EntropyCalibration2"


def symmetric_scales(ranges: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """``{tensor: max(|lowest|, |highest|) / 127}`` as float32 values, zero ranges raised to the tiniest."""
    scales: dict[str, float] = {}
    for name, (low, high) in ranges.items():
        amax = max(abs(low), abs(high))
        if not np.isfinite(amax):
            raise CalibrationTableError(
                f"tensor '{name}': range ({low}, {high}) is not finite; check the calibration images"
            )
        scales[name] = float(np.float32(max(amax / INT8_MAX, _TINY_SCALE)))
    return scales


def _hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def format_trt_calibration_table(scales: Mapping[str, float], *, algorithm: str = "EntropyCalibration2") -> str:
    """The table text for ``{tensor: scale}``; tensors in sorted order, so equal inputs give equal bytes."""
    header = f"TRT-{TRT_VERSION_TAG}-{algorithm}"
    if not _HEADER_RE.match(header):
        raise CalibrationTableError(f"algorithm {algorithm!r} does not make a valid header ({header!r})")
    lines = [header]
    for name in sorted(scales):
        # The TensorRT EP splits each line at the first ':', so a name holding one cannot be read back.
        if not name or name != name.strip() or "\n" in name or ":" in name:
            raise CalibrationTableError(
                f"tensor name {name!r} cannot be written to a TensorRT table (blank, padded, newline or ':'); "
                "rename the tensor in the model"
            )
        scale = scales[name]
        if not (np.isfinite(scale) and scale > 0):
            raise CalibrationTableError(f"tensor '{name}': scale must be finite and > 0, got {scale}")
        lines.append(f"{name}: {_hex(scale)}")
    return "\n".join(lines) + "\n"


def write_trt_calibration_table(
    ranges: Mapping[str, tuple[float, float]], path: Path | str, *, method: str = "entropy"
) -> Path:
    """Write the table for ``{tensor: (lowest, highest)}`` ranges to ``path`` (a ``.cache`` file)."""
    if not ranges:
        raise CalibrationTableError("no tensor ranges to write; the calibration run measured nothing")
    path = Path(path)
    text = format_trt_calibration_table(symmetric_scales(ranges), algorithm=trt_algorithm(method))
    path.write_text(text, encoding="utf-8")
    return path


def parse_trt_calibration_table(text: str, *, source: str = "calibration table") -> tuple[str, dict[str, float]]:
    """``(header, {tensor: scale})`` from table text; every line is checked, errors name the line."""
    lines = text.splitlines()
    if not lines or not _HEADER_RE.match(lines[0].strip()):
        first = lines[0] if lines else ""
        raise CalibrationTableError(
            f"{source}: line 1 must be a header like 'TRT-8601-EntropyCalibration2', got {first[:60]!r}; "
            "is this a TensorRT calibration table?"
        )
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        match = _LINE_RE.match(line.rstrip("\r"))
        if match is None:
            raise CalibrationTableError(
                f"{source}: line {number} must be '<tensor>: <8 hex digits>', got {line[:80]!r}"
            )
        name, hexbits = match.groups()
        if name in scales:
            raise CalibrationTableError(f"{source}: line {number} repeats tensor '{name}'")
        (scale,) = struct.unpack(">f", bytes.fromhex(hexbits.rjust(8, "0")))
        if not (np.isfinite(scale) and scale > 0):
            raise CalibrationTableError(
                f"{source}: line {number}: tensor '{name}' has scale {scale} (0x{hexbits}); scales must be "
                "finite and > 0"
            )
        scales[name] = float(scale)
    if not scales:
        raise CalibrationTableError(f"{source}: has a header but no tensor lines")
    return lines[0].strip(), scales


def read_trt_calibration_table(path: Path | str) -> dict[str, float]:
    """``{tensor: scale}`` from a TensorRT calibration table file, format checked."""
    path = Path(path)
    text = read_user_text(path, CalibrationTableError, what="calibration table")
    return parse_trt_calibration_table(text, source=str(path))[1]
