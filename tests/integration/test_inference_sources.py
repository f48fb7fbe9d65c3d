"""Frame sources: synthetic determinism and pacing, image directories, video files, bad specs."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.inference.errors import FrameSourceError
from edge_runtime.sources import Pacer, open_source

pytestmark = pytest.mark.integration


class FakeClock:
    """A monotonic clock that advances only when slept on (or when the test says so)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_synthetic_is_deterministic_moving_and_bgr() -> None:
    a = [f.image_bgr for f in islice(open_source("synthetic:0", seed=3), 5)]
    b = [f.image_bgr for f in islice(open_source("synthetic:0", seed=3), 5)]
    c = next(open_source("synthetic:0", seed=4)).image_bgr
    assert a[0].shape == (480, 640, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], a[4])  # shapes move
    assert not np.array_equal(a[0], c)  # seed matters


def test_synthetic_paces_to_fps_on_an_absolute_schedule() -> None:
    clock = FakeClock()
    src = open_source("synthetic:10", monotonic=clock.monotonic, sleep=clock.sleep, wall_clock=lambda: 5.0)
    frames = list(islice(src, 4))
    assert [f.frame_id for f in frames] == [0, 1, 2, 3]
    assert frames[0].captured_at == 5.0
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.1])


def test_pacer_resets_instead_of_bursting_when_behind() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock.monotonic, clock.sleep)
    pacer.wait()  # t=100, next due 100.1
    clock.now += 0.05
    pacer.wait()  # sleeps 0.05 to 100.1
    assert clock.sleeps == pytest.approx([0.05])
    clock.now += 1.0  # consumer stalled for a second
    pacer.wait()  # no catch-up burst: schedule restarts now
    pacer.wait()
    assert clock.sleeps == pytest.approx([0.05, 0.1])


def test_images_loop_over_sorted_files(tmp_path: Path) -> None:
    for name, value in (("b.png", 200), ("a.jpg", 50), ("c.txt", 0)):
        if name.endswith("txt"):
            (tmp_path / name).write_text("not an image")
        else:
            cv2.imwrite(str(tmp_path / name), np.full((20, 30, 3), value, np.uint8))
    frames = list(islice(open_source(f"images:{tmp_path}", fps=0), 5))
    means = [round(float(f.image_bgr.mean())) for f in frames]
    assert means[:2] == [50, 200] and means[2:4] == [50, 200]  # a.jpg, b.png, then loop
    assert [f.frame_id for f in frames] == [0, 1, 2, 3, 4]


def test_video_loops_at_end(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (64, 48))
    assert writer.isOpened()
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 + 80 * i, np.uint8))
    writer.release()
    frames = list(islice(open_source(f"video:{path}", fps=0), 7))
    levels = [round(float(f.image_bgr.mean()) / 10) for f in frames]
    assert frames[0].image_bgr.shape == (48, 64, 3)
    assert levels == [4, 12, 20, 4, 12, 20, 4]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("webcam:0", "unknown frame source 'webcam:0'; accepted forms: 'synthetic', 'synthetic:FPS'"),
        ("images:", "unknown frame source"),
        ("synthetic:fast", "FPS must be a number >= 0 (0 = unpaced), got 'fast'"),
        ("images:/nonexistent/dir", "is not a directory"),
        ("video:/nonexistent.mp4", "does not exist"),
    ],
)
def test_bad_specs_fail_at_open_with_accepted_forms(spec: str, needle: str) -> None:
    with pytest.raises(FrameSourceError) as info:
        open_source(spec)
    assert needle in str(info.value)


def test_empty_image_directory(tmp_path: Path) -> None:
    with pytest.raises(FrameSourceError, match=r"no \.jpg/\.jpeg/\.png files"):
        open_source(f"images:{tmp_path}")
