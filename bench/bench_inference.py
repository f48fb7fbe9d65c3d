"""Benchmarks of the edge runtime's inference path: call overhead, pre/post cost, hot swap under load.

``run(quick=False) -> list[dict]`` returns one row per measurement:
``{"benchmark", "measured", "baseline", "ratio", "goal", "ok"}``. ``python bench/bench_inference.py`` prints
them. Models are generated with ``edgefleet_testing.modelgen`` into a temporary directory (no downloads).

(a) ``InferenceEngine.run_model`` vs a bare ``ort.InferenceSession.run`` on the same model and tensor, with
    the same session options (the wrapper's overhead, not an options difference), interleaved call by call
    (alternating which goes first) so machine noise hits both; medians.
(a') The price of the runtime's session options for one engine serving alone: thread spinning off (so two
    engines judged side by side do not steal each other's cores, see ``bench_watch_shadow``) vs
    onnxruntime's default (spinning on), each session run alone in alternating blocks; medians.
(b) Pre + post time vs model time for 640x480 frames into a 640x640 YOLOv8 head: once on the stock
    generated detector (400 anchors, a model far cheaper than any real detector) and once on a detector
    shaped like YOLOv8n: 8400 anchors, and 64 ``extra_matmuls`` (each 16·160·160·160 MACs ≈ 131 MFLOP,
    so ≈ 8.4 GFLOP against YOLOv8n's 8.7) for a model cost like the real one. The goal is stated
    for the realistic one; the stock row shows the fixed cost honestly.
(c) Hot swap in a 30 FPS stream: a new engine is prepared (loaded + warmed on a background thread) and
    swapped in; dropped frames, and p99 frame latency (enqueue → result) in the window from prepare start
    to one second after the swap vs the steady state before it.
"""

from __future__ import annotations

import itertools
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from benchlib import row, run_alone

from edge_runtime.inference import EngineSlot, FrameResult, InferenceEngine
from edge_runtime.inference.providers import session_options
from edge_runtime.sources import open_source
from edgefleet.contract.bundle_sections import Postprocess, Preprocess
from edgefleet.contract.processing.preprocess import preprocess
from edgefleet_testing.modelgen import make_yolo_detector

YOLO_PRE = Preprocess.from_dict({"resize": "letterbox", "size": [640, 640], "pad_value": 114})
YOLO_POST = Postprocess.from_dict({"kind": "yolov8", "conf_threshold": 0.25, "iou_threshold": 0.45})
LABELS = ("person", "car", "bike", "dog")
# 21 anchor shapes x 20x20 cells = 8400 anchors, the YOLOv8 head size at 640.
YOLOV8N_ANCHORS = tuple((16.0 * (1 + i % 7), 32.0 * (1 + i // 7)) for i in range(21))


def _frames(n: int) -> list[Any]:
    src = open_source("synthetic:0", seed=1)
    return [next(src).image_bgr for _ in range(n)]


def bench_call_overhead(work: Path, quick: bool) -> dict[str, Any]:
    model = make_yolo_detector(work / "overhead.onnx", layout="v8", size=640, seed=0)
    engine = InferenceEngine.load(model, YOLO_PRE, YOLO_POST, LABELS, cache_dir=work, bundle_digest="a", warmup=5)
    bare = ort.InferenceSession(str(model), sess_options=session_options(), providers=["CPUExecutionProvider"])
    name = bare.get_inputs()[0].name
    x, _ = preprocess(_frames(1)[0], YOLO_PRE)
    for _ in range(5):
        bare.run(None, {name: x})
    ours: list[int] = []
    theirs: list[int] = []
    for i in range(150 if quick else 600):
        for first in (i % 2 == 0, i % 2 == 1):
            t0 = time.perf_counter_ns()
            if first:
                engine.run_model(x)
            else:
                bare.run(None, {name: x})
            (ours if first else theirs).append(time.perf_counter_ns() - t0)
    m_ours, m_bare = statistics.median(ours) / 1e6, statistics.median(theirs) / 1e6
    ratio = m_ours / m_bare
    return row(
        "inference.model_call_overhead",
        f"engine.run_model median {m_ours:.3f} ms",
        f"bare InferenceSession.run median {m_bare:.3f} ms",
        ratio,
        "<= 1.05 (<= 5% overhead)",
        ratio <= 1.05,
    )


def bench_spinning_off_alone(work: Path, quick: bool) -> dict[str, Any]:
    model = make_yolo_detector(work / "spinning.onnx", layout="v8", size=640, seed=0)
    x = np.zeros((1, 3, 640, 640), dtype=np.float32)
    ours = ort.InferenceSession(str(model), sess_options=session_options(), providers=["CPUExecutionProvider"])
    default = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = ours.get_inputs()[0].name
    times: dict[bool, list[int]] = {True: [], False: []}
    for block in range(6 if quick else 16):
        session = ours if block % 2 == 0 else default
        for i in range(30):
            t0 = time.perf_counter_ns()
            session.run(None, {name: x})
            if i >= 5:  # the first runs of a block wake the other session's threads down
                times[session is ours].append(time.perf_counter_ns() - t0)
    m_ours, m_default = statistics.median(times[True]) / 1e6, statistics.median(times[False]) / 1e6
    ratio = m_ours / m_default
    return row(
        "inference.session_options_one_engine_alone",
        f"spinning off median {m_ours:.3f} ms (the runtime's sessions)",
        f"onnxruntime default (spinning on) median {m_default:.3f} ms",
        ratio,
        "<= 1.10 (the price of paired judgements that do not slow the served engine, see watch_shadow rows)",
        ratio <= 1.10,
    )


def bench_pre_post(work: Path, quick: bool, *, realistic: bool) -> dict[str, Any]:
    if realistic:
        model = make_yolo_detector(
            work / "yolov8n_like.onnx", layout="v8", size=640, anchors=YOLOV8N_ANCHORS, extra_matmuls=64
        )
        what = "YOLOv8n-shaped detector (8400 anchors, ~8.4 GFLOP)"
    else:
        model = make_yolo_detector(work / "stock.onnx", layout="v8", size=640)
        what = "stock generated detector (400 anchors)"
    engine = InferenceEngine.load(model, YOLO_PRE, YOLO_POST, LABELS, cache_dir=work, bundle_digest="b", warmup=3)
    frames = _frames(10)
    timings = [engine.infer(frames[i % len(frames)], i).timings for i in range(30 if quick else 120)]
    pre = statistics.median(t.pre_ms for t in timings)
    post = statistics.median(t.post_ms for t in timings)
    mdl = statistics.median(t.model_ms for t in timings)
    ratio = (pre + post) / mdl
    return row(
        f"inference.pre_post_vs_model[{what}]",
        f"pre {pre:.3f} ms + post {post:.3f} ms (640x480 → 640x640)",
        f"model {mdl:.3f} ms",
        ratio,
        "<= 0.20 of model time"
        if realistic
        else "informational, not gated: a toy model far cheaper than any real detector shows the fixed cost",
        ratio <= 0.20 or not realistic,
    )


def bench_hot_swap(work: Path, quick: bool) -> list[dict[str, Any]]:
    old_model = make_yolo_detector(work / "swap_old.onnx", layout="v8", size=640, seed=0)
    new_model = make_yolo_detector(work / "swap_new.onnx", layout="v8", size=640, seed=1)
    slot = EngineSlot(InferenceEngine.load(old_model, YOLO_PRE, YOLO_POST, LABELS, cache_dir=work, bundle_digest="old"))
    steady_s, tail_s = (2.0, 1.0) if quick else (5.0, 2.0)
    frames: queue.Queue[tuple[int, Any, int] | None] = queue.Queue()
    results: list[tuple[FrameResult, int, int]] = []  # result, enqueued_ns, done_ns
    stop = threading.Event()
    produced = 0

    def produce() -> None:
        nonlocal produced
        for frame in open_source("synthetic:30", seed=2):
            if stop.is_set():
                break
            frames.put((frame.frame_id, frame.image_bgr, time.perf_counter_ns()))
            produced += 1
        frames.put(None)

    def frame_loop() -> None:
        while (item := frames.get()) is not None:
            frame_id, image, enqueued = item
            engine = slot.current
            result = engine.infer(image, frame_id)
            results.append((result, enqueued, time.perf_counter_ns()))

    threads = [threading.Thread(target=produce), threading.Thread(target=frame_loop)]
    for t in threads:
        t.start()
    time.sleep(steady_s)
    window_start = time.perf_counter_ns()
    slot.prepare(
        lambda: InferenceEngine.load(new_model, YOLO_PRE, YOLO_POST, LABELS, cache_dir=work, bundle_digest="new")
    ).result(timeout=60)
    slot.swap()
    time.sleep(tail_s)
    window_end = time.perf_counter_ns()
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=30)

    ids = [r.frame_id for r, _, _ in results]
    in_order = ids == list(range(produced))
    dropped = produced - len(results)
    digests = [r.bundle_digest for r, _, _ in results]
    switches = sum(1 for a, b in itertools.pairwise(digests) if a != b)
    latency = [(done - enq) / 1e6 for _, enq, done in results]
    # Skip the first second: the stream's own start-up is not steady state.
    steady = [lat for (_, enq, _), lat in zip(results, latency, strict=True) if enq < window_start and enq > 0]
    steady = steady[30:] if len(steady) > 60 else steady
    window = [lat for (_, enq, _), lat in zip(results, latency, strict=True) if window_start <= enq <= window_end]
    p99_steady = float(np.percentile(steady, 99))
    p99_window = float(np.percentile(window, 99))
    ratio = p99_window / p99_steady
    return [
        row(
            "hotswap.dropped_frames",
            f"{dropped} dropped of {produced} at 30 FPS; ids in order: {in_order}; digest switches: {switches}",
            "0 dropped",
            float(dropped),
            "0 dropped, in order, one switch",
            dropped == 0 and in_order and switches == 1,
        ),
        row(
            "hotswap.p99_latency_during_swap",
            f"p99 {p99_window:.2f} ms over {len(window)} frames (prepare + swap + {tail_s:.0f} s)",
            f"steady p99 {p99_steady:.2f} ms over {len(steady)} frames",
            ratio,
            "<= 1.5x steady state",
            ratio <= 1.5,
        ),
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        work = Path(tmp)
        rows = [
            bench_call_overhead(work, quick),
            bench_spinning_off_alone(work, quick),
            bench_pre_post(work, quick, realistic=False),
            bench_pre_post(work, quick, realistic=True),
        ]
        rows.extend(bench_hot_swap(work, quick))
        return rows


if __name__ == "__main__":
    sys.exit(run_alone(run))
