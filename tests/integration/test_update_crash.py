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
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.update.driver import UpdateDriver
from edge_runtime.update.errors import FetchError
from edge_runtime.update.events import (
    CanaryFailed,
    CanaryStarted,
    DesiredBundleChanged,
    TrialFailed,
    TrialPassed,
    UpdateEvent,
)
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


def drill(
    data: Path,
    world: World,
    *,
    desired: str | None,
    crash_at: str | None,
    blobs: Path | None = None,
    hold_trial: bool = False,
) -> subprocess.CompletedProcess[str]:
    """One life of the crash drill on ``data`` (``blobs``: another blob store than the world's; ``hold_trial``:
    the watch window never ends)."""
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
        str(blobs or world.blobs),
    ]
    if desired:
        cmd += ["--desired", desired]
    if hold_trial:
        cmd.append("--hold-trial")
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


def corrupt_blobs(world: World, bundle: PublishedBundle, root: Path) -> Path:
    """A copy of the world's blobs where ``bundle``'s model has one byte flipped (same size)."""
    blobs = root / "corrupt-blobs"
    shutil.copytree(world.blobs, blobs)
    model = next(a for a in bundle.artifacts if a.name == "model.onnx")
    blob = blobs / model.digest.removeprefix("sha256:")
    blob.write_bytes(b"X" + blob.read_bytes()[1:])
    return blobs


def test_sigkill_while_a_first_install_trial_is_replaced_recovers_serving_it(world: World, tmp_path: Path) -> None:
    """Nothing committed, v0 serving its trial; v1 desired; SIGKILL at the write that commits v0 and starts v1."""
    v0, v1 = world.v0.digest, world.v1.digest
    first = tmp_path / "first"
    trial = snapshots(drill(first, world, desired=v0, crash_at=None, hold_trial=True))["final"]
    assert (trial["record"]["state"], trial["record"]["committed"], trial["serving"]) == ("trial", None, v0)
    corrupt = corrupt_blobs(world, world.v1, tmp_path)

    # Killed before that write: v0's trial resumes, serving it.
    before = tmp_path / "before"
    shutil.copytree(first, before)
    assert (
        drill(before, world, desired=v1, crash_at="downloading:before", hold_trial=True).returncode == -signal.SIGKILL
    )
    recovered = snapshots(drill(before, world, desired=None, crash_at=None, hold_trial=True))["recovered"]
    assert (recovered["record"]["state"], recovered["record"]["committed"], recovered["serving"]) == ("trial", None, v0)

    # Killed right after it (v0 committed in the journal, its Commit effect not yet run): v0 serves at once;
    # v1's download resumes; v1 is corrupt on the blob store, fails, and v0 still serves, also after a restart.
    after = tmp_path / "after"
    shutil.copytree(first, after)
    assert drill(after, world, desired=v1, crash_at="downloading:after", hold_trial=True).returncode == -signal.SIGKILL
    left = Journal(after / "update").load()
    assert (left.state, left.committed, left.candidate) == (S.DOWNLOADING, v0, v1)
    recovered = snapshots(drill(after, world, desired=None, crash_at=None, blobs=corrupt))["recovered"]
    record = UpdateRecord.from_dict(recovered["record"])
    assert (record.state, record.committed, record.rejected, recovered["serving"]) == (S.FAILED, v0, v1, v0)
    assert record.failure is not None and "model.onnx" in record.failure
    again = snapshots(drill(after, world, desired=None, crash_at=None))["recovered"]
    assert (again["record"]["committed"], again["serving"]) == (v0, v0)
    assert_slots_verified(after, world)

    # The same death, then v1 intact: it passes and replaces v0.
    passes = tmp_path / "passes"
    shutil.copytree(first, passes)
    assert drill(passes, world, desired=v1, crash_at="downloading:after", hold_trial=True).returncode == -signal.SIGKILL
    done = snapshots(drill(passes, world, desired=None, crash_at=None))["recovered"]
    assert (done["record"]["state"], done["record"]["committed"], done["record"]["previous"]) == ("committed", v1, v0)
    assert done["serving"] == v1
    assert_slots_verified(passes, world)


class ServingProbe:
    """What the switcher serves whenever the replacement is fetched or canaried, and what the alerts say."""

    def __init__(self, switcher: RecordingSwitcher) -> None:
        self.switcher = switcher
        self.seen: list[tuple[str, str | None]] = []

    def note(self, what: str) -> None:
        self.seen.append((what, self.switcher.serving))


class ProbedFetcher(DirectoryFetcher):
    """Fetches from a blob directory, noting what serves; ``data_loss`` digests fail as a corrupt blob does."""

    def __init__(self, blob_dir: Path, probe: ServingProbe, data_loss: set[str]) -> None:
        super().__init__(blob_dir)
        self.probe, self.data_loss = probe, data_loss

    def fetch(
        self,
        digest: str,
        dest_path: Path,
        expected_size: int,
        resume_from: int,
        *,
        cancel: threading.Event | None = None,
    ) -> None:
        self.probe.note(f"fetch {digest}")
        if digest in self.data_loss:
            raise FetchError(f"DATA_LOSS: blob {digest} fails its own digest on the controller")
        super().fetch(digest, dest_path, expected_size, resume_from, cancel=cancel)


class ProbedEvaluator(ScriptedEvaluator):
    def __init__(self, probe: ServingProbe, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.probe = probe

    def start_canary(self, digest: str, bundle_dir: Path) -> list[UpdateEvent]:
        self.probe.note(f"canary {digest}")
        return list(super().start_canary(digest, bundle_dir))


def test_a_first_install_in_trial_keeps_serving_while_replacements_download_canary_and_fail(
    world: World, tmp_path: Path
) -> None:
    v0, v1, v2 = world.v0.digest, world.v1.digest, world.v2.digest
    switcher = RecordingSwitcher()
    probe = ServingProbe(switcher)
    model_v1 = next(a for a in world.v1.artifacts if a.name == "model.onnx").digest
    fetcher = ProbedFetcher(world.blobs, probe, data_loss={model_v1})
    evaluator = ProbedEvaluator(
        probe, watch=(), canary_by_digest={v2: (CanaryStarted(), CanaryFailed("3 inference errors in 60 frames"))}
    )
    dev = device(tmp_path / "d", world, fetcher=fetcher, evaluator=evaluator, switcher=switcher)
    trial = dev.driver.handle(world.v0.desired())
    assert (trial.state, trial.committed, switcher.serving) == (S.TRIAL, None, v0)
    served_from, seen_from = len(switcher.calls), len(probe.seen)

    # v1's blob is corrupt on the controller: every attempt fails, v0 serves throughout and after.
    failed = dev.driver.handle(world.v1.desired())
    assert (failed.state, failed.committed, failed.candidate) == (S.FAILED, v0, v1)
    assert failed.failure is not None and "DATA_LOSS" in failed.failure
    assert dev.reporter.alerts[-1][0] == v0 and dev.reporter.alerts[-1][1].startswith("first_install.committed_early")
    # v2's canary finds errors: rolled back, v0 (committed now) still serves.
    rolled_back = dev.driver.handle(world.v2.desired())
    assert (rolled_back.state, rolled_back.committed, rolled_back.rejected) == (S.ROLLED_BACK, v0, v2)
    assert ("canary " + v2, v0) in probe.seen and ("fetch " + model_v1, v0) in probe.seen
    assert all(serving == v0 for _, serving in probe.seen[seen_from:]), probe.seen[seen_from:]
    assert ("swap_to_committed", None) not in switcher.calls[served_from:] and switcher.serving == v0
    assert len(dev.reporter.alerts) == 1, "committed early once"
    # A restart (no clean stop; on a copy of the data dir) serves v0 at once.
    shutil.copytree(tmp_path / "d", tmp_path / "restart")
    restarted = device(tmp_path / "restart", world)
    assert (restarted.driver.record.committed, restarted.switcher.serving) == (v0, v0)

    # v2 under a new assignment and a passing canary: it replaces v0 as on any device.
    evaluator.canary_by_digest, evaluator.watch = {}, (TrialPassed(),)
    record = dev.driver.handle(DesiredBundleChanged(v2, world.v2.artifacts, "retry-v2"))
    assert (record.state, record.committed, record.previous, switcher.serving) == (S.COMMITTED, v2, v0, v2)


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
