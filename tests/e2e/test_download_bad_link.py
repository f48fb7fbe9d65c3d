"""A 30 MB update with DEFAULT flags over a bad link: a real controller process, a real ``edge-runtime`` process
connected through the fault proxy (resets every 256 KiB, 5 s blackholes every 20 s; then the same under a
3 Mbit/s cap). The device commits the bundle, re-sends at most 64 KiB per reset (counted by the proxy), no
blackhole or reset spends a download attempt, and ``fleetctl describe device`` shows the download's progress,
rate and resets while it runs. Then: a SIGTERM while the download is stuck on a dead link stops the runtime
at once, and the restarted runtime resumes from the bytes it kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from edgefleet.contract.bundle_layout import MANIFEST_NAME, SIGNATURE_NAME
from edgefleet.contract.signing import SigningKey
from edgefleet.v1 import fleet_pb2
from edgefleet_testing.bundles import SignedBundle, make_bundle
from edgefleet_testing.faultproxy import FaultProxy
from edgefleet_testing.fleet import Controller, EdgeProcess, running_edge, start_controller, start_edge
from edgefleet_testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PADDING = 30_000_000
RESET_EVERY = 256 << 10
MAX_RESENT_PER_RESET = 64 << 10
CAP_BYTES_PER_S = 3_000_000 / 8  # 3 Mbit/s


@dataclass
class Fleet:
    ctl: Controller
    key: SigningKey
    root: Path

    def big(self, version: str, seed: int) -> SignedBundle:
        bundle = make_bundle(self.root / version, self.key, version=version, seed=seed, padding_bytes=PADDING)
        self.ctl.push(bundle)
        return bundle


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("badlink")
    with start_controller(root / "ctl") as ctl:
        key = ctl.trust_new_key(root / "keys")
        ctl.apply_config(watch_window_s=0.5)
        yield Fleet(ctl, key, root)


def fetched_bytes(bundle: SignedBundle) -> int:
    """What the artifacts need over FetchBlob (bundle.json and bundle.sig come inside the desired state)."""
    files = [p for p in bundle.directory.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.name not in (MANIFEST_NAME, SIGNATURE_NAME))


def fleetctl(ctl: Controller, *args: str) -> str:
    env = {**os.environ, "EDGEFLEET_CONTROLLER": ctl.address, "EDGEFLEET_TOKEN": ctl.admin_token, "COLUMNS": "200"}
    env.pop("FORCE_COLOR", None)
    exe = Path(sys.executable).with_name("fleetctl")
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, proc
    return proc.stdout


def download_details(ctl: Controller, device: str) -> dict[str, float] | None:
    details = MessageToDict(ctl.device(device).reported.details)
    download = details.get("download")
    return download if isinstance(download, dict) else None


def update_through(
    fleet: Fleet, proxy: FaultProxy, dev: EdgeProcess, bundle: SignedBundle, timeout: float
) -> dict[str, object]:
    """Desire ``bundle`` on ``dev`` over the link as ``proxy`` is set, 5 s blackholes every 20 s from the
    moment the download is under way (the first one 0.5 s later, so it hits the download); watch the download
    from the operator's side; return the device's status at commit."""
    down, resets = proxy.stats.bytes_down, proxy.stats.resets
    started = time.monotonic()
    fleet.ctl.set_desired(dev.name, bundle.digest)
    dev.wait_for(lambda s: s["download"] is not None and s["download"]["bytes_kept"] > 0, 30, "download under way")
    proxy.blackhole_every(20, 5, first_in_s=0.5)
    wait_until(
        lambda: (d := download_details(fleet.ctl, dev.name)) and d["resets"] > 0 and d["bytes_kept"] > 0,
        timeout / 2,
        "the controller sees the download in flight, bytes kept and resets",
    )
    described = fleetctl(fleet.ctl, "describe", "device", dev.name)
    line = next((ln for ln in described.splitlines() if ln.startswith("download:")), None)
    assert line is not None, described
    assert " MB (" in line and "KB/s" in line and "chunk" in line and " 0 resets" not in line, line

    status = dev.committed(bundle.digest, timeout=timeout)
    took = time.monotonic() - started
    lost = proxy.stats.resets - resets
    assert lost >= 20, proxy.stats
    resent = (proxy.stats.bytes_down - down - fetched_bytes(bundle)) / lost
    assert resent <= MAX_RESENT_PER_RESET, (resent, proxy.stats, status["fetch"])
    events = fleet.ctl.fleet.ListDeviceEvents(
        fleet_pb2.ListDeviceEventsRequest(device=dev.name, limit=100), metadata=fleet.ctl.md, timeout=10
    )
    spent = [e.reason for e in events.events if "download attempt" in e.reason or "download failed" in e.reason]
    assert spent == [], "link trouble must not spend download attempts"
    print(f"committed after {took:.0f} s; proxy {proxy.stats}; re-sent {resent / 1024:.1f} KiB per reset")
    return status


def test_30mb_update_with_default_flags_completes_through_resets_and_blackholes(fleet: Fleet, tmp_path: Path) -> None:
    bundle = fleet.big("30.0.0-resets", seed=30)
    with (
        FaultProxy(fleet.ctl.port) as proxy,
        running_edge(proxy.address, tmp_path / "resets", fleet.ctl.enrollment_token("lab"), name="resets") as dev,
    ):
        proxy.reset_every_bytes = RESET_EVERY
        status = update_through(fleet, proxy, dev, bundle, timeout=150)

    fetch = status["fetch"]
    assert isinstance(fetch, dict)
    assert proxy.stats.blackholes >= 1 and fetch["stalls"] + fetch["connect_timeouts"] >= 1, (proxy.stats, fetch)
    assert fetch["chunk_bytes"] <= MAX_RESENT_PER_RESET, fetch


def test_30mb_update_through_a_3_mbit_cap_with_resets_and_blackholes(fleet: Fleet, tmp_path: Path) -> None:
    bundle = fleet.big("30.0.0-capped", seed=31)
    with (
        FaultProxy(fleet.ctl.port) as proxy,
        running_edge(proxy.address, tmp_path / "capped", fleet.ctl.enrollment_token("lab"), name="capped") as dev,
    ):
        proxy.bandwidth_bytes_per_s = CAP_BYTES_PER_S
        proxy.reset_every_bytes = RESET_EVERY
        status = update_through(fleet, proxy, dev, bundle, timeout=240)

    fetch = status["fetch"]
    assert isinstance(fetch, dict)
    assert proxy.stats.blackholes >= 3, proxy.stats


def test_sigterm_during_a_stuck_download_stops_at_once_and_the_restart_resumes_from_the_kept_bytes(
    fleet: Fleet, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path / "b", fleet.key, version="8.0.0-resume", seed=32, padding_bytes=8_000_000)
    fleet.ctl.push(bundle)
    data = tmp_path / "resume"
    with FaultProxy(fleet.ctl.port) as proxy:
        dev = start_edge(proxy.address, data, fleet.ctl.enrollment_token("lab"), name="resume")
        try:
            proxy.bandwidth_bytes_per_s = 2_000_000
            fleet.ctl.set_desired(dev.name, bundle.digest)
            dev.wait_for(lambda s: s["download"] and s["download"]["bytes_kept"] > 2_000_000, 30, "2 MB kept")
            proxy.blackhole = True  # the download now retries forever: only the stop can end it
            dev.wait_for(lambda s: s["fetch"]["stalls"] + s["fetch"]["connect_timeouts"] >= 1, 20, "a stall")
            asked = time.monotonic()
            assert dev.terminate(timeout=15) == 0
            assert time.monotonic() - asked < 10, "a stuck download must not hold up the stop"
        finally:
            dev.terminate()
        assert "update.stopped_cleanly" in dev.log.read_text(), "the stop left the journal's clean-stop marker"
        kept = sum(p.stat().st_size for p in (data / "incoming").rglob("*") if p.is_file())
        assert kept > 2_000_000

        proxy.blackhole = False
        proxy.bandwidth_bytes_per_s = 0
        down = proxy.stats.bytes_down
        with running_edge(proxy.address, data, "", name="resume") as again:
            status = again.committed(bundle.digest, timeout=60)
        fetched_again = proxy.stats.bytes_down - down
        assert status["fetch"]["resumes"] >= 1, status["fetch"]
        assert fetched_again <= fetched_bytes(bundle) - kept + (1 << 20), (fetched_again, kept)


def test_a_new_desired_bundle_does_not_wait_for_a_slow_download(fleet: Fleet, tmp_path: Path) -> None:
    slow = make_bundle(tmp_path / "slow", fleet.key, version="9.0.0-slow", seed=34, padding_bytes=8_000_000)
    small = make_bundle(tmp_path / "small", fleet.key, version="9.0.1-small", seed=35)
    fleet.ctl.push(slow)
    fleet.ctl.push(small)
    with (
        FaultProxy(fleet.ctl.port) as proxy,
        running_edge(proxy.address, tmp_path / "switch", fleet.ctl.enrollment_token("lab"), name="switch") as dev,
    ):
        proxy.bandwidth_bytes_per_s = 150_000  # the slow bundle alone needs ~55 s
        fleet.ctl.set_desired(dev.name, slow.digest)
        dev.wait_for(lambda s: s["download"] and s["download"]["bytes_kept"] > 300_000, 30, "slow download under way")
        switched = time.monotonic()
        fleet.ctl.set_desired(dev.name, small.digest)
        status = dev.committed(small.digest, timeout=30)
        assert time.monotonic() - switched < 25, "the new desired bundle waited for the old download"
        assert status["fetch"]["interrupted"] >= 1, status["fetch"]
        assert status["download"] is None
        assert not (tmp_path / "switch" / "incoming" / slow.digest.removeprefix("sha256:")).exists()
