"""The edge runtime agent end to end: a real controller process, real ``edge-runtime`` processes, real gRPC
on loopback, real onnxruntime. Observed as an operator would: FleetService.GetDevice, the device's
status.json, its frame log and its local gRPC health endpoint.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.contract.signing import SigningKey
from edgefleet.v1 import common_pb2, fleet_pb2
from edgefleet_testing.bundles import SignedBundle, make_bundle
from edgefleet_testing.faultproxy import FaultProxy
from edgefleet_testing.fleet import Controller, running_edge, start_controller
from edgefleet_testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Fleet:
    ctl: Controller
    key: SigningKey
    v1: SignedBundle
    v2: SignedBundle
    root: Path

    def token(self) -> str:
        return self.ctl.enrollment_token("lab")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    with start_controller(root / "ctl") as ctl:
        key = ctl.trust_new_key(root / "keys")
        v1 = make_bundle(root / "b1", key, version="1.0.0", seed=1)
        v2 = make_bundle(root / "b2", key, version="2.0.0", seed=1)  # same weights: the shadow canary agrees
        ctl.push(v1)
        ctl.push(v2)
        ctl.apply_config(watch_window_s=0.5)
        yield Fleet(ctl, key, v1, v2, root)


def frames_of(status: dict[str, object]) -> int:
    value = status.get("frames_inferred", 0)
    assert isinstance(value, int)
    return value


def test_hot_swap_in_the_agent_drops_no_frame(fleet: Fleet, tmp_path: Path) -> None:
    with running_edge(fleet.ctl.address, tmp_path / "swap", fleet.token(), name="swap") as dev:
        fleet.ctl.set_desired("swap", fleet.v1.digest)
        dev.committed(fleet.v1.digest)
        fleet.ctl.set_desired("swap", fleet.v2.digest)
        dev.committed(fleet.v2.digest)
        before = frames_of(dev.status())
        dev.wait_for(lambda s: frames_of(s) > before + 10, 10, "frames on v2")

        with grpc.insecure_channel(f"127.0.0.1:{dev.health_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        reported = wait_until(
            lambda: (r := fleet.ctl.device("swap").reported).running_bundle_digest == fleet.v2.digest and r,
            15,
            "controller sees v2 running",
        )
        assert reported.update_state == common_pb2.UPDATE_STATE_COMMITTED
        assert reported.active_providers == ["CPUExecutionProvider"]
        assert reported.hardware.hardware_class
        assert set(reported.slot_digests) == {fleet.v1.digest, fleet.v2.digest}

    frames = dev.frames()
    ids = [frame_id for frame_id, _ in frames]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a frame id is missing or repeated across the swaps"
    digests = [digest for _, digest in frames]
    changes = [(a, b) for a, b in itertools.pairwise(digests) if a != b]
    assert changes == [(fleet.v1.digest, fleet.v2.digest)]


def test_corrupt_artifact_on_the_controller_fails_while_the_old_bundle_serves(fleet: Fleet, tmp_path: Path) -> None:
    bad = make_bundle(tmp_path / "bad", fleet.key, version="3.0.0-corrupt", seed=3)
    fleet.ctl.push(bad)
    blob = fleet.ctl.blob_path(bad.artifact_digests["model"])
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))

    with running_edge(fleet.ctl.address, tmp_path / "corrupt", fleet.token(), name="corrupt") as dev:
        fleet.ctl.set_desired("corrupt", fleet.v1.digest)
        dev.committed(fleet.v1.digest)
        fleet.ctl.set_desired("corrupt", bad.digest)
        reported = wait_until(
            lambda: (r := fleet.ctl.device("corrupt").reported).update_state == common_pb2.UPDATE_STATE_FAILED and r,
            30,
            "controller sees the update failed",
        )
        # The controller hashes the blob before serving it: the device never receives a corrupt byte, and the
        # reason it reports says what the operator does next.
        assert "quarantined" in reported.update_reason
        assert "fleetctl bundle push" in reported.update_reason
        assert bad.artifact_digests["model"][:40] in reported.update_reason
        assert reported.running_bundle_digest == fleet.v1.digest
        assert bad.digest not in reported.slot_digests
        frames = frames_of(dev.status())
        status = dev.wait_for(lambda s: frames_of(s) > frames + 15, 10, "frames keep coming")
        assert status["serving"] == fleet.v1.digest
        # A download the controller refused is a failed attempt, not a verdict on the bundle: once the operator
        # re-pushes it (tests/e2e/test_blob_quarantine.py), the device is free to try it again.
        assert status["update"]["state"] == "failed"
        assert status["update"]["candidate"] == bad.digest


def test_too_little_disk_is_refused_before_any_download(fleet: Fleet, tmp_path: Path) -> None:
    huge_margin = str(1 << 60)  # more than any disk: the check must refuse without fetching a byte
    with running_edge(
        fleet.ctl.address,
        tmp_path / "disk",
        fleet.token(),
        name="disk",
        extra_args=["--disk-margin-bytes", huge_margin],
    ) as dev:
        fleet.ctl.set_desired("disk", fleet.v1.digest)
        reported = wait_until(
            lambda: (r := fleet.ctl.device("disk").reported).update_state == common_pb2.UPDATE_STATE_FAILED and r,
            30,
            "controller sees the disk refusal",
        )
        assert "not enough disk" in reported.update_reason
        assert "free" in reported.update_reason
        status = dev.status()
        assert status["fetch"]["bytes_received"] == 0
        assert not list((tmp_path / "disk" / "bundles").iterdir())


def test_offline_device_keeps_serving_and_applies_the_new_bundle_when_back(fleet: Fleet, tmp_path: Path) -> None:
    with (
        FaultProxy(fleet.ctl.port) as proxy,
        running_edge(proxy.address, tmp_path / "offline", fleet.token(), name="offline", sync_wait_s=2) as dev,
    ):
        fleet.ctl.set_desired("offline", fleet.v1.digest)
        dev.committed(fleet.v1.digest)

        proxy.blackhole = True
        fleet.ctl.set_desired("offline", fleet.v2.digest)  # decided while the device cannot hear it
        status = dev.wait_for(lambda s: not s["online"], 20, "the device notices the link is dead")
        frames = frames_of(status)
        time.sleep(2)
        status = dev.status()
        assert frames_of(status) > frames + 30, "the frame loop must not wait on the network"
        assert status["serving"] == fleet.v1.digest

        proxy.blackhole = False
        proxy.reset_all()  # the link comes back as a new path (NAT rebinding): old connections are gone
        dev.committed(fleet.v2.digest, timeout=45)


def test_download_through_a_resetting_link_resumes_and_refetches_at_most_a_chunk_per_reset(
    fleet: Fleet, tmp_path: Path
) -> None:
    padding = 12 << 20
    big = make_bundle(tmp_path / "big", fleet.key, version="4.0.0-big", seed=4, padding_bytes=padding)
    fleet.ctl.push(big)
    chunk = 256 << 10
    with (
        FaultProxy(fleet.ctl.port) as proxy,
        running_edge(
            proxy.address,
            tmp_path / "resets",
            fleet.token(),
            name="resets",
            extra_args=["--chunk-bytes", str(chunk)],
        ) as dev,
    ):
        dev.wait_for(lambda s: s["online"], 20, "online")
        proxy.reset_every_bytes = 3 << 20
        fleet.ctl.set_desired("resets", big.digest)
        status = dev.committed(big.digest, timeout=60)

    artifacts = sum(p.stat().st_size for p in (big.directory / "artifacts").iterdir())
    assert proxy.stats.resets >= 4, proxy.stats
    fetch = status["fetch"]
    assert fetch["bytes_received"] == artifacts, "every byte was received exactly once as a whole chunk"
    assert fetch["resumes"] + fetch["connections"] > proxy.stats.resets
    # Whatever crossed the link beyond the artifacts is the in-flight chunk of each reset plus sync traffic.
    wasted = proxy.stats.bytes_down - artifacts
    assert wasted <= proxy.stats.resets * (chunk + (64 << 10)) + (1 << 20), (wasted, proxy.stats)


def test_a_disabled_device_says_so_and_keeps_serving_its_committed_bundle(fleet: Fleet, tmp_path: Path) -> None:
    with running_edge(fleet.ctl.address, tmp_path / "disabled", fleet.token(), name="disabled", sync_wait_s=2) as dev:
        fleet.ctl.set_desired("disabled", fleet.v1.digest)
        dev.committed(fleet.v1.digest)
        fleet.ctl.fleet.DisableDevice(
            fleet_pb2.DeviceActionRequest(device="disabled"), metadata=fleet.ctl.md, timeout=10
        )
        wait_until(lambda: "agent.device_disabled" in dev.log.read_text(), 20, "the agent logs that it was disabled")
        line = next(x for x in dev.log.read_text().splitlines() if "agent.device_disabled" in x)
        assert "disabled by an operator" in line and "fleetctl device enable disabled" in line
        frames = frames_of(dev.status())
        time.sleep(2)
        status = dev.status()
        assert status["serving"] == fleet.v1.digest and status["update"]["committed"] == fleet.v1.digest
        assert frames_of(status) > frames + 30, "a disabled device keeps inferring on its committed bundle"
        assert (dev.data_dir / "credential.json").exists()  # it does not wipe itself
        assert dev.proc.poll() is None
