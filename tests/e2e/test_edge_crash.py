"""Power-cut drill with the real agent: SIGKILL an ``edge-runtime`` process at every update-state boundary
(before and after each journal write) while it installs a bundle from a real controller, restart it, and
check it comes back consistent — serving a verified bundle at once — and then converges on the desired one.

The twelve devices run side by side against one controller, so the drill stays well under a minute.
"""

from __future__ import annotations

import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge_runtime.status_report import NOT_RUNNING_EXIT
from edge_runtime.update.record import UpdateState
from edgefleet.contract.bundle_archive import verify_bundle
from edgefleet.contract.signing import TrustedKeys
from edgefleet_testing.bundles import make_bundle
from edgefleet_testing.fleet import EDGE_RUNTIME, EdgeProcess, start_controller, start_edge

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BOUNDARIES = [
    f"{state}:{phase}"
    for state in ("downloading", "verifying", "staged", "canary", "trial", "committed")
    for phase in ("before", "after")
]


def test_sigkill_at_every_update_boundary_restarts_consistent(tmp_path: Path) -> None:
    assert {b.split(":")[0] for b in BOUNDARIES} == {
        s.value for s in UpdateState if s not in (UpdateState.IDLE, UpdateState.FAILED, UpdateState.ROLLED_BACK)
    }
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        trusted = TrustedKeys.from_dir(tmp_path / "keys")
        v1 = make_bundle(tmp_path / "b1", key, version="1.0.0", seed=1)
        v2 = make_bundle(tmp_path / "b2", key, version="2.0.0", seed=1)  # same weights: the canary agrees
        ctl.push(v1)
        ctl.push(v2)
        ctl.apply_config(watch_window_s=0.3)
        token = ctl.enrollment_token("lab")
        names = [f"crash-{b.replace(':', '-')}" for b in BOUNDARIES]

        def first_life(boundary: str, name: str) -> int:
            dev = start_edge(
                ctl.address,
                tmp_path / name,
                token,
                name=name,
                source="synthetic:10",
                env={"EDGEFLEET_CRASH_AT": boundary, "EDGEFLEET_CRASH_CANDIDATE": v2.digest},
            )
            try:
                ctl.set_desired(name, v1.digest)
                dev.committed(v1.digest, timeout=60)
                ctl.set_desired(name, v2.digest)
                return dev.wait_exit(60)
            finally:
                dev.terminate()

        def second_life(name: str) -> tuple[str, str]:
            dev: EdgeProcess = start_edge(ctl.address, tmp_path / name, token, name=name, source="synthetic:10")
            try:
                first = dev.wait_for(lambda s: s["serving"] is not None, 30, "serving after the restart")
                serving = first["serving"]
                assert serving in (v1.digest, v2.digest), first
                # What serves is a verified slot: signature and every artifact check out on disk.
                slot = tmp_path / name / "bundles" / serving.removeprefix("sha256:")
                assert verify_bundle(slot, trusted).digest == serving
                dev.committed(v2.digest, timeout=60)
                return serving, first["update"]["state"]
            finally:
                assert dev.terminate() == 0

        # Six at a time: twelve runtimes plus a controller at once starve a 2-core CI machine.
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(first_life, BOUNDARIES, names))
        assert codes == [-signal.SIGKILL] * len(BOUNDARIES), dict(zip(BOUNDARIES, codes, strict=True))

        for boundary, name in zip(BOUNDARIES, names, strict=True):
            # The journal as the dead process left it: the commit counts only once it was journaled.
            out = subprocess.run(
                [str(EDGE_RUNTIME), "status", "--data-dir", str(tmp_path / name)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            # SIGKILLed: status says so (exit 3, running false), whatever its last status.json claimed.
            assert out.returncode == NOT_RUNNING_EXIT and json.loads(out.stdout)["running"] is False, out
            record = json.loads(out.stdout)["update"]
            expected = v2.digest if boundary == "committed:after" else v1.digest
            assert record["committed"] == expected, (boundary, record)
            # Only verified bundles live under bundles/, whatever instant the power went.
            for slot in (tmp_path / name / "bundles").iterdir():
                assert verify_bundle(slot, trusted).digest == f"sha256:{slot.name}", (boundary, slot)

        # Six at a time: twelve runtimes plus a controller at once starve a 2-core CI machine.
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(second_life, names))
