"""Hot swap on a live 30 FPS stream: no frame dropped, in order, digest changes at one frame boundary."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge_runtime.inference import (
    EngineSlot,
    FrameResult,
    InferenceEngine,
    SwapError,
)
from edge_runtime.sources import Frame, open_source
from edgefleet.contract.bundle_sections import Postprocess, Preprocess
from edgefleet_testing.modelgen import make_classifier

pytestmark = pytest.mark.integration

PRE = Preprocess.from_dict({"size": [64, 64]})
POST = Postprocess.from_dict({"kind": "classification", "top_k": 1, "softmax": True})


def loader(tmp_path: Path, seed: int, digest: str) -> InferenceEngine:
    model = make_classifier(tmp_path / f"m{seed}.onnx", seed=seed, logit_shift=float(seed))
    return InferenceEngine.load(model, PRE, POST, [], cache_dir=tmp_path, bundle_digest=digest, intra_op_threads=1)


def run_stream(
    slot: EngineSlot, seconds: float, during: threading.Event, action: Callable[[], None]
) -> tuple[int, list[FrameResult]]:
    """Producer thread at 30 FPS → queue → frame loop reading ``slot.current`` once per frame."""
    frames: queue.Queue[Frame | None] = queue.Queue()
    produced = 0

    def produce() -> None:
        nonlocal produced
        src = open_source("synthetic:30", size=(320, 240), seed=5)
        end = time.monotonic() + seconds
        for frame in src:
            if time.monotonic() >= end:
                break
            frames.put(frame)
            produced += 1
        frames.put(None)

    results: list[FrameResult] = []

    def frame_loop() -> None:
        while (frame := frames.get()) is not None:
            engine = slot.current
            results.append(engine.infer(frame.image_bgr, frame.frame_id))

    threads = [threading.Thread(target=produce), threading.Thread(target=frame_loop)]
    for t in threads:
        t.start()
    during.wait(timeout=seconds)
    action()
    for t in threads:
        t.join(timeout=seconds + 10)
    return produced, results


def test_swap_mid_stream_drops_nothing_and_switches_at_one_boundary(tmp_path: Path) -> None:
    slot = EngineSlot(loader(tmp_path, 0, "sha256:old"))
    started = threading.Event()
    threading.Timer(0.8, started.set).start()

    def swap_mid_stream() -> None:
        future = slot.prepare(lambda: loader(tmp_path, 1, "sha256:new"))
        assert future.result(timeout=10).bundle_digest == "sha256:new"
        time.sleep(0.3)  # frames keep flowing on the old engine while the new one sits staged
        slot.swap()

    produced, results = run_stream(slot, 3.0, started, swap_mid_stream)
    assert produced >= 60
    assert [r.frame_id for r in results] == list(range(produced))
    digests = [r.bundle_digest for r in results]
    boundary = digests.index("sha256:new")
    assert 0 < boundary < produced
    assert digests == ["sha256:old"] * boundary + ["sha256:new"] * (produced - boundary)
    assert slot.previous is not None and slot.previous.bundle_digest == "sha256:old"


def test_rollback_restores_previous_and_release_forgets_it(tmp_path: Path) -> None:
    slot = EngineSlot(loader(tmp_path, 0, "a"))
    slot.prepare(lambda: loader(tmp_path, 1, "b")).result(timeout=10)
    assert slot.swap().bundle_digest == "b"
    with capture_logs() as logs:
        assert slot.rollback().bundle_digest == "a"
    assert slot.current.bundle_digest == "a"
    assert any(e["event"] == "hotswap.rolled_back" and e["rolled_back_from"] == "b" for e in logs)
    with pytest.raises(SwapError, match="no previous engine to roll back to"):
        slot.rollback()
    slot.prepare(lambda: loader(tmp_path, 2, "c")).result(timeout=10)
    slot.swap()
    released = slot.release_previous()
    assert released is not None and released.bundle_digest == "a"
    assert slot.previous is None


def test_swap_without_prepare_and_failed_prepare(tmp_path: Path) -> None:
    slot = EngineSlot(loader(tmp_path, 0, "a"))
    with pytest.raises(SwapError, match=r"call prepare\(loader\) first"):
        slot.swap()

    def broken() -> InferenceEngine:
        return InferenceEngine.load(tmp_path / "missing.onnx", PRE, POST, [], cache_dir=tmp_path, bundle_digest="x")

    future = slot.prepare(broken)
    with pytest.raises(Exception, match="does not exist"):
        future.result(timeout=10)
    assert slot.staged is None
    assert slot.current.bundle_digest == "a"
    with pytest.raises(SwapError):
        slot.swap()


def test_empty_slot_refuses_frames() -> None:
    with pytest.raises(SwapError, match="no engine loaded yet"):
        _ = EngineSlot().current
