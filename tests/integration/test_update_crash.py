"""Crash drill and driver behaviour on real files.

The drill runs ``python -m edge_runtime.update.crashdrill`` as a real subprocess, SIGKILLs it at every state
boundary of an update (before and after the journal write), restarts it and checks the device comes back
consistent: the journal loads, the served bundle is a verified slot (the old one unless the commit was
journaled), ``bundles/`` never holds a partial or unverified file, and the update then converges.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.update.driver import UpdateDriver
from edge_runtime.update.events import CanaryFailed, CanaryStarted, DesiredBundleChanged, TrialFailed
from edge_runtime.update.journal import Journal
from edge_runtime.update.record import IN_PROGRESS, UpdateRecord, UpdateState
from edge_runtime.update.slots import BundleSlots
from edge_runtime.update.testing import (
    DirectoryFetcher,
    ManifestVerifier,
    PublishedBundle,
    RecordingConfigs,
    RecordingReporter,
    RecordingSwitcher,
    ScriptedEvaluator,
    manifests_of,
    publish_bundle,
)
from edgefleet.contract.digests import mismatched_digests

pytestmark = pytest.mark.integration

S = UpdateState


@dataclass
class World:
    blobs: Path
    v0: PublishedBundle
    v1: PublishedBundle
    v2: PublishedBundle

    @property
    def bundles(self) -> dict[str, PublishedBundle]:
        return {b.digest: b for b in (self.v0, self.v1, self.v2)}


def publish_world(blobs: Path) -> World:
    def files(version: int) -> dict[str, bytes]:
        return {
            "model.onnx": bytes([version]) * 4096 + os.urandom(64),
            "labels.txt": f"cat\ndog\nv{version}\n".encode(),
            "engines/sm87.plan": bytes([version + 10]) * 777,
        }

    return World(
        blobs,
        publish_bundle(blobs, "v0", files(0)),
        publish_bundle(blobs, "v1", files(1)),
        publish_bundle(blobs, "v2", files(2)),
    )


@dataclass
class Device:
    driver: UpdateDriver
    slots: BundleSlots
    switcher: RecordingSwitcher
    evaluator: ScriptedEvaluator
    reporter: RecordingReporter
    fetcher: DirectoryFetcher
    journal: Journal


def device(
    data: Path,
    world: World,
    *,
    evaluator: ScriptedEvaluator | None = None,
    fetcher: DirectoryFetcher | None = None,
    switcher: RecordingSwitcher | None = None,
    configs: RecordingConfigs | None = None,
    margin: int = 0,
) -> Device:
    slots = BundleSlots(data)
    journal = Journal(data / "update", slots=slots)
    switcher = switcher or RecordingSwitcher()
    evaluator = evaluator or ScriptedEvaluator()
    fetcher = fetcher or DirectoryFetcher(world.blobs)
    reporter = RecordingReporter()
    driver = UpdateDriver(
        journal=journal,
        slots=slots,
        fetcher=fetcher,
        verifier=ManifestVerifier(manifests_of(world.bundles.values())),
        switcher=switcher,
        evaluator=evaluator,
        reporter=reporter,
        configs=configs,
        disk_margin_bytes=margin,
    )
    driver.start()
    return Device(driver, slots, switcher, evaluator, reporter, fetcher, journal)


def assert_slots_verified(data: Path, world: World) -> None:
    """Every directory in bundles/ is a complete, byte-exact, read-only copy of a published bundle."""
    bundles_dir = data / "bundles"
    for slot in bundles_dir.iterdir():
        bundle = world.bundles[f"sha256:{slot.name}"]
        present = sorted(p.relative_to(slot).as_posix() for p in slot.rglob("*") if p.is_file())
        assert present == sorted(bundle.manifest), f"slot {slot.name} is incomplete: {present}"
        for name, digest in bundle.manifest.items():
            path = slot / name
            assert f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}" == digest, path
            assert stat.S_IMODE(path.stat().st_mode) == 0o444, path
        assert stat.S_IMODE(slot.stat().st_mode) == 0o555, slot


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return publish_world(tmp_path_factory.mktemp("blobs"))


@pytest.fixture(scope="module")
def base(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A device that committed v0, then v1 (so v1 is committed and v0 previous)."""
    data = tmp_path_factory.mktemp("base")
    dev = device(data, world)
    dev.driver.handle(world.v0.desired())
    dev.driver.handle(world.v1.desired())
    assert dev.driver.record.committed == world.v1.digest
    assert dev.driver.record.previous == world.v0.digest
    return data


# --- the crash drill -----------------------------------------------------------------------------------

BOUNDARIES = [
    f"{state}:{phase}"
    for state in ("downloading", "verifying", "staged", "canary", "trial", "committed")
    for phase in ("before", "after")
]


def drill(data: Path, world: World, *, desired: str | None, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_CRASH_AT"}
    if crash_at:
        env["EDGEFLEET_CRASH_AT"] = crash_at
    cmd = [
        sys.executable,
        "-m",
        "edge_runtime.update.crashdrill",
        "--data-dir",
        str(data),
        "--blobs",
        str(world.blobs),
    ]
    if desired:
        cmd += ["--desired", desired]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


def snapshots(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {snap["phase"]: snap for snap in lines}


def run_boundary(boundary: str, world: World, base: Path, root: Path) -> None:
    data = root / boundary.replace(":", "-")
    shutil.copytree(base, data)
    old, new = world.v1.digest, world.v2.digest

    crashed = drill(data, world, desired=new, crash_at=boundary)
    assert crashed.returncode == -signal.SIGKILL, f"{boundary}: expected SIGKILL, got {crashed.returncode}"
    assert_slots_verified(data, world)  # even at the instant of the crash
    left = Journal(data / "update").load()  # the journal as the dead process left it

    # Restarted with no desired state at all (no controller): an interrupted update resumes from the
    # journal and, with the scripted canary, finishes; a settled journal just serves its committed bundle.
    recovered = snapshots(drill(data, world, desired=None, crash_at=None))["recovered"]
    record = UpdateRecord.from_dict(recovered["record"])
    assert Journal(data / "update").load() == record
    if left.state in IN_PROGRESS:
        assert left.candidate == new, boundary
        expected = new
    else:
        expected = new if boundary == "committed:after" else old
    assert record.state == S.COMMITTED, (boundary, record.failure)
    assert record.committed == expected, boundary
    assert recovered["serving"] == expected, boundary
    assert (data / "bundles" / expected.removeprefix("sha256:")).is_dir()
    assert_slots_verified(data, world)

    # Told (again) to install v2, it is (or gets) there.
    final = snapshots(drill(data, world, desired=new, crash_at=None))["final"]
    assert final["record"]["state"] == "committed" and final["serving"] == new
    assert final["record"]["committed"] == new
    assert_slots_verified(data, world)
    assert not list((data / "incoming").iterdir())


def test_crash_at_every_boundary_recovers_consistently(world: World, base: Path, tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {b: pool.submit(run_boundary, b, world, base, tmp_path) for b in BOUNDARIES}
    for boundary, future in futures.items():
        try:
            future.result()
        except AssertionError as exc:
            raise AssertionError(f"boundary {boundary}: {exc}") from exc


def test_crash_during_recovery_itself(world: World, base: Path, tmp_path: Path) -> None:
    data = tmp_path / "double"
    shutil.copytree(base, data)
    assert drill(data, world, desired=world.v2.digest, crash_at="trial:after").returncode == -signal.SIGKILL
    # The restart dies too, right after journaling the resume (re-verifying the trial's candidate).
    assert drill(data, world, desired=None, crash_at="verifying:after").returncode == -signal.SIGKILL
    left = Journal(data / "update").load()
    assert (left.state, left.resuming, left.candidate) == (S.VERIFYING, S.TRIAL, world.v2.digest)
    # The first death came right after loading the candidate: a crash it may have caused, counted. The
    # second came while verifying (no candidate code ran): a restart, not counted.
    assert (left.interruptions, left.crashes) == (1, 1)
    recovered = snapshots(drill(data, world, desired=None, crash_at=None))["recovered"]
    assert recovered["serving"] == world.v2.digest
    assert recovered["record"]["state"] == "committed"
    assert_slots_verified(data, world)


def test_clean_stop_during_trial_resumes_without_counting_a_crash(world: World, base: Path, tmp_path: Path) -> None:
    data = tmp_path / "clean"
    shutil.copytree(base, data)
    evaluator = ScriptedEvaluator(watch=())  # the watch window never ends: the device is stopped in trial
    dev = device(data, world, evaluator=evaluator)
    assert dev.driver.handle(world.v2.desired()).state == S.TRIAL
    assert dev.driver.stop() is True
    assert dev.driver.handle(TrialFailed("late verdict after stop")).state == S.TRIAL, "nothing decided after stop"
    again = device(data, world, evaluator=ScriptedEvaluator(watch=()))
    record = again.driver.record
    assert (record.state, record.candidate, record.crashes, record.interruptions) == (S.TRIAL, world.v2.digest, 0, 1)
    assert record.failure == "resumed at trial after the process stopped cleanly"
    assert again.switcher.serving == world.v2.digest and again.driver.record.committed == world.v1.digest
    assert ("start_watch", world.v2.digest) in again.evaluator.calls


def test_damaged_journal_after_crash_serves_newest_verified_slot(world: World, base: Path, tmp_path: Path) -> None:
    data = tmp_path / "damaged"
    shutil.copytree(base, data)
    (data / "update" / "journal.json").write_bytes(b"")
    (data / "update" / "journal.prev.json").write_bytes(b"\x00")
    recovered = snapshots(drill(data, world, desired=None, crash_at=None))["recovered"]
    assert recovered["record"]["state"] == "idle"
    assert recovered["serving"] == world.v1.digest  # promoted after v0


# --- driver behaviour, in process --------------------------------------------------------------------------


def test_happy_path_commits_and_collects_old_slots(world: World, base: Path, tmp_path: Path) -> None:
    data = tmp_path / "d"
    shutil.copytree(base, data)
    dev = device(data, world)
    assert dev.switcher.serving == world.v1.digest
    record = dev.driver.handle(world.v2.desired())
    assert record.state == S.COMMITTED
    assert (record.committed, record.previous) == (world.v2.digest, world.v1.digest)
    assert dev.switcher.serving == world.v2.digest
    assert dev.slots.list() == sorted([world.v1.digest, world.v2.digest])
    assert [r.state for r in dev.reporter.reports] == [
        S.COMMITTED,  # recovery at start-up
        S.DOWNLOADING,
        S.VERIFYING,
        S.STAGED,
        S.CANARY,
        S.TRIAL,
        S.COMMITTED,
    ]
    assert Journal(data / "update").load() == record
    assert_slots_verified(data, world)
    # the engine served before is kept through the trial (shadow + instant rollback), then released
    calls = dev.switcher.calls
    assert calls.count(("release_previous", world.v2.digest)) == 1
    assert calls.index(("swap_to_candidate", world.v2.digest)) < calls.index(("release_previous", world.v2.digest))


def test_going_back_to_previous_bundle_needs_no_download(world: World, base: Path, tmp_path: Path) -> None:
    data = tmp_path / "d"
    shutil.copytree(base, data)
    dev = device(data, world)
    record = dev.driver.handle(world.v0.desired())
    assert record.committed == world.v0.digest and record.previous == world.v1.digest
    assert dev.fetcher.calls == []


def test_corrupt_blob_fails_verification_and_is_discarded(world: World, tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    shutil.copytree(world.blobs, blobs)
    model = next(a for a in world.v2.artifacts if a.name == "model.onnx")
    blob = blobs / model.digest.removeprefix("sha256:")
    blob.write_bytes(b"X" + blob.read_bytes()[1:])  # same size, one byte flipped
    bad_world = World(blobs, world.v0, world.v1, world.v2)
    dev = device(tmp_path / "d", bad_world)
    dev.driver.handle(world.v1.desired())
    record = dev.driver.handle(world.v2.desired())
    assert record.state == S.FAILED and record.rejected == world.v2.digest
    assert record.failure is not None and "model.onnx" in record.failure and "sha256 is" in record.failure
    assert mismatched_digests(record.failure) == [model.digest]  # what the controller re-verifies
    assert dev.switcher.serving == world.v1.digest
    assert not dev.slots.has(world.v2.digest) and not dev.slots.has_incoming(world.v2.digest)
    assert dev.driver.handle(world.v2.desired()) == record  # rejected: not retried


def test_flaky_link_resumes_downloads(world: World, tmp_path: Path) -> None:
    fetcher = DirectoryFetcher(world.blobs, fail_after_bytes=1500)
    dev = device(tmp_path / "d", world, fetcher=fetcher)
    record = dev.driver.handle(world.v1.desired())
    assert record.state == S.COMMITTED
    model = next(a for a in world.v1.artifacts if a.name == "model.onnx")
    offsets = [offset for digest, offset in fetcher.calls if digest == model.digest]
    assert offsets == [0, 1500, 3000]
    assert_slots_verified(tmp_path / "d", world)


def test_stage_failure_rolls_back(world: World, tmp_path: Path) -> None:
    switcher = RecordingSwitcher(fail_stage={world.v2.digest})
    dev = device(tmp_path / "d", world, switcher=switcher)
    dev.driver.handle(world.v1.desired())
    record = dev.driver.handle(world.v2.desired())
    assert record.state == S.ROLLED_BACK and record.rejected == world.v2.digest
    assert record.failure is not None and "failed to load" in record.failure
    assert ("start_canary", world.v2.digest) not in dev.evaluator.calls
    assert switcher.serving == world.v1.digest and not dev.slots.has(world.v2.digest)


def test_failed_canary_and_failed_trial_roll_back(world: World, tmp_path: Path) -> None:
    evaluator = ScriptedEvaluator(canary_by_digest={world.v2.digest: (CanaryStarted(), CanaryFailed("p95 41ms"))})
    dev = device(tmp_path / "canary", world, evaluator=evaluator)
    dev.driver.handle(world.v1.desired())
    record = dev.driver.handle(world.v2.desired())
    assert record.state == S.ROLLED_BACK and record.failure == "canary failed: p95 41ms"
    assert dev.switcher.serving == world.v1.digest

    evaluator = ScriptedEvaluator(watch=(TrialFailed("thermal throttling"),))
    dev = device(tmp_path / "trial", world, evaluator=evaluator)
    dev.driver.handle(world.v0.desired())  # the first trial fails too: nothing committed, nothing served
    assert dev.driver.record.committed is None and dev.switcher.serving is None
    assert dev.switcher.calls[-1] == ("swap_to_committed", None)


def test_insufficient_disk_fails_with_numbers(world: World, tmp_path: Path) -> None:
    dev = device(tmp_path / "d", world, margin=1 << 60)
    record = dev.driver.handle(world.v1.desired())
    assert record.state == S.FAILED
    assert record.failure is not None and record.failure.startswith("not enough disk")
    assert dev.fetcher.calls == [] and dev.switcher.serving is None


# --- config candidates through the driver ------------------------------------------------------------------

X1, X2, X3 = ("sha256:" + c * 64 for c in "123")
INFER_1, INFER_2 = "sha256:" + "d" * 64, "sha256:" + "e" * 64  # inference fingerprints (X3 shares X1's)


def test_config_candidates_put_their_config_in_force_and_commit_or_restore_it(
    world: World, base: Path, tmp_path: Path
) -> None:
    data = tmp_path / "d"
    shutil.copytree(base, data)
    configs = RecordingConfigs()
    evaluator = ScriptedEvaluator()
    dev = device(data, world, evaluator=evaluator, configs=configs)
    v1 = world.v1.digest

    # A config that changes inference: a second engine of v1 staged under it, canaried, swapped, committed.
    record = dev.driver.handle(DesiredBundleChanged("", (), "cfg-1", X1, INFER_1))
    assert (record.state, record.committed, record.committed_config) == (S.COMMITTED, v1, X1)
    assert ("stage", v1) in dev.switcher.calls and ("start_canary", v1) in evaluator.calls
    assert (configs.in_force, configs.committed) == (X1, X1) and dev.switcher.serving_config == X1
    assert dev.fetcher.calls == [], "the committed slot is the candidate's: nothing to download"

    # A config that keeps the inference keys: no engine, no shadow; in force for an unpaired watch window.
    calls_before = len(dev.switcher.calls)
    record = dev.driver.handle(DesiredBundleChanged("", (), "cfg-2", X3, INFER_1))
    assert (record.state, record.committed_config) == (S.COMMITTED, X3)
    assert ("stage", v1) not in dev.switcher.calls[calls_before:]
    assert ("start_watch_unpaired", v1) in evaluator.calls and configs.committed == X3

    # A config whose canary fails: the previous config is back in force, still the committed one.
    evaluator.canary = (CanaryStarted(), CanaryFailed("agreement 0.000 < 0.90"))
    record = dev.driver.handle(DesiredBundleChanged("", (), "cfg-3", X2, INFER_2))
    assert (record.state, record.committed_config, record.candidate_config) == (S.ROLLED_BACK, X3, X2)
    assert record.rejected_under(v1, "cfg-3", X2) and record.assignment_id == "cfg-3"
    assert (configs.in_force, configs.committed) == (X3, X3)
    assert dev.slots.has(v1), "a failed config candidate never removes the committed bundle's slot"
    assert Journal(data / "update").load() == record
