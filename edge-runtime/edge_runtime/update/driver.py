"""The thin shell around the update state machine: journal each decision, then execute its effects.

``UpdateDriver`` owns the loop ``event -> decide -> journal.write -> effects -> follow-up events``. Effects
reach the world only through the ports below (Protocols), so the driver runs the same against the real
fetcher, verifier, inference engine and canary as against the fakes in ``edge_runtime.update.testing``.

Rules the driver keeps:

- A record is written durably before any of its effects runs (the journal's rule; the crash drill proves it).
- An effect whose port reports a failure turns it into the matching event (``DownloadFailed``,
  ``VerificationFailed``, ``CanaryFailed``, ``TrialFailed``, ``DiskInsufficient``); the rest of that
  decision's effects are skipped and the failure event is decided next.
- Ports may return follow-up events (a synchronous canary returns its verdict at once); an asynchronous
  implementation returns nothing and later calls ``handle`` with the verdict. The driver is synchronous:
  an asyncio agent runs ``handle`` in a worker thread, one call at a time.
- Verification checks every artifact's sha256 and that ``bundle.json`` hashes to the bundle digest, then
  asks the ``BundleVerifier`` (signature, manifest). Only then is the download promoted to a slot.
- A download gives up promptly when ``interrupt_download`` (a new desired bundle) or ``stop`` cancels it:
  nothing is counted, the bytes kept stay, the record stays ``downloading``. If the next event leaves that
  candidate downloading (it was not replaced after all), the download resumes at once.
- Offers (``offer``): the agent numbers each desired state it queues. While a newer offer of another bundle
  is still undecided, a download that registers (a new one, a retry, a resume) is cancelled at once, so an
  interrupt asked before the download began is not lost; once that offer is decided (even ignored), the
  candidate it left downloading resumes. An offer of ``""`` (keep the bundle) cancels nothing.
- Clean stops: ``stop()`` (the agent calls it on SIGTERM) lets the decision in progress finish its current
  effect (a download in flight is cancelled), decides nothing more (the journal already says where the update
  stands, and the next start resumes from there), then writes the journal's clean-stop marker. ``start()``
  takes the marker and tells the machine whether the previous process stopped cleanly
  (``Recovered.clean_shutdown``): only a death without it can count as a crash of the candidate.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol, assert_never

import structlog

from edge_runtime.update.decision import Decision
from edge_runtime.update.effects import (
    CollectGarbage,
    Commit,
    CommitConfig,
    DiscardCandidate,
    RaiseAlert,
    ReportState,
    Stage,
    StartCanary,
    StartDownload,
    StartWatch,
    StopEvaluation,
    SwapToCandidate,
    SwapToCommitted,
    UpdateEffect,
    Verify,
)
from edge_runtime.update.errors import (
    DiskSpaceError,
    EngineSwitchError,
    FetchError,
    FetchInterrupted,
    SlotError,
    SlotNotFoundError,
)
from edge_runtime.update.events import (
    CandidateLoadFailed,
    DesiredBundleChanged,
    DiskInsufficient,
    DownloadCompleted,
    DownloadFailed,
    TrialFailed,
    UpdateEvent,
    VerificationFailed,
    VerificationPassed,
)
from edge_runtime.update.journal import Journal
from edge_runtime.update.record import DEFAULT_LIMITS, RetryLimits, UpdateRecord, UpdateState
from edge_runtime.update.slots import BundleSlots
from edge_runtime.update.state import decide, recover
from edgefleet.contract.digests import file_sha256_digest, mismatch_reason
from edgefleet.contract.errors import BundleFormatError, ContractError, DigestMismatchError
from edgefleet.contract.shown import shown

log = structlog.get_logger(__name__)

BUNDLE_MANIFEST = "bundle.json"
DEFAULT_DISK_MARGIN_BYTES = 256 * 1024 * 1024

Phase = Literal["before", "after"]
BoundaryHook = Callable[[UpdateState, UpdateState, Phase], None]
"""Called with (state before, state after, phase) around every journal write; the crash drill kills here."""


class ArtifactFetcher(Protocol):
    """Downloads one artifact, appending to ``dest_path`` from byte ``resume_from``."""

    def fetch(
        self,
        digest: str,
        dest_path: Path,
        expected_size: int,
        resume_from: int,
        *,
        cancel: threading.Event | None = None,
    ) -> None:
        """Write bytes ``resume_from..expected_size`` of ``digest``; raise ``FetchError`` on a failure that
        counts, ``FetchInterrupted`` soon after ``cancel`` is set."""
        ...


class BundleVerifier(Protocol):
    """Checks a downloaded bundle's signature and manifest."""

    def verify(self, bundle_dir: Path) -> None:
        """Return when the bundle in ``bundle_dir`` is authentic; raise a ``ContractError`` otherwise."""
        ...


class EngineSwitcher(Protocol):
    """The inference engine's view of candidates: load off the frame path, then swap by reference.

    A candidate is (bundle, config): ``config`` is a config digest (None: the config in force) whose values
    the switcher looks up; two configs with the same inference keys load the same engine."""

    def stage(self, digest: str, bundle_dir: Path, config: str | None = None) -> None:
        """Load and warm the candidate without serving it; raise ``EngineSwitchError`` if it cannot."""
        ...

    def swap_to_candidate(self, digest: str, config: str | None = None) -> None:
        """Serve the staged candidate (or keep the engine serving when ``config`` does not change its
        inference); raise ``EngineSwitchError`` if it cannot."""
        ...

    def swap_to_committed(self, digest: str | None, bundle_dir: Path | None, config: str | None = None) -> None:
        """Serve the committed bundle under the committed config (``None``: nothing committed, serve nothing)."""
        ...

    def release_previous(self) -> None:
        """Drop the engine served before the candidate: kept loaded through the watch window (it runs in shadow
        there and is the instant rollback), its memory is freed once the candidate is committed."""
        ...


class ConfigApplier(Protocol):
    """The device's configs by digest: which one is in force, which one is the durable last applied one."""

    def use(self, digest: str | None) -> None:
        """Put ``digest`` in force (None: the last applied config)."""
        ...

    def commit(self, digest: str | None) -> None:
        """Make ``digest`` the durable last applied config (None: keep it)."""
        ...

    def saved(self) -> tuple[str, str] | None:
        """(digest, inference fingerprint) of the last applied config on disk, if any."""
        ...


class NoConfigs:
    """A ``ConfigApplier`` for devices and tests that have no configs."""

    def use(self, digest: str | None) -> None:
        return None

    def commit(self, digest: str | None) -> None:
        return None

    def saved(self) -> tuple[str, str] | None:
        return None


class CandidateEvaluator(Protocol):
    """Runs the canary and the post-swap watch window; may return the verdict at once."""

    def start_canary(self, digest: str, bundle_dir: Path) -> Sequence[UpdateEvent]: ...

    def start_watch(self, digest: str, bundle_dir: Path, *, paired: bool = True) -> Sequence[UpdateEvent]: ...

    def stop(self, digest: str) -> None: ...


class StateReporter(Protocol):
    """Publishes the record as the device's reported update state (for the next sync), and alerts."""

    def report(self, record: UpdateRecord) -> None: ...

    def report_alert(self, bundle_digest: str, reason: str, numbers: Mapping[str, float]) -> None: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Outcome:
    events: list[UpdateEvent] = field(default_factory=list)
    abort: bool = False


class UpdateDriver:
    """Drives one device's updates: ``start()`` once, then ``handle(event)`` for every event."""

    def __init__(
        self,
        *,
        journal: Journal,
        slots: BundleSlots,
        fetcher: ArtifactFetcher,
        verifier: BundleVerifier,
        switcher: EngineSwitcher,
        evaluator: CandidateEvaluator,
        reporter: StateReporter,
        configs: ConfigApplier | None = None,
        clock: Callable[[], datetime] = _utc_now,
        limits: RetryLimits = DEFAULT_LIMITS,
        disk_margin_bytes: int = DEFAULT_DISK_MARGIN_BYTES,
        boundary_hook: BoundaryHook | None = None,
    ) -> None:
        self._journal = journal
        self._slots = slots
        self._fetcher = fetcher
        self._verifier = verifier
        self._switcher = switcher
        self._evaluator = evaluator
        self._reporter = reporter
        self._configs: ConfigApplier = configs or NoConfigs()
        self._clock = clock
        self._limits = limits
        self._margin = disk_margin_bytes
        self._hook = boundary_hook
        self._record: UpdateRecord | None = None
        self._lock = threading.Lock()  # one decision chain at a time; stop() waits for it
        self._stopping = threading.Event()
        self._clean = False
        # The download in flight (bundle digest, its cancel event); the last one interrupted, to resume.
        self._download_lock = threading.Lock()
        self._download_cancel: tuple[str, threading.Event] | None = None
        self._interrupted: StartDownload | None = None
        # Desired states the agent offered and how many of them were decided; the newest offer's bundle.
        self._offers = 0
        self._offers_decided = 0
        self._newest_offer = ""

    @property
    def record(self) -> UpdateRecord:
        if self._record is None:
            raise RuntimeError("UpdateDriver.start() must be called before the record is read")
        return self._record

    def load(self) -> UpdateRecord:
        """Read the journal and take the clean-stop marker; effects wait for ``start``. Idempotent."""
        with self._lock:
            if self._record is None:
                self._record = self._journal.load()
                self._clean = self._journal.take_clean_stop()
            return self._record

    def start(self) -> UpdateRecord:
        """Load the journal and recover: the committed bundle serves, an interrupted update resumes."""
        record = self.load()
        with self._lock:
            log.info(
                "update.recovering",
                state=record.state.value,
                committed=record.committed,
                candidate=record.candidate,
                clean_shutdown=self._clean,
            )
            decision = recover(
                record, self._clock(), self._limits, clean_shutdown=self._clean, saved_config=self._configs.saved()
            )
            self._run(decision)
            return self.record

    def handle(self, event: UpdateEvent) -> UpdateRecord:
        """Decide ``event`` and everything it leads to; returns the resulting record."""
        with self._lock:
            if self._stopping.is_set():
                log.info("update.event_after_stop", ignored_event=type(event).__name__)
                return self.record
            interrupted, self._interrupted = self._interrupted, None
            if isinstance(event, DesiredBundleChanged):
                with self._download_lock:  # an event not offered (a test's) never runs ahead of the offers
                    self._offers_decided = min(self._offers_decided + 1, self._offers)
            self._run(decide(self.record, event, self._clock(), self._limits), event)
            if interrupted is not None:
                self._resume_download(interrupted)
            return self.record

    def interrupt_download(self, keep: str | None = None) -> bool:
        """Make the download in flight give up promptly (its bytes stay), unless it is bundle ``keep``'s.
        Thread-safe; True when a download was cancelled. The caller posts the event that replaces it."""
        with self._download_lock:
            current = self._download_cancel
            if current is None or current[0] == keep:
                return False
            current[1].set()
        log.info("update.download_interrupt_requested", digest=current[0], keep=keep)
        return True

    def offer(self, digest: str) -> None:
        """The agent is about to queue a ``DesiredBundleChanged`` for ``digest`` (call it once per event, in
        queue order): the download of another bundle in flight gives up now, and one that registers before
        that event is decided is cancelled at once. ``""`` (keep the bundle) cancels nothing. Thread-safe."""
        with self._download_lock:
            self._offers += 1
            self._newest_offer = digest
        if digest:
            self.interrupt_download(keep=digest)

    def _superseded(self, digest: str) -> bool:
        """A newer offer of another bundle is still undecided (call with ``_download_lock`` held)."""
        newest = self._newest_offer
        return self._offers_decided < self._offers and newest != "" and newest != digest

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop cleanly: decide nothing more, then leave the clean-stop marker. False (no marker, the next
        start treats this stop as a death) when the decision in progress does not finish in ``timeout_s``."""
        self._stopping.set()
        self.interrupt_download()
        if not self._lock.acquire(timeout=timeout_s):
            log.warning("update.stop_unclean", timeout_s=timeout_s, hint="an update step was still running")
            return False
        try:
            if self._record is None:
                return False
            self._journal.mark_clean_stop()
            log.info("update.stopped_cleanly", state=self._record.state.value, candidate=self._record.candidate)
            return True
        finally:
            self._lock.release()

    def _run(
        self, first: Decision | None, first_event: UpdateEvent | None = None, events: Sequence[UpdateEvent] = ()
    ) -> None:
        pending: deque[UpdateEvent] = deque(events)
        decision: Decision | None = first
        event = first_event
        while True:
            if decision is None:
                pass
            elif decision.ignored is not None:
                log.info(
                    "update.event_ignored",
                    ignored_event=type(event).__name__ if event else None,
                    state=self.record.state.value,
                    reason=decision.ignored,
                )
            else:
                pending.extend(self._apply(decision))
            if not pending:
                return
            if self._stopping.is_set():
                log.info(
                    "update.stopping", state=self.record.state.value, undecided=[type(e).__name__ for e in pending]
                )
                return
            event = pending.popleft()
            decision = decide(self.record, event, self._clock(), self._limits)

    def _apply(self, decision: Decision) -> list[UpdateEvent]:
        before = self.record.state
        after = decision.record.state
        if self._hook is not None:
            self._hook(before, after, "before")
        self._journal.write(decision.record)
        if self._hook is not None:
            self._hook(before, after, "after")
        self._record = decision.record
        if before != after:
            log.info(
                "update.state_entered",
                previous=before.value,
                state=after.value,
                candidate=decision.record.candidate,
                committed=decision.record.committed,
                failure=decision.record.failure,
            )
        follow_ups: list[UpdateEvent] = []
        for effect in decision.effects:
            outcome = self._execute(effect)
            follow_ups.extend(outcome.events)
            if outcome.abort:
                log.info("update.effects_aborted", effect=type(effect).__name__, events=outcome.events)
                break
        return follow_ups

    # --- effect executors -------------------------------------------------------------------------------

    def _execute(self, effect: UpdateEffect) -> _Outcome:
        match effect:
            case StartDownload():
                return self._download(effect)
            case Verify():
                return self._verify(effect)
            case Stage(digest=digest, config=config):
                return self._stage(digest, config)
            case StartCanary(digest=digest):
                return _Outcome(list(self._evaluator.start_canary(digest, self._slots.path_for(digest))))
            case StartWatch(digest=digest, paired=paired):
                path = self._slots.path_for(digest)
                return _Outcome(list(self._evaluator.start_watch(digest, path, paired=paired)))
            case StopEvaluation(digest=digest):
                self._evaluator.stop(digest)
            case SwapToCandidate(digest=digest, config=config):
                try:
                    self._switcher.swap_to_candidate(digest, config)
                except EngineSwitchError as exc:
                    return _Outcome([TrialFailed(f"swap to candidate {digest} failed: {exc}")], abort=True)
                self._configs.use(config)
            case SwapToCommitted(digest=digest, config=config):
                self._serve_committed(digest, config)
                self._configs.use(config)
            case Commit(keep=keep, config=config):
                self._configs.commit(config)
                self._switcher.release_previous()
                self._collect(keep)
            case CommitConfig(config=config):
                self._configs.use(config)
                self._configs.commit(config)
            case CollectGarbage(keep=keep):
                self._collect(keep)
            case DiscardCandidate(digest=digest, keep_partial=keep_partial):
                self._discard(digest, keep_partial=keep_partial)
            case RaiseAlert(code=code, digest=digest, message=message, numbers=numbers):
                log.warning("update.alert", code=code, digest=digest, message=message, **dict(numbers))
                try:
                    self._reporter.report_alert(digest, f"{code}: {message}", dict(numbers))
                except Exception as exc:  # an alert must never stop or undo an update
                    log.warning("update.alert_failed", error=str(exc))
            case ReportState():
                self._report()
            case _:
                assert_never(effect)
        return _Outcome()

    def _resume_download(self, effect: StartDownload) -> None:
        """Resume a download an interrupt stopped when the event after it left that candidate downloading."""
        record = self.record
        if self._stopping.is_set() or record.state != UpdateState.DOWNLOADING or record.candidate != effect.digest:
            return
        log.info("update.download_resumed", digest=effect.digest)
        self._run(None, None, self._download(effect).events)

    def _download(self, effect: StartDownload) -> _Outcome:
        cancel = threading.Event()
        with self._download_lock:
            self._download_cancel = (effect.digest, cancel)
            superseded = self._superseded(effect.digest)
        if self._stopping.is_set() or superseded:
            cancel.set()
        try:
            if superseded:
                raise FetchInterrupted(f"a newer desired bundle {self._newest_offer} is waiting to be decided")
            return self._download_artifacts(effect, cancel)
        except FetchInterrupted as exc:
            log.info("update.download_interrupted", digest=effect.digest, reason=str(exc))
            self._interrupted = effect
            return _Outcome(abort=True)
        finally:
            with self._download_lock:
                self._download_cancel = None

    def _download_artifacts(self, effect: StartDownload, cancel: threading.Event) -> _Outcome:
        digest = effect.digest
        record = self.record
        self._collect((record.committed, record.previous, digest))
        if self._slots.has(digest):
            # Already a verified slot (e.g. going back to the previous bundle): nothing to fetch.
            return _Outcome([DownloadCompleted()])
        try:
            partial = {a.name: self._slots.partial_size(digest, a.name) for a in effect.artifacts}
            needed = sum(max(a.size - partial[a.name], 0) for a in effect.artifacts)
            self._slots.check_disk(needed, self._margin)
        except DiskSpaceError as exc:
            log.warning("update.disk_insufficient", digest=digest, error=str(exc))
            return _Outcome([DiskInsufficient(needed=exc.needed + exc.margin, free=exc.free)], abort=True)
        except SlotError as exc:
            return _Outcome([DownloadFailed(str(exc))], abort=True)
        for artifact in effect.artifacts:
            try:
                path = self._slots.incoming_path(digest, artifact.name)
                have = partial[artifact.name]
                if have > artifact.size:
                    path.unlink()  # longer than the artifact: not a prefix of it, start over
                    have = 0
                if have < artifact.size or not path.exists():
                    self._fetcher.fetch(artifact.digest, path, artifact.size, have, cancel=cancel)
                got = path.stat().st_size
                if got != artifact.size:
                    raise FetchError(f"got {got} bytes, expected {artifact.size}")
            except (FetchError, SlotError, OSError) as exc:
                reason = f"artifact {shown(artifact.name)} ({artifact.digest}): {exc}"
                log.warning("update.download_failed", digest=digest, reason=reason)
                return _Outcome([DownloadFailed(reason)], abort=True)
        return _Outcome([DownloadCompleted()])

    def _verify(self, effect: Verify) -> _Outcome:
        digest = effect.digest
        root = self._slots.path_for(digest) if self._slots.has(digest) else self._slots.incoming_root(digest)
        try:
            names = {a.name: a for a in effect.artifacts}
            manifest = names.get(BUNDLE_MANIFEST)
            if manifest is None or manifest.digest != digest:
                raise BundleFormatError(
                    f"the bundle digest {digest} must be the sha256 of its {BUNDLE_MANIFEST}, "
                    f"but the artifact list gives {manifest.digest if manifest else 'no ' + BUNDLE_MANIFEST}"
                )
            for artifact in effect.artifacts:
                actual = file_sha256_digest(root / artifact.name)
                if actual != artifact.digest:
                    raise DigestMismatchError(
                        f"{mismatch_reason(artifact.name, actual, artifact.digest)}; "
                        "the download is corrupt and will be discarded"
                    )
            self._verifier.verify(root)
        except (ContractError, OSError) as exc:
            log.warning("update.verification_failed", digest=digest, reason=str(exc))
            return _Outcome([VerificationFailed(str(exc))], abort=True)
        return _Outcome([VerificationPassed()])

    def _stage(self, digest: str, config: str | None) -> _Outcome:
        try:
            path = self._slots.promote_incoming(digest)
            self._switcher.stage(digest, path, config)
        except (EngineSwitchError, SlotError) as exc:
            return _Outcome([CandidateLoadFailed(f"could not stage {digest}: {exc}")], abort=True)
        return _Outcome()

    def _serve_committed(self, digest: str | None, config: str | None) -> None:
        try:
            path = self._slots.path_for(digest) if digest is not None else None
            self._switcher.swap_to_committed(digest, path, config)
        except (SlotNotFoundError, EngineSwitchError) as exc:
            # Nothing better to serve: stay up, say so loudly, let the controller re-send a bundle.
            log.error("update.committed_unavailable", committed=digest, error=str(exc))

    def _discard(self, digest: str, *, keep_partial: bool) -> None:
        record = self.record
        if digest not in (record.committed, record.previous):
            self._slots.remove(digest)
        if not keep_partial:
            self._slots.discard_incoming(digest)

    def _collect(self, keep: Sequence[str | None]) -> None:
        removed = self._slots.collect_garbage(keep)
        if removed:
            log.info("update.slots_collected", removed=removed, kept=[k for k in keep if k])

    def _report(self) -> None:
        try:
            self._reporter.report(self.record)
        except Exception as exc:  # a reporting failure must never stop or undo an update
            log.warning("update.report_failed", error=str(exc))
