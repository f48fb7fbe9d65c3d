"""``EdgeAgent``: one device's runtime process — start serving, enroll, sync, update, report, until stopped.

Start-up order (so a device without a network serves at once):

1. the local health endpoint (NOT_SERVING) and the frame loop (its own thread);
2. the update driver reads its journal; its first job in the worker thread is recovery: the last committed
   bundle goes back in the slot (no network needed) and an update the restart interrupted resumes;
3. the credential is loaded, or the device enrolls (retried while the controller is unreachable);
4. the Sync loop, the event sender, the update worker, the telemetry pipeline and the status ticker run until
   SIGTERM, each under the ``Supervisor``: one that raises is logged with its traceback and restarted with
   backoff, and while it is down the device reports DEGRADED with the reason (``health_reason``).

Threads: the asyncio loop owns the network; the frame loop owns frames; the synchronous ``UpdateDriver``
runs in one worker thread fed by a queue (``post`` is thread-safe), so the frame loop and the network never
wait on an update, and updates run strictly one event at a time.

Desired state → update events: every new desired revision is offered to the driver (its state machine
ignores what is already committed, in progress or rejected). The bundle's ``bundle.json`` and ``bundle.sig``
come inside the ``DesiredState``: they enter the download as two inline artifacts (``bundle.json``'s
digest must equal the bundle digest, which verification checks), and only the other artifacts are fetched.
A bundle whose download failed for a transient reason (link, disk) is offered again every
``failed_retry_s`` while it stays desired.

Configs go through the same machine: a candidate is (bundle, config). A received config is validated
against its digest, kept by digest (``ConfigKeeper``) and offered with the bundle as one desired state,
with its ``config_classes.inference_fingerprint`` so the machine can tell a change of inference (shadow
canary of a new engine under the new config) from a passive one (watch window only). What reads the config
reads the one IN FORCE (``self.config``): the committed config, or the candidate's during its trial. The
canary and watch policy of a candidate come from the candidate's config (``judging_config``). Trusted
publisher keys are the exception (``config_classes.TRUST``): they take effect when the config is received,
since they decide whether the candidate's bundle verifies. ``running_config_digest`` reports the committed
config, ``candidate_config_digest`` the candidate's.

``details.precision`` in the reported state is the precision choice of the engine serving now
(``edge_runtime.precision.VariantChoice.to_dict``: the variant, its provider, the speedup over FP32, the p50
of every variant measured on this device, the refused variants with their reasons); each load reports its
choice as a ``KIND_PRECISION_CHOSEN`` event too (the bootstrap wires the switcher to the reporter).

``status.json`` in the data dir is rewritten every ``status_interval_s`` (frames, errors, serving bundle,
health, update record, with ``pid``, ``at`` and the interval): ``edge-runtime status`` (which tells from them
whether the runtime still runs) and tests read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from google.protobuf.struct_pb2 import Struct

from edge_runtime.agent.canary.evaluator import CanaryEvaluator
from edge_runtime.agent.client import ControllerLink
from edge_runtime.agent.download.fetcher import DEFAULT_CHUNK_BYTES, BlobFetcher
from edge_runtime.agent.enroll import Credential, enroll, load_credential, save_credential
from edge_runtime.agent.errors import EnrollmentError
from edge_runtime.agent.hardware import hardware_profile
from edge_runtime.agent.health.endpoint import HealthEndpoint, judge
from edge_runtime.agent.retry import Sleep, transient_retry
from edge_runtime.agent.runner import FrameRunner, RunnerSnapshot
from edge_runtime.agent.supervisor import Supervisor, TaskDrill
from edge_runtime.agent.sync.loop import SyncLoop
from edge_runtime.agent.telemetry.pipeline import BufferedReporter, TelemetryPipeline
from edge_runtime.agent.telemetry.reporter import EventSender, wire_state
from edge_runtime.agent.update.config_keeper import ConfigKeeper
from edge_runtime.agent.update.switcher import SlotSwitcher
from edge_runtime.agent.update.verifier import SignatureVerifier
from edge_runtime.inference import EngineSlot
from edge_runtime.inference.errors import FrameSourceError
from edge_runtime.sources import Frame
from edge_runtime.update.driver import DEFAULT_DISK_MARGIN_BYTES, Phase, UpdateDriver
from edge_runtime.update.events import DesiredBundleChanged, UpdateEvent
from edge_runtime.update.record import IN_PROGRESS, ArtifactRef, UpdateRecord, UpdateState
from edge_runtime.update.slots import BundleSlots
from edgefleet.contract.bundle_layout import MANIFEST_NAME, SIGNATURE_NAME
from edgefleet.contract.config_classes import inference_fingerprint
from edgefleet.contract.digests import sha256_digest
from edgefleet.contract.errors import ManifestError
from edgefleet.contract.hardware import HostFacts
from edgefleet.contract.layering import EffectiveConfig
from edgefleet.contract.precedence import resolve_policy
from edgefleet.v1 import common_pb2, device_pb2

log = structlog.get_logger(__name__)

STATUS_FILE = "status.json"
# At a clean stop, how long the uploader may send what the final flush put in the buffer.
STOP_UPLOAD_S = 2.0
CrashPoint = tuple[UpdateState, Phase]


@dataclass(frozen=True)
class AgentSettings:
    controller: str
    data_dir: Path
    source: str
    enroll_token: str = ""
    name: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    health_listen: str = "127.0.0.1:0"
    trusted_keys_dir: Path | None = None
    sync_wait_s: int = 30
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    disk_margin_bytes: int = DEFAULT_DISK_MARGIN_BYTES
    intra_op_threads: int | None = None
    frame_log: Path | None = None
    status_interval_s: float = 0.5
    failed_retry_s: float = 60.0
    # Crash drill: SIGKILL at the first transition into this state (optionally only for this candidate).
    crash_at: CrashPoint | None = None
    crash_candidate: str | None = None
    # Task drill: the first N runs of these supervised tasks fail on purpose (EDGEFLEET_TASK_FAILURES).
    task_failures: Mapping[str, TaskDrill] = field(default_factory=dict)


def bundle_artifacts(desired: common_pb2.DesiredState) -> tuple[ArtifactRef, ...]:
    """The download list for a desired bundle: bundle.json and bundle.sig (inline) + its artifacts."""
    refs = [ArtifactRef(MANIFEST_NAME, sha256_digest(desired.bundle_manifest), len(desired.bundle_manifest))]
    if desired.bundle_signature:
        refs.append(ArtifactRef(SIGNATURE_NAME, sha256_digest(desired.bundle_signature), len(desired.bundle_signature)))
    refs.extend(ArtifactRef(a.path, a.digest, a.size_bytes) for a in desired.artifacts)
    return tuple(refs)


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _verdict_status(verdict: common_pb2.CanaryVerdict | None) -> dict[str, Any] | None:
    """The last canary/watch verdict as ``status.json`` shows it (``edge-runtime status``, tests)."""
    if verdict is None:
        return None
    return {
        "outcome": common_pb2.CanaryVerdict.Outcome.Name(verdict.outcome).removeprefix("OUTCOME_").lower(),
        "phase": verdict.phase,
        "candidate": verdict.candidate_digest,
        "baseline": verdict.baseline_digest or None,
        "frames": verdict.frames,
        "candidate_p95_ms": verdict.candidate_latency.p95_ms,
        "latency_budget_ms": verdict.latency_budget_ms,
        "reasons": list(verdict.reasons),
        "assignment_id": verdict.assignment_id or None,
    }


@dataclass(frozen=True)
class AgentParts:
    """What the agent drives, built and wired by the composition root (``edge_runtime.bootstrap``)."""

    slots: BundleSlots
    slot: EngineSlot
    configs: ConfigKeeper
    link: ControllerLink
    reporter: BufferedReporter
    verifier: SignatureVerifier
    fetcher: BlobFetcher
    switcher: SlotSwitcher
    runner: FrameRunner
    evaluator: CanaryEvaluator
    driver: UpdateDriver
    health_endpoint: HealthEndpoint
    sync: SyncLoop
    sender: EventSender
    telemetry: TelemetryPipeline
    host: HostFacts
    open_frames: Callable[[str], Iterator[Frame]]  # a frame source by spec, when a config names one


class EdgeAgent:
    """The device runtime. Built by ``edge_runtime.bootstrap.build_agent`` inside the running event loop,
    then ``await run()`` until ``stop()`` or SIGTERM."""

    def __init__(
        self,
        settings: AgentSettings,
        parts: AgentParts,
        *,
        announce: Callable[[str], None] = lambda _: None,
        retry_sleep: Sleep | None = None,
    ) -> None:
        self.settings = settings
        self._announce = announce
        self._retry_sleep = retry_sleep  # tenacity's asyncio sleep unless a test injects one
        self.data_dir = Path(settings.data_dir)
        self.slots = parts.slots
        self.slot = parts.slot
        # The last applied config (config.json: a restart without a link keeps it) and candidates by digest.
        self.configs = parts.configs
        self.applied_revision = 0
        self.health: common_pb2.Health.ValueType = common_pb2.HEALTH_STARTING
        self.health_reason = ""
        # Every long-running task of run() restarts under it; a task that is down degrades health (_tick).
        self.supervisor = Supervisor(drills=settings.task_failures)
        self._recovered = False
        self.link = parts.link
        self.reporter = parts.reporter
        self.verifier = parts.verifier
        if self.config:
            self._use_trusted_keys(self.config)
        self.fetcher = parts.fetcher
        self.fetcher.progress.listen(self._wake)  # download progress reaches the controller within seconds
        self.switcher = parts.switcher
        self.runner = parts.runner
        self._open_frames = parts.open_frames
        self._source_spec = settings.source
        self.use_source()  # a saved config's frame source wins over --source
        self.evaluator = parts.evaluator
        self.driver = parts.driver
        self.health_endpoint = parts.health_endpoint
        self.sync = parts.sync
        self.sender = parts.sender
        self.telemetry = parts.telemetry
        self._host = parts.host
        self._queue: asyncio.Queue[UpdateEvent] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._desired: common_pb2.DesiredState | None = None
        self._desired_config: tuple[str | None, str | None] = (None, None)
        self._offered: str | None = None
        self._last_snapshot: RunnerSnapshot | None = None
        self._last_seen_frames = -1

    # ------------------------------------------------------------------ the update worker

    def post(self, event: UpdateEvent) -> None:
        """Queue an update event from any thread."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("EdgeAgent.post before run()")
        loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def _drive(self) -> None:
        if not self._recovered:  # once per process: a restarted worker only takes events again
            self._recovered = True
            try:
                record = await asyncio.to_thread(self.driver.start)
                log.info("agent.recovered", state=record.state.value, committed=record.committed)
            except Exception as exc:  # the journal holds the truth; keep serving and take events
                log.exception("agent.recovery_failed", error=str(exc))
        while True:
            event = await self._queue.get()
            try:
                await asyncio.to_thread(self.driver.handle, event)
            except Exception as exc:  # the worker must outlive one bad event; the journal holds the truth
                log.exception("agent.update_event_failed", event=type(event).__name__, error=str(exc))

    def crash_drill(self, before: UpdateState, after: UpdateState, phase: Phase) -> None:
        target = self.settings.crash_at
        wanted = self.settings.crash_candidate
        if target == (after, phase) and before != after and (wanted is None or wanted == self._offered):
            log.warning("agent.crash_drill", state=after.value, phase=phase)
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ desired state

    async def on_sync(self, response: device_pb2.SyncResponse) -> None:
        if response.changed:
            desired = response.desired
            self._desired = desired
            self.reporter.revision = desired.revision
            self.applied_revision = desired.revision
            self._desired_config = self._receive_config(desired)
            log.info(
                "agent.desired_received",
                revision=desired.revision,
                bundle=desired.bundle_digest or None,
                config=desired.config_digest or None,
                reason=desired.reason,
            )
            self._offer(force=True)
        else:
            self._offer(force=False)

    @property
    def config(self) -> Mapping[str, Any]:
        """The config in force: the committed one, or a config candidate's during its trial."""
        return self.configs.in_force

    def judging_config(self) -> Mapping[str, Any]:
        """The config a candidate is judged by (its canary and watch policy): the candidate's own."""
        record = self._current_record()
        if record.state in IN_PROGRESS and record.candidate_config is not None:
            with contextlib.suppress(LookupError):
                return self.configs.values(record.candidate_config)
        return self.config

    def _receive_config(self, desired: common_pb2.DesiredState) -> tuple[str | None, str | None]:
        """Validate and keep the desired config; (digest, inference fingerprint) to offer, (None, None) when
        the desired state carries none or an invalid one (the device keeps its config)."""
        if not desired.config_json:
            return None, None
        try:
            config = EffectiveConfig.from_json_bytes(desired.config_json, expected_digest=desired.config_digest or None)
        except ManifestError as exc:
            log.error("agent.config_rejected", digest=desired.config_digest, error=str(exc))
            return None, None
        self.configs.add(config)
        self._use_trusted_keys(config.values)
        return config.digest, inference_fingerprint(config.values)

    def use_source(self) -> None:
        """Frames come from the config's ``source`` when an operator layer sets one, else from ``--source``;
        a source that cannot be opened is logged and the current one kept."""
        spec = str(resolve_policy(self.config).get("source") or self.settings.source)
        if spec == self._source_spec:
            return
        try:
            frames = self._open_frames(spec)
        except FrameSourceError as exc:
            log.error("agent.source_rejected", source=spec, error=str(exc), keeping=self._source_spec)
            return
        self.runner.switch_source(frames)
        log.info("agent.source_changed", source=spec, previous=self._source_spec)
        self._source_spec = spec

    def _use_trusted_keys(self, config: Mapping[str, Any]) -> None:
        keys = config.get("trusted_keys") or {}
        try:
            self.verifier.set_configured(dict(keys))
        except Exception as exc:
            log.error("agent.trusted_keys_rejected", error=str(exc))

    def _offer(self, *, force: bool) -> None:
        desired = self._desired
        if desired is None:
            return
        digest = desired.bundle_digest
        config, inference = self._desired_config
        record = self._current_record()
        if not force:
            # Re-offer only a bundle whose last attempt failed for a reason worth retrying, not too often.
            if not digest:
                return
            settled = record.state not in IN_PROGRESS
            age = (datetime.now(UTC) - record.updated_at).total_seconds()
            rejected_here = record.rejected_under(digest, desired.assignment_id, config)
            if not settled or digest == record.committed or rejected_here or age < self.settings.failed_retry_s:
                return
            log.info("agent.retrying_desired", digest=digest, last_failure=record.failure)
        for ref_digest, content in (
            (sha256_digest(desired.bundle_manifest), desired.bundle_manifest),
            (sha256_digest(desired.bundle_signature), desired.bundle_signature),
        ):
            if content:
                self.fetcher.add_inline(ref_digest, content)
        self._offered = digest or None
        artifacts = bundle_artifacts(desired) if digest else ()
        # A download of another bundle (stuck on a bad link, or about to start) must not hold up this one.
        self.driver.offer(digest)
        self._queue.put_nowait(DesiredBundleChanged(digest, artifacts, desired.assignment_id, config, inference))

    # ------------------------------------------------------------------ reporting

    def _current_record(self) -> UpdateRecord:
        return self.reporter.record or self.driver.record

    def reported_state(self) -> common_pb2.ReportedState:
        record = self._current_record()
        engine = self.slot.current if self.slot.has_engine else None
        snap = self.runner.snapshot()
        details = Struct()
        details.update(
            {
                "frames_inferred": snap.frames_inferred,
                "inference_errors": snap.errors,
                "serving_bundle": snap.serving or "",
                "events_dropped": self.reporter.dropped,
                "health_reason": self.health_reason,
                # Telemetry records that could never fit the buffer (e.g. review samples over the quota).
                "telemetry_too_large": sum(self.telemetry.buffer.too_large_counts().values()),
                # Windows the controller acknowledged but did not store (their bundle is not one it knows we have).
                "telemetry_windows_refused": self.telemetry.uploader.windows_refused,
            }
        )
        download = self.fetcher.progress.snapshot()
        if download is not None:
            details.update({"download": download.to_dict()})
        # The precision choice of the engine serving now (made when it was loaded: at staging or at start).
        choice = self.switcher.choice_of(engine)
        if choice is not None:
            precision: dict[str, Any] = choice.to_dict()
            details.update({"precision": precision})
        state = common_pb2.ReportedState(
            running_bundle_digest=record.committed or "",
            running_config_digest=record.committed_config or self.configs.committed_digest or "",
            update_state=wire_state(record.state),
            candidate_bundle_digest=record.candidate or "",
            update_reason=record.failure or "",
            slot_digests=self.slots.list(),
            health=self.health,
            active_providers=list(engine.session.get_providers()) if engine else [],
            hardware=hardware_profile(self.data_dir, self._host),
            details=details,
            applied_revision=self.applied_revision,
            assignment_id=record.assignment_id or "",
            candidate_config_digest=(record.candidate_config or "") if record.config_candidate else "",
        )
        verdict = self.reporter.last_verdict
        if verdict is not None:
            state.last_verdict.CopyFrom(verdict)
        return state

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._wake_now)

    def _wake_now(self) -> None:
        self.sync.wake()
        self.sender.wakeup.set()

    async def _tick(self) -> None:
        while True:
            snap = self.runner.snapshot()
            seen = snap.frames_inferred + snap.frames_idle + snap.errors
            alive = seen != self._last_seen_frames or self._last_snapshot is None
            self._last_seen_frames = seen
            degraded_by = [r for r in (self.supervisor.reason(),) if r]
            if self._current_record().degraded:
                # First-install policy: serving a bundle that missed its latency SLA (update.state).
                degraded_by.append("the serving bundle missed its latency SLA at install")
            judged = judge(snap, self._last_snapshot, source_alive=alive, degraded_by=degraded_by)
            health = judged.health
            self._last_snapshot = snap
            if health != self.health or judged.reason != self.health_reason:
                if health != self.health:
                    log.info("agent.health", health=common_pb2.Health.Name(health), reason=judged.reason or None)
                self.health = health
                self.health_reason = judged.reason
                self._wake_now()
            await self.health_endpoint.set(health in (common_pb2.HEALTH_SERVING, common_pb2.HEALTH_DEGRADED))
            self._write_status(snap)
            await asyncio.sleep(self.settings.status_interval_s)

    def _write_status(self, snap: RunnerSnapshot) -> None:
        record = self._current_record()
        _write_json_atomic(
            self.data_dir / STATUS_FILE,
            {
                "pid": os.getpid(),
                "at": datetime.now(UTC).isoformat(),
                "status_interval_s": self.settings.status_interval_s,
                "health": common_pb2.Health.Name(self.health),
                "health_reason": self.health_reason or None,
                "tasks": self.supervisor.status(),
                "telemetry_too_large": self.telemetry.buffer.too_large_counts(),
                "telemetry_windows_refused": self.telemetry.uploader.windows_refused,
                "health_port": self.health_endpoint.port,
                "online": self.sync.online,
                "frames_inferred": snap.frames_inferred,
                "frames_idle": snap.frames_idle,
                "errors": snap.errors,
                "last_frame_id": snap.last_frame_id,
                "serving": snap.serving,
                "provider": snap.provider,
                "known_revision": self.sync.known_revision,
                "fetch": vars(self.fetcher.counters),
                "download": download.to_dict() if (download := self.fetcher.progress.snapshot()) else None,
                "update": record.to_dict(),
                "last_verdict": _verdict_status(self.reporter.last_verdict),
            },
        )

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stop.set()

    async def _credential(self) -> Credential:
        cred = load_credential(self.data_dir)
        if cred is not None:
            if cred.controller != self.settings.controller:
                log.info("agent.controller_address_changed", enrolled_at=cred.controller, now=self.settings.controller)
            return cred
        if not self.settings.enroll_token:
            raise EnrollmentError(
                f"{self.data_dir} holds no credential.json and no --enroll-token was given; "
                "create a token with 'fleetctl token create --site SITE' and pass it with --enroll-token"
            )
        profile = hardware_profile(self.data_dir, self._host)
        async for attempt in transient_retry(sleep=self._retry_sleep):
            with attempt:
                cred = await enroll(
                    self.link,
                    token=self.settings.enroll_token,
                    name=self.settings.name,
                    tags=self.settings.tags,
                    hardware=profile,
                )
        assert cred is not None
        save_credential(self.data_dir, cred)
        return cred

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        self.reporter.set_wake(self._wake)
        loop = self._loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        port = await self.health_endpoint.start()
        self._announce(f"edge-runtime health listening on port {port}")
        self.runner.start()
        tasks: list[asyncio.Task[None]] = []
        clean = False  # a clean stop (SIGTERM, stop()) leaves the journal's clean-stop marker
        try:
            # The journal is read at once; recovery (serve the committed bundle, resume an update) is the
            # update worker's first job, so status, health and enrollment do not wait for a model load.
            record = await asyncio.to_thread(self.driver.load)
            if record.state in IN_PROGRESS and record.candidate_config is not None:
                # A config candidate's publisher keys verify its bundle when the update resumes.
                with contextlib.suppress(LookupError):
                    self._use_trusted_keys(self.configs.values(record.candidate_config))
            tasks.append(self.supervisor.start("tick", self._tick))
            tasks.append(self.supervisor.start("update-worker", self._drive))
            cred_task = asyncio.create_task(self._credential(), name="credential")
            stop_task = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({cred_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if cred_task not in done:
                cred_task.cancel()
                clean = True
                return 0
            stop_task.cancel()
            cred = cred_task.result()
            self.link.authenticate(cred.credential)
            self.verifier.set_enrolled(cred.trusted_keys)
            log.info("agent.started", device_id=cred.device_id, site=cred.site, controller=self.settings.controller)
            tasks.append(self.supervisor.start("sync", self.sync.run))
            tasks.append(self.supervisor.start("events", self.sender.run))
            tasks.append(self.supervisor.start("telemetry", self.telemetry.run))
            self.sender.wakeup.set()
            await self._stop.wait()
            log.info("agent.stopping")
            clean = True
            return 0
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if clean:
                await asyncio.to_thread(self.driver.stop)
            await self.health_endpoint.stop()
            self.runner.stop()
            # Every frame accounted for: the open windows go into the buffer before exit (and up, if the
            # link allows); a kill -9 instead leaves a gap the next start declares.
            await self.telemetry.finish(upload_s=STOP_UPLOAD_S if self.link.metadata else 0)
            self.fetcher.close()
            await self.link.close()
            self.telemetry.close()
