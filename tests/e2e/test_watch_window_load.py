"""The paired watch window on a busy host: real controller, one ``edge-runtime`` process, CPU hogs.

Sequence (d) of issue 10. The device commits v1, then is given two candidates in turn; while each is in
its watch window the test starts CPU-hog processes (one per core, at most four, each bounded to a minute
and killed in a ``finally``) and turns the camera's scene bright, then stops both once the window decided:

- v2 has v1's weights under a new version. Its canary passes; its watch window, on the loaded host, must
  not roll it back: both engines slow down together on the same frames, and only that is compared.
- v3 has the same weights too, plus extra compute that runs only on bright frames (``scene_matmuls``): its
  canary, on the dark scene, passes; its watch window, in the same conditions, must roll it back, because
  on the same frames it is slower than v2, the previous bundle running beside it in shadow.

The camera is an ``images:DIR`` source whose files the test replaces (atomic renames). Robust on a shared
2-core machine by construction: every verdict here compares two engines on the same frames at the same
moment; no number measured at another time enters a judgement.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

from edgefleet.v1 import common_pb2, fleet_pb2, telemetry_pb2
from edgefleet_testing.bundles import make_bundle
from edgefleet_testing.fleet import Controller, EdgeProcess, running_edge, start_controller
from edgefleet_testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A canary of 50 frames (the schema's minimum) in at least 1 s; a 4 s watch window pairing a frame every
# 20 ms at most (at 30 FPS: about every frame), the shadow allowed half the frame loop's time.
CONFIG = """apiVersion: edgefleet.io/v1
kind: FleetConfig
metadata: {name: default}
spec:
  config:
    canary:
      min_frames: 50
      min_seconds: 1
      watch_window_s: 4
      watch_shadow_every_ms: 20
      watch_shadow_max_share: 0.5
"""
# Many distinct images: the candidate's confidences equal the previous bundle's only up to float rounding,
# which a drift test on a handful of repeated values would read as a shift.
SCENE_FILES = 30
HOG_LIMIT_S = 60  # a hog ends by itself even if this test process dies
HOG = f"import time\nend = time.monotonic() + {HOG_LIMIT_S}\nwhile time.monotonic() < end:\n    pass\n"


def write_scene(directory: Path, *, bright: bool) -> None:
    """Replace the camera's images: dark (mean ≈ 0.15) or bright (mean ≈ 0.85), square so nothing is padded."""
    rng = np.random.default_rng(7 if bright else 3)
    level = 215 if bright else 40
    staging = directory.parent / f"{directory.name}.staging"
    staging.mkdir(exist_ok=True)
    for i in range(SCENE_FILES):
        image = np.clip(rng.normal(level, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
        tmp = staging / f"{i}.png"
        assert cv2.imwrite(str(tmp), image)
        os.replace(tmp, directory / f"{i}.png")


@contextlib.contextmanager
def busy_host() -> Iterator[list[subprocess.Popen[bytes]]]:
    """CPU hogs, one per core (at most four); killed on exit whatever happens."""
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(min(os.cpu_count() or 2, 4)):
            hogs.append(subprocess.Popen([sys.executable, "-c", HOG]))
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait(10)


def hog_cpu_s(hogs: list[subprocess.Popen[bytes]]) -> float:
    total = 0.0
    for hog in hogs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(hog.pid).cpu_times()
            total += times.user + times.system
    return total


def trial_under_load(
    ctl: Controller, dev: EdgeProcess, scene: Path, digest: str
) -> tuple[common_pb2.ReportedState, float]:
    """Make ``digest`` desired; once it is in trial, load the host and brighten the scene until it decided.

    Returns the controller's view of the device once the trial ended, and the CPU seconds the hogs burned."""
    ctl.set_desired("dev", digest)
    dev.wait_for(
        lambda s: s["update"]["state"] == "trial" and s["update"]["candidate"] == digest, 30, "candidate in trial"
    )
    try:
        with busy_host() as hogs:
            write_scene(scene, bright=True)
            status = dev.wait_for(lambda s: s["update"]["state"] != "trial", 30, "the watch window decided")
            burned = hog_cpu_s(hogs)
    finally:
        write_scene(scene, bright=False)
    wire = common_pb2.UpdateState.Value(f"UPDATE_STATE_{status['update']['state'].upper()}")
    reported: common_pb2.ReportedState = wait_until(
        lambda: (
            (r := ctl.device("dev").reported).update_state == wire
            and r.last_verdict.candidate_digest == digest
            and r.last_verdict.phase == "watch"
            and r
        ),
        15,
        f"controller sees the watch verdict of {digest[:19]}",
    )
    return reported, burned


def canary_verdicts(ctl: Controller, digest: str) -> list[common_pb2.CanaryVerdict]:
    events = ctl.fleet.ListDeviceEvents(
        fleet_pb2.ListDeviceEventsRequest(device="dev", limit=500), metadata=ctl.md, timeout=10
    ).events
    return [
        e.verdict
        for e in events
        if e.kind == telemetry_pb2.DeviceEvent.KIND_CANARY_VERDICT and e.verdict.candidate_digest == digest
    ]


def test_a_busy_host_rolls_back_only_the_bundle_that_is_slower_on_the_same_frames(tmp_path: Path) -> None:
    scene = tmp_path / "camera"
    scene.mkdir()
    write_scene(scene, bright=False)
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        v1 = make_bundle(tmp_path / "v1", key, version="1.0.0", seed=1)
        v2 = make_bundle(tmp_path / "v2", key, version="1.0.1", seed=1)  # v1's weights, a new version
        v3 = make_bundle(tmp_path / "v3", key, version="1.1.0", seed=1, scene_matmuls=150)
        assert v2.artifact_digests["model"] == v1.artifact_digests["model"] != v3.artifact_digests["model"]
        for bundle in (v1, v2, v3):
            ctl.push(bundle)
        ctl.apply("fleet.yaml", CONFIG, timeout=10)
        token = ctl.enrollment_token("lab")
        with running_edge(ctl.address, tmp_path / "dev", token, name="dev", source=f"images:{scene}") as dev:
            ctl.set_desired("dev", v1.digest)
            dev.committed(v1.digest, timeout=60)

            # v2: same weights. The host gets busy during its watch window; it stays.
            kept, burned = trial_under_load(ctl, dev, scene, v2.digest)
            assert burned > 1.0, f"the CPU hogs burned only {burned:.2f} s: the host was not busy"
            watch = kept.last_verdict
            assert kept.update_state == common_pb2.UPDATE_STATE_COMMITTED, (kept.update_reason, list(watch.reasons))
            assert kept.running_bundle_digest == v2.digest
            assert watch.outcome == common_pb2.CanaryVerdict.OUTCOME_PASS, list(watch.reasons)
            assert watch.baseline_digest == v1.digest
            assert watch.baseline_latency.count >= 30 and watch.candidate_latency.count == watch.baseline_latency.count

            # v3: slower on bright frames only. Its canary, on the dark scene, cannot tell...
            rolled, burned = trial_under_load(ctl, dev, scene, v3.digest)
            (canary,) = [v for v in canary_verdicts(ctl, v3.digest) if v.phase == "canary"]
            assert canary.outcome == common_pb2.CanaryVerdict.OUTCOME_PASS and canary.baseline_digest == v2.digest
            # ...its watch window, in the same conditions, rolls it back on the paired comparison.
            assert burned > 1.0, f"the CPU hogs burned only {burned:.2f} s: the host was not busy"
            watch = rolled.last_verdict
            assert rolled.update_state == common_pb2.UPDATE_STATE_ROLLED_BACK, rolled.update_reason
            assert rolled.running_bundle_digest == v2.digest
            assert watch.outcome == common_pb2.CanaryVerdict.OUTCOME_FAIL
            assert watch.baseline_digest == v2.digest and watch.baseline_latency.count >= 30
            assert watch.candidate_latency.p95_ms > watch.baseline_latency.p95_ms
            assert any(r.startswith("latency regression") and "vs the previous bundle" in r for r in watch.reasons), (
                list(watch.reasons)
            )
            assert "trial failed: latency regression" in rolled.update_reason

            status = dev.wait_for(lambda s: s["serving"] == v2.digest, 10, "v2 serving again")
            frames = status["frames_inferred"]
            dev.wait_for(lambda s: s["frames_inferred"] > frames + 15, 10, "frames keep coming")
            print(
                f"\nwatch v2 (kept): p95 {kept.last_verdict.candidate_latency.p95_ms:.2f} ms vs v1 "
                f"{kept.last_verdict.baseline_latency.p95_ms:.2f} ms over {kept.last_verdict.baseline_latency.count} "
                f"pairs; watch v3 (rolled back): p95 {watch.candidate_latency.p95_ms:.2f} ms vs v2 "
                f"{watch.baseline_latency.p95_ms:.2f} ms over {watch.baseline_latency.count} pairs"
            )

    served = dev.frames()
    ids = [frame_id for frame_id, _ in served]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a frame id is missing or repeated"
    digests = [k for k, _ in itertools.groupby(d for _, d in served)]
    assert digests == [v1.digest, v2.digest, v3.digest, v2.digest], "each swap happens once, between two frames"
