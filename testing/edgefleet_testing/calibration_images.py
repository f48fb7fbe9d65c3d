"""Generated calibration and evaluation images for the precision builds on the real models (tests and bench).

- ``write_faces``: blurred face-like drawings (skin ellipse, eyes, brows, nose, mouth, sometimes hair) on dark
  backgrounds, one or two per image. The real YOLOv8n export (nudenet's 18 classes) detects faces in them
  (about two FP32 boxes per image at conf 0.25), so a detector's mAP rests on real boxes. On document images
  it detects nothing: that is the "too few FP32 boxes" case.
- ``write_text_lines``: 48x192 BGR text lines, upright or turned 180 degrees (the text-direction classifier's
  two classes), on paper-coloured backgrounds with sensor noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

_WORDS = "invoice total amount due date payment account customer order price tax balance 2025 12.50".split()


def face_image(rng: np.random.Generator, size: int = 320) -> NDArray[np.uint8]:
    """One BGR ``size``x``size`` image with one or two face-like drawings."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = rng.integers(20, 90, 3)
    count = int(rng.integers(1, 3))
    for k in range(count):
        scale = float(rng.uniform(0.9, 1.3)) * (0.75 if count == 2 else 1.0)
        cx = int(size / 2 + (k - (count - 1) / 2) * size * 0.45 + rng.integers(-15, 15))
        cy = int(size / 2 + rng.integers(-20, 20))
        a, b = int(70 * scale), int(95 * scale)
        skin = (int(rng.integers(110, 160)), int(rng.integers(140, 180)), int(rng.integers(190, 235)))
        if rng.random() < 0.5:
            cv2.ellipse(img, (cx, cy - int(25 * scale)), (a + 12, b), 0, 180, 360, (20, 25, 30), -1)
        cv2.ellipse(img, (cx, cy), (a, b), 0, 0, 360, skin, -1)
        for side in (-1, 1):
            ex, ey = cx + side * int(28 * scale), cy - int(18 * scale)
            cv2.ellipse(img, (ex, ey), (int(14 * scale), int(7 * scale)), 0, 0, 360, (240, 240, 240), -1)
            cv2.circle(img, (ex, ey), int(6 * scale), (40, 50, 70), -1)
            brow = ((ex - int(15 * scale), ey - int(15 * scale)), (ex + int(15 * scale), ey - int(17 * scale)))
            cv2.line(img, brow[0], brow[1], (30, 30, 40), max(1, int(4 * scale)))
        shade = (skin[0] - 40, skin[1] - 40, skin[2] - 40)
        cv2.line(img, (cx, cy - int(5 * scale)), (cx - int(6 * scale), cy + int(22 * scale)), shade, 2)
        cv2.ellipse(img, (cx, cy + int(45 * scale)), (int(22 * scale), int(8 * scale)), 0, 0, 360, (90, 90, 180), -1)
    blurred: NDArray[Any] = cv2.GaussianBlur(img, (0, 0), 3)
    return np.clip(blurred + rng.normal(0, 6, blurred.shape), 0, 255).astype(np.uint8)


def write_faces(directory: Path, count: int, *, seed: int) -> Path:
    """``count`` face images ``face_0000.png``… into ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(directory / f"face_{i:04d}.png"), face_image(rng))
    return directory


def text_line(rng: np.random.Generator, *, turned: bool) -> NDArray[np.uint8]:
    """One 48x192 BGR line of dark text on paper, turned 180 degrees when ``turned``."""
    paper = int(rng.integers(200, 250))
    img = np.full((48, 192, 3), paper, np.uint8)
    words = " ".join(rng.choice(_WORDS, size=3))
    ink = int(rng.integers(10, 70))
    # Text this large fills the line as the classifier expects: FP32 is confident (>= 0.98) on every line.
    cv2.putText(img, words, (2, 34), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (ink, ink, ink), 2, cv2.LINE_AA)
    line = cv2.rotate(img, cv2.ROTATE_180) if turned else img
    return np.clip(line + rng.normal(0, 5, line.shape), 0, 255).astype(np.uint8)


def write_text_lines(directory: Path, count: int, *, seed: int) -> Path:
    """``count`` text lines ``line_0000.png``… into ``directory``, every other one turned 180 degrees."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(directory / f"line_{i:04d}.png"), text_line(rng, turned=i % 2 == 1))
    return directory
