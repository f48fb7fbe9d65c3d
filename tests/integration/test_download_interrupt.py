"""The update driver with the real BlobFetcher over real gRPC and the fault proxy: a download stuck on a dead
link is cancelled by a new desired bundle or a stop without spending a download attempt, keeps its bytes
(discarded once a new candidate replaces it), resumes when the next event keeps its candidate, and resumes
from the kept bytes after a restart."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_runtime.agent.download.fetcher import BlobFetcher
from edge_runtime.agent.retry import Backoff
from edge_runtime.update.driver import UpdateDriver
from edge_runtime.update.events import DesiredBundleChanged
from edge_runtime.update.journal import Journal
from edge_runtime.update.record import UpdateRecord, UpdateState
from edge_runtime.update.slots import BundleSlots
from edge_runtime.update.testing import (
    ManifestVerifier,
    PublishedBundle,
    RecordingReporter,
    RecordingSwitcher,
    ScriptedEvaluator,
    manifests_of,
    publish_bundle,
)
from edgefleet_testing.blobserver import BlobServer
from edgefleet_testing.faultproxy import FaultProxy
from edgefleet_testing.waiting import wait_until

pytestmark = pytest.mark.integration

MODEL = 3 << 20


@dataclass
class World:
    server: BlobServer
    proxy: FaultProxy
    v1: PublishedBundle
    v2: PublishedBundle
    manifests: dict[str, dict[str, str]]

    def device(self, data: Path, reporter: RecordingReporter | None = None) -> tuple[UpdateDriver, BlobFetcher]:
        slots = BundleSlots(data)
        fetcher = BlobFetcher(
            self.proxy.address,
            lambda: (),
            chunk_bytes=64 << 10,
            stall_timeout_s=0.5,
            connect_timeout_s=0.3,
            backoff=Backoff(multiplier=0.05, max_s=0.2),
        )
        driver = UpdateDriver(
            journal=Journal(data / "update", slots=slots),
            slots=slots,
            fetcher=fetcher,
            verifier=ManifestVerifier(self.manifests),
            switcher=RecordingSwitcher(),
            evaluator=ScriptedEvaluator(),
            reporter=reporter or RecordingReporter(),
            disk_margin_bytes=0,
        )
        driver.start()
        return driver, fetcher


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    blobs = tmp_path / "blobs"

    def files(version: int) -> dict[str, bytes]:
        return {"model.onnx": hashlib.shake_256(bytes([version])).digest(MODEL), "labels.txt": b"cat\ndog\n"}

    v1, v2 = publish_bundle(blobs, "v1", files(1)), publish_bundle(blobs, "v2", files(2))
    with BlobServer() as server, FaultProxy(server.port) as proxy:
        server.add_directory(blobs)
        yield World(server, proxy, v1, v2, manifests_of((v1, v2)))


def _partial(data: Path, bundle: PublishedBundle) -> int:
    path = data / "incoming" / bundle.digest.removeprefix("sha256:") / "model.onnx"
    return path.stat().st_size if path.exists() else 0


def _start_stuck_download(
    world: World, driver: UpdateDriver, fetcher: BlobFetcher, data: Path, bundle: PublishedBundle | None = None
) -> threading.Thread:
    """Desire ``bundle`` (v1) on a slow link and blackhole it once some of the model arrived: the fetch
    retries forever."""
    bundle = bundle or world.v1
    world.proxy.bandwidth_bytes_per_s = 3_000_000
    worker = threading.Thread(target=driver.handle, args=(bundle.desired(),))
    worker.start()
    deadline = time.monotonic() + 20
    while _partial(data, bundle) < 256 << 10:
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.01)
    world.proxy.blackhole = True
    lost = fetcher.counters.stalls + fetcher.counters.connect_timeouts
    wait_until(
        lambda: fetcher.counters.stalls + fetcher.counters.connect_timeouts >= lost + 2,
        20,
        "two stalls or handshake timeouts on the dead link",
        interval=0.01,
    )  # none may count
    assert worker.is_alive(), "a dead link must not end the download"
    return worker


def _heal(world: World) -> None:
    world.proxy.blackhole = False
    world.proxy.bandwidth_bytes_per_s = 0


def _record(driver: UpdateDriver) -> UpdateRecord:
    return driver.record


def test_new_desired_bundle_cancels_a_stuck_download_without_spending_an_attempt(world: World, tmp_path: Path) -> None:
    data = tmp_path / "dev"
    driver, fetcher = world.device(data)
    worker = _start_stuck_download(world, driver, fetcher, data)
    attempts = _record(driver).download_attempts

    assert driver.interrupt_download(keep=world.v1.digest) is False, "the bundle in flight is kept"
    asked = time.monotonic()
    assert driver.interrupt_download(keep=world.v2.digest) is True
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - asked < 3.0, "not the stall limit, nor never"
    record = _record(driver)
    assert record.state == UpdateState.DOWNLOADING and record.candidate == world.v1.digest
    assert record.download_attempts == attempts == 1 and record.failure is None, "the interrupt counted nothing"
    assert fetcher.counters.stalls + fetcher.counters.connect_timeouts >= 2, fetcher.counters
    kept = _partial(data, world.v1)
    assert kept >= 256 << 10

    _heal(world)
    driver.handle(world.v2.desired())
    record = _record(driver)
    assert record.state == UpdateState.COMMITTED and record.committed == world.v2.digest
    assert _partial(data, world.v1) == 0, "the replaced candidate's partial download is discarded"


def test_an_event_that_keeps_the_candidate_resumes_the_interrupted_download(world: World, tmp_path: Path) -> None:
    data = tmp_path / "dev"
    driver, fetcher = world.device(data)
    worker = _start_stuck_download(world, driver, fetcher, data)
    assert driver.interrupt_download(keep=world.v2.digest)
    worker.join(5)
    kept = _partial(data, world.v1)

    _heal(world)
    before, written = len(world.server.requests), fetcher.counters.bytes_written
    driver.handle(world.v1.desired())  # v1 after all: "already being installed", and the download goes on
    record = _record(driver)
    assert record.state == UpdateState.COMMITTED and record.committed == world.v1.digest
    assert kept in [offset for offset, _ in world.server.requests[before:]], "resumed from the kept bytes"
    total = sum(a.size for a in world.v1.artifacts if a.name != "bundle.json")
    assert fetcher.counters.bytes_written - written <= total - kept, "the kept bytes were not fetched again"


def test_stop_during_a_stuck_download_is_clean_and_the_restart_resumes_from_the_kept_bytes(
    world: World, tmp_path: Path
) -> None:
    data = tmp_path / "dev"
    driver, fetcher = world.device(data)
    worker = _start_stuck_download(world, driver, fetcher, data)
    asked = time.monotonic()
    assert driver.stop(timeout_s=5) is True, "the clean-stop marker is written"
    worker.join(5)
    assert time.monotonic() - asked < 3.0
    fetcher.close()
    kept = _partial(data, world.v1)
    assert kept >= 256 << 10

    _heal(world)
    before = len(world.server.requests)
    restarted, refetcher = world.device(data)  # start() recovers: the download resumes
    record = _record(restarted)
    assert record.state == UpdateState.COMMITTED and record.committed == world.v1.digest
    assert record.crashes == 0 and record.interruptions == 0
    model_requests = [offset for offset, _ in world.server.requests[before:] if offset]
    assert model_requests and min(model_requests) == kept, (kept, model_requests)
    assert refetcher.counters.resumes >= 1
    total = sum(a.size for a in world.v1.artifacts if a.name != "bundle.json")
    assert refetcher.counters.bytes_written <= total - kept + (64 << 10)


def test_the_downloading_state_is_reported_while_the_download_is_still_stuck(world: World, tmp_path: Path) -> None:
    data = tmp_path / "dev"
    reporter = RecordingReporter()
    driver, fetcher = world.device(data, reporter)
    driver.handle(world.v1.desired())
    assert _record(driver).committed == world.v1.digest
    worker = _start_stuck_download(world, driver, fetcher, data, world.v2)
    try:
        last = reporter.reports[-1]  # the fetch of v2 is still blocked on the dead link
        assert (last.state, last.candidate, last.committed) == (
            UpdateState.DOWNLOADING,
            world.v2.digest,
            world.v1.digest,
        ), "the new state is reported when the download starts, not when it ends"
        assert last == _record(driver), "the reported record is the journaled one"
    finally:
        assert driver.stop(timeout_s=5) is True
        worker.join(5)
    assert not worker.is_alive()


def _handle_within(driver: UpdateDriver, event: DesiredBundleChanged, timeout_s: float) -> UpdateRecord:
    """``driver.handle(event)``, failing (after a clean stop, so no thread is left stuck) past ``timeout_s``."""
    worker = threading.Thread(target=driver.handle, args=(event,))
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        driver.stop(timeout_s=5)
        worker.join(5)
        pytest.fail(f"handling {event.digest[:15]} took over {timeout_s}s: the download was not cancelled")
    return driver.record


def test_an_offer_made_before_the_download_registers_cancels_it(world: World, tmp_path: Path) -> None:
    data = tmp_path / "dev"
    driver, fetcher = world.device(data)
    world.proxy.blackhole = True  # a download of v1 that ran would retry forever
    driver.offer(world.v1.digest)
    driver.offer(world.v2.digest)  # queued before the v1 event was decided: no download in flight to interrupt
    record = _handle_within(driver, world.v1.desired(), 3.0)  # not the stall limit, nor never
    assert record.state == UpdateState.DOWNLOADING and record.candidate == world.v1.digest
    assert record.download_attempts == 1 and record.failure is None, "the cancel counted nothing"
    assert fetcher.counters.stalls + fetcher.counters.connect_timeouts == 0, "no fetch was attempted"

    _heal(world)
    record = driver.handle(world.v2.desired())  # the offered event
    assert record.state == UpdateState.COMMITTED and record.committed == world.v2.digest
    assert _partial(data, world.v1) == 0


def test_an_offer_that_keeps_or_is_ignored_leaves_the_candidate_downloading(world: World, tmp_path: Path) -> None:
    data = tmp_path / "dev"
    driver, _ = world.device(data)
    driver.offer(world.v1.digest)
    driver.offer("")  # "" keeps the bundle being installed: it cancels nothing
    assert _handle_within(driver, world.v1.desired(), 10.0).committed == world.v1.digest
    assert driver.handle(DesiredBundleChanged("")).committed == world.v1.digest

    other = DesiredBundleChanged("sha256:" + "c" * 64, ())  # lists no artifacts: the machine ignores it
    driver.offer(world.v2.digest)
    driver.offer(other.digest)
    record = _handle_within(driver, world.v2.desired(), 3.0)
    assert record.state == UpdateState.DOWNLOADING and record.candidate == world.v2.digest, "cancelled for the offer"
    record = driver.handle(other)  # ignored: v2 is still the candidate, and its download resumes at once
    assert record.state == UpdateState.COMMITTED and record.committed == world.v2.digest
