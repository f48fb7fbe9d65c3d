"""The device's telemetry pipeline: frame results → metric windows, events and review samples → the durable
``TelemetryBuffer`` (``<data dir>/telemetry/buffer.db``) → the ``TelemetryUploader``.

Threads: ``observe`` runs on the frame thread and only adds to the window under a short lock (plus, for
the rare frame the review sampler flags, a JPEG encode). Closing windows (which reads sensors, up to the
2 s nvidia-smi timeout) and appending to the buffer (an fsynced transaction) happen in the asyncio task
via worker threads, so inference never waits on disk or sensors.

Decisions:
- One window aggregator per served bundle; a window with no frames is not emitted. When one is due, every
  open window closes with it (a later bundle's is simply shorter), so one count says which frames the
  buffer's windows cover.
- Every frame is accounted for. Each observed frame bumps a cumulative count written to the frame
  checkpoint (``telemetry.frame_progress``, one pwrite per frame); each batch of closed windows commits the
  count it covers as the buffer's ``frames_through`` mark IN the same transaction. At start the two are
  compared (``telemetry.frame_gap.declare_gap``) and frames a killed run never reported are declared as a
  ``KIND_FRAME_GAP`` event (exact after kill -9; an unknown count after a reboot or with an unreadable
  checkpoint), committed together with the new mark so a gap is declared once. A batch whose append fails
  goes back to the queue with its count (the next flush stores both), so no mark covers unstored windows
  (of its review samples only the newest ``REQUEUE_REVIEWS_MAX``).
  ``finish`` (a clean stop) closes the open windows into the buffer, marks the checkpoint clean and gives
  the uploader a moment.
- ``MetricWindow.dropped`` is the buffer's drop count per class since the previous window (a delta).
- Events: every update-state change, rollback and canary verdict the reporter queues is also appended to
  the buffer (``BufferedReporter``), so it reaches the controller even if the ReportEvent call was lost.
- Config (``telemetry.window_s``, ``review.*``, upload settings) is read from the resolved policy each
  time it is used: the operator config the device received over the built-in defaults
  (``edgefleet.contract.precedence.resolve_policy``; no bundle declares telemetry or review keys). The
  resolution is cached until the ``config`` callable returns a different mapping (or different section
  objects): the agent replaces its config whole, never in place. The buffer's bounds
  (``telemetry.buffer_max_bytes``, ``telemetry.review_quota_bytes``) are read when the buffer opens: at
  start (the built-in defaults while no config is known yet, as on a first boot before the first sync) and
  again whenever the effective config changes them. The buffer is then REOPENED between ticks of ``run``:
  the uploader's stream is stopped first (no call is using the buffer), the file is closed and opened with
  the new bounds, and the uploader restarts.
  Nothing is lost: unacknowledged records stay in the file and are re-sent (the controller drops the
  duplicates). A smaller bound evicts by the normal drop policy at the next append, counted as drops.
  Invalid bounds (quota above the bound) are logged and the buffer keeps its current ones.
  ``review_quota_bytes: 0`` turns review sampling off (no frame is flagged or encoded); a review sample over
  the quota, or any record over the bound, is dropped and counted by the buffer (``review_too_large``, in
  the next window's ``dropped``), never fatal to the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from edge_runtime.agent.telemetry.reporter import AgentReporter
from edge_runtime.agent.telemetry.uploader import Metadata, TelemetryUploader, UploadSettings
from edge_runtime.inference import FrameResult
from edge_runtime.sources import Frame
from edge_runtime.telemetry.buffer import TelemetryBuffer
from edge_runtime.telemetry.frame_gap import FramesThrough, UnreadableCheckpoint, declare_gap, gap_event
from edge_runtime.telemetry.frame_progress import FrameCheckpoint, current_boot_id, move_aside, read_checkpoint
from edge_runtime.telemetry.records import Body
from edge_runtime.telemetry.review import ReviewSampler
from edge_runtime.telemetry.sensors import SensorReader
from edge_runtime.telemetry.window import DEFAULT_WINDOW_S, WindowAggregator
from edgefleet.contract.layering import DEFAULT_CONFIG
from edgefleet.contract.precedence import ResolvedConfig, resolve_policy
from edgefleet.v1 import telemetry_pb2

log = structlog.get_logger(__name__)

# The built-in defaults (one value per policy: DEFAULT_CONFIG); used only if a resolved value is unusable.
BUFFER_MAX_BYTES: int = DEFAULT_CONFIG["telemetry"]["buffer_max_bytes"]
REVIEW_QUOTA_BYTES: int = DEFAULT_CONFIG["telemetry"]["review_quota_bytes"]
TICK_S = 0.1
CHECKPOINT_NAME = "frames.ckpt"
# Review samples a failed append keeps in memory for the next flush (the oldest beyond go).
REQUEUE_REVIEWS_MAX = 8
# The buffer's progress marks: the cumulative frame count its windows cover, and when it was committed.
FRAMES_THROUGH = "frames_through"
FRAMES_THROUGH_AT = "frames_through_at"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BufferedReporter(AgentReporter):
    """An ``AgentReporter`` that also hands every queued event to ``on_event`` (the telemetry buffer)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_event: Callable[[telemetry_pb2.DeviceEvent], None] | None = None

    def _append(self, event: telemetry_pb2.DeviceEvent) -> None:
        super()._append(event)
        hook = self.on_event
        if hook is not None:
            hook(event)


class TelemetryPipeline:
    def __init__(
        self,
        data_dir: Path,
        *,
        stub: Callable[[], Any],
        metadata: Callable[[], Metadata],
        config: Callable[[], Mapping[str, Any]],
        sensors: SensorReader,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._config = config
        self._resolved: tuple[Mapping[str, Any], tuple[object, ...], ResolvedConfig] | None = None
        self._buffer_path = data_dir / "telemetry" / "buffer.db"
        self._rejected_bounds: tuple[object, object] = (None, None)
        max_bytes, quota = self.buffer_bounds() or (BUFFER_MAX_BYTES, REVIEW_QUOTA_BYTES)
        self.buffer = TelemetryBuffer(self._buffer_path, max_bytes=max_bytes, review_quota_bytes=quota)
        self._sensors = sensors
        self._clock = clock
        self.uploader = TelemetryUploader(
            self.buffer, stub, metadata, lambda: UploadSettings.from_config(self._section("telemetry"))
        )
        self._lock = threading.Lock()
        self._windows: dict[str, WindowAggregator] = {}
        self._pending: list[Body] = []
        self._sampler: ReviewSampler | None = None
        self._sampler_key: tuple[Any, ...] = ()
        self._dropped_before = self.buffer.dropped_counts()
        self.observe_failures = 0
        # The precision variant serving a bundle (the switcher's ``serving_precision``, wired by the bootstrap).
        self.precision_of: Callable[[str], str] = lambda _digest: ""
        self._commit_lock = threading.Lock()  # appends that carry a frames-through mark, in mark order
        self.declared_gap: telemetry_pb2.DeviceEvent | None = None
        self._unsaved_gap: tuple[list[Body], int, datetime] | None = None
        self._requeued_through: int | None = None  # the mark of items a failed append put back (_store)
        self.frames_observed = self._declare_unreported(data_dir / "telemetry" / CHECKPOINT_NAME)
        # Until an unsaved gap is stored, the buffer's mark is still the old one.
        through = frames_through(self.buffer)
        self._frames_through = (through.frames if through else 0) if self._unsaved_gap else self.frames_observed
        self._checkpoint = FrameCheckpoint(
            data_dir / "telemetry" / CHECKPOINT_NAME,
            frames=self.frames_observed,
            now=clock(),
            boot_id=current_boot_id(),
        )

    # ------------------------------------------------------------------ frame accounting

    def _declare_unreported(self, path: Path) -> int:
        """Declare what the previous run processed but never reported (module docstring); returns the count
        this run goes on from. Never raises: accounting must not keep the device from serving."""
        now = self._clock()
        previous = read_checkpoint(path)
        result = declare_gap(previous, frames_through(self.buffer), boot_id=current_boot_id(), now=now)
        if isinstance(previous, UnreadableCheckpoint):
            moved = move_aside(path)
            log.warning("telemetry.frame_checkpoint_unreadable", path=str(path), moved_to=str(moved), detail=previous)
        items: list[Body] = []
        if result.gap is not None:
            self.declared_gap = gap_event(result.gap, event_id=str(uuid.uuid4()), at=now)
            items.append(self.declared_gap)
            log.warning(
                "telemetry.frame_gap_declared",
                frames=result.gap.frames,
                frames_known=result.gap.frames_known,
                cause=result.gap.cause.value,
                start=result.gap.start.isoformat(),
                end=result.gap.end.isoformat(),
            )
        try:
            self.buffer.append_many(items, progress=_through_marks(result.base, now))
        except Exception as exc:
            # Retried by every flush until it is stored: the gap and its mark must commit together.
            log.error("telemetry.frame_gap_append_failed", error=str(exc), gap=str(result.gap))
            self._unsaved_gap = (items, result.base, now)
        return result.base

    def _commit(self, items: list[Body], through: int | None, at: datetime) -> None:
        """Append ``items`` durably; with ``through``, also move the buffer's frames-through mark (never back:
        a cancelled flush's append may land after a later one's)."""
        with self._commit_lock:
            marks = None
            if through is not None and through > self._frames_through:
                marks = _through_marks(through, at)
            self.buffer.append_many(items, progress=marks)
            if marks is not None and through is not None:
                self._frames_through = through

    def _store(self, items: list[Body], through: int | None, at: datetime) -> None:
        """``_commit`` for ``flush`` (in a worker thread). When the append fails, nothing was stored: the items
        go back to the front of the queue with their mark, for the next flush (also when the flush awaiting
        this was cancelled), so a later mark never covers windows that were never stored."""
        try:
            self._commit(items, through, at)
        except Exception:
            # Review samples are large (tens of KB) and optional: while appends keep failing, only the newest
            # few wait in memory. Windows and events (small; the frame count depends on them) all wait.
            reviews = [b for b in items if isinstance(b, telemetry_pb2.ReviewSample)]
            if (excess := len(reviews) - REQUEUE_REVIEWS_MAX) > 0:
                oldest = {id(r) for r in reviews[:excess]}
                items = [b for b in items if id(b) not in oldest]
                log.warning("telemetry.review_samples_dropped", count=excess, reason="the buffer's appends fail")
            with self._lock:
                self._pending[:0] = items
                if through is not None:
                    self._requeued_through = max(through, self._requeued_through or 0)
            raise

    def _policy(self) -> ResolvedConfig:
        config = self._config()
        sections = tuple(config.values())
        cached = self._resolved
        # Identity, not equality: comparing by value would cost as much as resolving, on every frame.
        if (
            cached is None
            or cached[0] is not config
            or len(cached[1]) != len(sections)
            or any(a is not b for a, b in zip(cached[1], sections, strict=True))
        ):
            cached = (config, sections, resolve_policy(config))
            self._resolved = cached  # one reference assignment: frame thread and loop may both get here
        return cached[2]

    def _section(self, name: str) -> Mapping[str, Any]:
        return self._policy().section(name)

    def buffer_bounds(self) -> tuple[int, int] | None:
        """(max_bytes, review_quota_bytes) the effective config asks for (defaults for absent keys), or None
        when the configured pair is invalid (logged once per distinct value)."""
        t = self._section("telemetry")
        raw = (t.get("buffer_max_bytes"), t.get("review_quota_bytes"))
        try:
            max_bytes = int(raw[0] or BUFFER_MAX_BYTES)
            quota = int(raw[1] if raw[1] is not None else min(REVIEW_QUOTA_BYTES, max_bytes // 4))
        except (TypeError, ValueError):
            max_bytes, quota = -1, -1
        if max_bytes > 0 and 0 <= quota <= max_bytes:
            return max_bytes, quota
        if raw != self._rejected_bounds:
            self._rejected_bounds = raw
            log.error(
                "telemetry.buffer_bounds_rejected",
                buffer_max_bytes=raw[0],
                review_quota_bytes=raw[1],
                hint="telemetry.review_quota_bytes must be within [0, telemetry.buffer_max_bytes]; "
                "the buffer keeps its current bounds",
            )
        return None

    async def _reopen_if_bounds_changed(self, upload: asyncio.Task[None]) -> asyncio.Task[None]:
        """Reopen the buffer with the configured bounds when they differ; returns the (new) upload task."""
        bounds = self.buffer_bounds()
        now = self._clock()
        old = self.buffer
        if bounds is None or bounds == (old.max_bytes, old.review_quota_bytes):
            return upload
        if upload.done():
            upload.result()  # a failed uploader fails run() here as it would after this tick
        upload.cancel()
        # wait() rather than await: our own cancellation must still propagate, the upload's must not.
        await asyncio.wait({upload})
        await asyncio.to_thread(old.close)
        try:
            self.buffer = await asyncio.to_thread(
                TelemetryBuffer, self._buffer_path, max_bytes=bounds[0], review_quota_bytes=bounds[1]
            )
        except Exception as exc:  # the old bounds worked a moment ago; keep running on them
            log.error("telemetry.buffer_reopen_failed", error=str(exc), bounds=bounds)
            self.buffer = await asyncio.to_thread(
                TelemetryBuffer, self._buffer_path, max_bytes=old.max_bytes, review_quota_bytes=old.review_quota_bytes
            )
        else:
            log.info(
                "telemetry.buffer_reopened",
                max_bytes=bounds[0],
                review_quota_bytes=bounds[1],
                previous=(old.max_bytes, old.review_quota_bytes),
            )
        self.uploader.buffer = self.buffer
        if frames_through(self.buffer) is None:  # a recreated store: it counts on from here
            await asyncio.to_thread(self.buffer.append_many, [], progress=_through_marks(self._frames_through, now))
        return asyncio.create_task(self.uploader.run(), name="telemetry-upload")

    @property
    def window_s(self) -> float:
        return float(self._section("telemetry").get("window_s") or DEFAULT_WINDOW_S)

    # ------------------------------------------------------------------ frame thread

    def observe(self, frame: Frame, digest: str, served: FrameResult | Exception) -> None:
        """One served frame (called by the frame loop); never raises into it."""
        try:
            self._observe(frame, digest, served)
        except Exception as exc:  # telemetry must never stop inference
            self.observe_failures += 1
            if self.observe_failures in (1, 100) or self.observe_failures % 10_000 == 0:
                log.warning("telemetry.observe_failed", error=str(exc), failures=self.observe_failures)

    def _observe(self, frame: Frame, digest: str, served: FrameResult | Exception) -> None:
        now = self._clock()
        sample = None
        with self._lock:
            agg = self._windows.get(digest)
            if agg is None:
                provider = served.provider if isinstance(served, FrameResult) else ""
                agg = WindowAggregator(
                    bundle_digest=digest,
                    provider=provider,
                    started_at=now,
                    window_s=self.window_s,
                    precision=self.precision_of(digest),
                )
                self._windows[digest] = agg
            # Counted before the window sees it: the window counts a frame even when its numbers are refused.
            self.frames_observed += 1
            self._checkpoint.record(self.frames_observed, now.timestamp(), digest)
            if isinstance(served, Exception):
                agg.observe(0.0, 0.0, 0.0, error=True)
                return
            t = served.timings
            # Models without a softmax report raw scores; the histogram is over [0, 1], so clamp.
            confidence = min(max(served.top_confidence, 0.0), 1.0)
            agg.observe(t.total_ms, t.model_ms, confidence, detections=_detections(served))
        # review_quota_bytes 0 turns review sampling off: no frame is flagged or encoded.
        sampler = self._review_sampler() if self.buffer.review_quota_bytes > 0 else None
        if sampler is not None:
            reason = sampler.decide(now, min(max(served.top_confidence, 0.0), 1.0))
            if reason is not None:
                try:
                    sample = sampler.sample(
                        frame.image_bgr,
                        list(served.outputs),
                        bundle_digest=digest,
                        top_confidence=served.top_confidence,
                        reason=reason,
                        captured_at=now,
                    )
                except Exception as exc:  # a frame that cannot be encoded must not stop inference
                    log.warning("telemetry.review_sample_failed", error=str(exc))
        if sample is not None:
            with self._lock:
                self._pending.append(sample)

    def record_event(self, event: telemetry_pb2.DeviceEvent) -> None:
        """Queue an event for the buffer (any thread)."""
        with self._lock:
            self._pending.append(event)

    def _review_sampler(self) -> ReviewSampler | None:
        review = self._section("review")
        key = tuple(review.get(k) for k in ("sample_rate", "low_confidence_below", "max_per_hour", "jpeg_quality"))
        if key != self._sampler_key:
            self._sampler_key = key
            # The resolved policy always holds every review key (the defaults are below the config).
            try:
                self._sampler = ReviewSampler(
                    sample_rate=float(review["sample_rate"]),
                    low_confidence_below=float(review["low_confidence_below"]),
                    max_per_hour=int(review["max_per_hour"]),
                    jpeg_quality=int(review["jpeg_quality"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                log.error("telemetry.review_config_rejected", error=str(exc))
                self._sampler = None
        return self._sampler

    # ------------------------------------------------------------------ asyncio side

    async def run(self) -> None:
        """Close due windows, append pending records, run the uploader; until cancelled."""
        upload = asyncio.create_task(self.uploader.run(), name="telemetry-upload")
        try:
            while True:
                await asyncio.sleep(TICK_S)
                upload = await self._reopen_if_bounds_changed(upload)
                await self.flush()
                if upload.done():
                    upload.result()
        finally:
            upload.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await upload

    async def flush(self, *, force: bool = False) -> int:
        """Append every closed window and queued record to the buffer; returns how many were appended."""
        if self._unsaved_gap is not None:
            await asyncio.to_thread(self._commit, *self._unsaved_gap)
            self._unsaved_gap = None
        now = self._clock()
        with self._lock:
            due = force or any(a.due(now) for a in self._windows.values())
        windows: list[Body] = []
        through: int | None = None
        if due:
            snapshot = await asyncio.to_thread(self._sensors.read)
            counts = await asyncio.to_thread(self.buffer.dropped_counts)
            dropped = {k: v - self._dropped_before.get(k, 0) for k, v in counts.items()}
            self._dropped_before = counts
            with self._lock:
                # Every open window, including one a new bundle opened meanwhile: ``through`` covers them all.
                through = self.frames_observed
                for digest in list(self._windows):
                    agg = self._windows[digest]
                    empty = agg.frames == 0
                    window = agg.close(
                        now,
                        sensors=snapshot.readings,
                        memory_free=snapshot.memory_free_bytes,
                        disk_free=snapshot.disk_free_bytes,
                        dropped=dropped,
                    )
                    if empty:
                        del self._windows[digest]
                    else:
                        windows.append(window)
                        dropped = {}
        with self._lock:
            items, self._pending = [*windows, *self._pending], []
            if through is None:  # not due: a mark put back by a failed append still goes with its windows
                through = self._requeued_through
            self._requeued_through = None
        if not items and through is None:
            return 0
        await asyncio.to_thread(self._store, items, through, now)
        if items:
            self.uploader.notify()
        return len(items)

    async def finish(self, *, upload_s: float = 2.0) -> None:
        """A clean stop, after the frame loop stopped: close every open window into the buffer (durably),
        mark the checkpoint clean, then let the uploader send what the buffer holds for up to ``upload_s``
        (what it cannot send goes at the next start). Never raises."""
        try:
            await self.flush(force=True)
        except Exception as exc:  # the frames stay counted in the checkpoint: the next start declares them
            log.error("telemetry.final_flush_failed", error=str(exc))
            return
        with self._lock:
            flushed = self.frames_observed == self._frames_through
        if flushed:
            await asyncio.to_thread(self._checkpoint.mark_clean)
        log.info("telemetry.flushed", frames_through=self._frames_through, held=self.buffer.count(), clean=flushed)
        if upload_s <= 0 or not self.buffer.count():
            return
        upload = asyncio.create_task(self.uploader.run(), name="telemetry-final-upload")
        try:
            for _ in range(max(1, round(upload_s / 0.05))):  # until everything is acknowledged, or upload_s
                if not self.buffer.count() or (await asyncio.wait({upload}, timeout=0.05))[0]:
                    break
        finally:
            upload.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await upload

    def close(self) -> None:
        self._checkpoint.close()
        self.buffer.close()


def frames_through(buffer: TelemetryBuffer) -> FramesThrough | None:
    """The frames-through mark ``buffer`` holds (None: none yet, or an unreadable one)."""
    frames, at = buffer.progress_value(FRAMES_THROUGH), buffer.progress_value(FRAMES_THROUGH_AT)
    if frames is None or at is None:
        return None
    try:
        return FramesThrough(int(frames), datetime.fromisoformat(at))
    except ValueError:
        return None


def _through_marks(frames: int, at: datetime) -> dict[str, str]:
    return {FRAMES_THROUGH: str(frames), FRAMES_THROUGH_AT: at.isoformat()}


def _detections(result: FrameResult) -> int:
    return sum(1 for o in result.outputs if hasattr(o, "box"))
