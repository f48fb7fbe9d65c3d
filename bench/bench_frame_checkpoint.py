"""Benchmark of frame accounting: what the frame checkpoint adds to each frame the telemetry pipeline observes.

``run(quick=False) -> list[dict]``; ``python bench/bench_frame_checkpoint.py`` prints the row.

``TelemetryPipeline.observe`` of a classifier frame (window aggregation: two sketch adds, a histogram bin,
the count) with the checkpoint's per-frame ``pwrite`` (the real pipeline), against the same pipeline with
its checkpoint closed (``record`` returns at once), alternating rounds in the same run. The goal bounds
the added cost per frame: a 30 FPS camera has 33 ms per frame.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import row, run_alone

from edge_runtime.agent.telemetry.pipeline import TelemetryPipeline
from edge_runtime.inference.results import FrameResult, Timings
from edge_runtime.sources import Frame
from edge_runtime.telemetry.sensors import SensorReader

DIGEST = "sha256:" + "5e" * 32
CONFIG: dict[str, Any] = {"review": {"sample_rate": 0.0, "low_confidence_below": 0.0}}
GOAL_US = 10.0


def _pipeline(data: Path) -> TelemetryPipeline:
    return TelemetryPipeline(
        data,
        stub=lambda: None,
        metadata=lambda: (),
        config=lambda: CONFIG,
        sensors=SensorReader(data_dir=data, root=data / "no-sysfs", nvidia_smi=None),
    )


def _per_frame_us(pipeline: TelemetryPipeline, frames: int) -> float:
    image = np.zeros((2, 2, 3), np.uint8)
    result = FrameResult(0, (), 0.8, Timings(1.0, 3.0, 1.0, 5.0), "CPUExecutionProvider", DIGEST)
    frame = Frame(0, image, 0.0)
    started = time.perf_counter()
    for _ in range(frames):
        pipeline.observe(frame, DIGEST, result)
    return (time.perf_counter() - started) / frames * 1e6


def run(quick: bool = False) -> list[dict[str, Any]]:
    frames, rounds = (5_000, 3) if quick else (50_000, 7)
    with tempfile.TemporaryDirectory() as tmp:
        with_ckpt = _pipeline(Path(tmp) / "with")
        without = _pipeline(Path(tmp) / "without")
        without._checkpoint.close()
        try:
            ours, base = [], []
            for _ in range(rounds):
                ours.append(_per_frame_us(with_ckpt, frames))
                base.append(_per_frame_us(without, frames))
        finally:
            with_ckpt.close()
            without.close()
    measured, baseline = statistics.median(ours), statistics.median(base)
    added = measured - baseline
    return [
        row(
            "telemetry.frame_checkpoint_per_frame (observe with vs without the checkpoint pwrite)",
            f"{measured:.2f} us/frame (+{added:.2f} us)",
            f"{baseline:.2f} us/frame without checkpoint",
            measured / baseline,
            f"<= +{GOAL_US:g} us/frame (0.03 % of a 30 FPS frame)",
            added <= GOAL_US,
        )
    ]


if __name__ == "__main__":
    sys.exit(run_alone(run))
