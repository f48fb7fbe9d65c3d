"""Frame sources: where the runtime's frames come from, paced to a frame rate.

``open_source(spec)`` accepts:

- ``synthetic`` / ``synthetic:FPS`` — deterministic moving shapes over a textured background (640x480 by
  default). Frame *i* depends only on (seed, i), so tests and benchmarks see the same pixels every run.
- ``images:DIR`` — the ``.jpg`` / ``.jpeg`` / ``.png`` files in DIR, sorted by name, looped forever.
- ``video:FILE`` — a video file through ``cv2.VideoCapture``, rewound at the end.

Each yields ``Frame(frame_id, image_bgr, captured_at)`` with ids counting up from 0 and ``captured_at``
from the injected wall clock. Pacing keeps an absolute schedule (frame *i* is due at ``start + i/fps``) so
small sleeps do not accumulate drift; a consumer that falls behind by more than a frame resets the schedule
instead of receiving a burst. ``fps=0`` disables pacing. Clocks and sleep are injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray

from edge_runtime.inference.errors import FrameSourceError
from edgefleet.contract.shown import shown

ACCEPTED_FORMS = "'synthetic', 'synthetic:FPS', 'images:DIR' or 'video:FILE'"
DEFAULT_FPS = 30.0
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


@dataclass(frozen=True, slots=True)
class Frame:
    frame_id: int
    image_bgr: NDArray[np.uint8]
    captured_at: float


class Pacer:
    """Sleeps until each frame's slot on an absolute ``start + i/fps`` schedule."""

    def __init__(self, fps: float, monotonic: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self._period = 1.0 / fps if fps > 0 else 0.0
        self._monotonic = monotonic
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        if self._period == 0.0:
            return
        now = self._monotonic()
        if self._next is None or now - self._next > self._period:
            # First frame, or the consumer fell behind: restart the schedule rather than burst to catch up.
            self._next = now
        elif self._next > now:
            self._sleep(self._next - now)
        self._next += self._period


def _parse_fps(text: str, spec: str) -> float:
    try:
        fps = float(text)
    except ValueError:
        fps = -1.0
    if not np.isfinite(fps) or fps < 0:
        raise FrameSourceError(
            f"frame source {shown(spec)}: FPS must be a number >= 0 (0 = unpaced), got {shown(text)}; "
            f"accepted forms: {ACCEPTED_FORMS}"
        )
    return fps


class SyntheticScene:
    """Deterministic frames: a seeded gradient-and-noise background with three shapes bouncing across it."""

    def __init__(self, *, seed: int = 0, width: int = 640, height: int = 480) -> None:
        if width < 32 or height < 32:
            raise FrameSourceError(f"synthetic frames must be at least 32x32, got {width}x{height}")
        rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
        ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        base = np.stack([xs + 0 * ys, 0.5 * xs + 0.5 * ys, ys + 0 * xs], axis=2)
        noise = rng.normal(0.0, 12.0, (height, width, 3)).astype(np.float32)
        self._background = np.clip(base * 0.6 + 40 + noise, 0, 255).astype(np.uint8)
        # Per shape: start position, velocity (px/frame), size, BGR colour.
        self._starts = rng.uniform(0, 1, (3, 2)) * (width, height)
        self._velocities = rng.uniform(2, 7, (3, 2)) * rng.choice([-1, 1], (3, 2))
        self._sizes = rng.integers(min(width, height) // 10, min(width, height) // 4, 3)
        self._colors = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(3)]

    def _position(self, shape: int, i: int) -> tuple[int, int]:
        # Reflecting motion ("ping-pong") keeps each shape inside the frame for any frame index.
        spans = np.array([self.width, self.height], np.float64)
        raw = (self._starts[shape] + self._velocities[shape] * i) % (2 * spans)
        pos = np.where(raw > spans, 2 * spans - raw, raw)
        return int(pos[0]), int(pos[1])

    def render(self, i: int) -> NDArray[np.uint8]:
        img = self._background.copy()
        x, y = self._position(0, i)
        s = int(self._sizes[0])
        cv2.rectangle(img, (x - s // 2, y - s // 2), (x + s // 2, y + s // 2), self._colors[0], -1)
        x, y = self._position(1, i)
        cv2.circle(img, (x, y), int(self._sizes[1]) // 2, self._colors[1], -1, cv2.LINE_AA)
        x, y = self._position(2, i)
        s = int(self._sizes[2])
        tri = np.array([[x, y - s // 2], [x - s // 2, y + s // 2], [x + s // 2, y + s // 2]], np.int32)
        cv2.fillPoly(img, [tri], self._colors[2], cv2.LINE_AA)
        # Frame counter text gives OCR-ish high-frequency detail and makes every frame distinct.
        cv2.putText(img, f"{i:06d}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
        return img


def _synthetic(scene: SyntheticScene) -> Iterator[NDArray[np.uint8]]:
    i = 0
    while True:
        yield scene.render(i)
        i += 1


def _image_files(directory: Path, spec: str) -> list[Path]:
    if not directory.is_dir():
        raise FrameSourceError(f"frame source {shown(spec)}: {shown(str(directory))} is not a directory")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FrameSourceError(
            f"frame source {shown(spec)}: no .jpg/.jpeg/.png files in "
            f"{shown(str(directory))}; add images or pick another source"
        )
    return files


def _images(files: list[Path], spec: str) -> Iterator[NDArray[np.uint8]]:
    while True:
        for path in files:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise FrameSourceError(
                    f"frame source {shown(spec)}: cannot decode image {shown(str(path))}; remove or fix it"
                )
            yield cast(NDArray[np.uint8], img)


def _video(path: Path, spec: str) -> Iterator[NDArray[np.uint8]]:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise FrameSourceError(f"frame source {shown(spec)}: OpenCV cannot open video {shown(str(path))}")
        empty_pass = True
        while True:
            ok, img = cap.read()
            if ok:
                empty_pass = False
                yield cast(NDArray[np.uint8], img)
                continue
            if empty_pass:
                raise FrameSourceError(f"frame source {shown(spec)}: video {shown(str(path))} has no decodable frames")
            # Loop: rewind; some containers refuse seeking, so reopen when it fails.
            if not cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                cap.release()
                cap = cv2.VideoCapture(str(path))
            empty_pass = True
    finally:
        cap.release()


def open_source(
    spec: str,
    *,
    fps: float | None = None,
    seed: int = 0,
    size: tuple[int, int] = (640, 480),
    wall_clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Frame]:
    """Open a frame source (see the module docstring for SPEC). ``fps`` overrides the spec's own rate.

    ``size`` is (width, height) of synthetic frames. Bad specs raise ``FrameSourceError`` immediately.
    """
    kind, sep, arg = spec.partition(":")
    if kind == "synthetic":
        rate = _parse_fps(arg, spec) if sep else DEFAULT_FPS
        frames = _synthetic(SyntheticScene(seed=seed, width=size[0], height=size[1]))
    elif kind == "images" and arg:
        rate = DEFAULT_FPS
        frames = _images(_image_files(Path(arg), spec), spec)
    elif kind == "video" and arg:
        path = Path(arg)
        if not path.is_file():
            raise FrameSourceError(f"frame source {shown(spec)}: video file {shown(arg)} does not exist")
        cap = cv2.VideoCapture(str(path))
        native = float(cap.get(cv2.CAP_PROP_FPS)) if cap.isOpened() else 0.0
        cap.release()
        rate = native if np.isfinite(native) and 0 < native <= 240 else DEFAULT_FPS
        frames = _video(path, spec)
    else:
        raise FrameSourceError(f"unknown frame source {shown(spec)}; accepted forms: {ACCEPTED_FORMS}")
    if fps is not None:
        rate = _parse_fps(str(fps), spec)
    return _paced(frames, Pacer(rate, monotonic, sleep), wall_clock)


def _paced(frames: Iterator[NDArray[np.uint8]], pacer: Pacer, wall_clock: Callable[[], float]) -> Iterator[Frame]:
    for frame_id, image in enumerate(frames):
        pacer.wait()
        yield Frame(frame_id, image, wall_clock())
