"""The device's telemetry pipeline: frame results → metric windows, events and review samples → the durable
``TelemetryBuffer`` (``<data dir>/telemetry/buffer.db``) → the ``TelemetryUploader``.

Threads: ``observe`` runs on the frame thread and only adds to the window under a short lock (plus, for
the rare frame the review sampler flags, a JPEG encode). Closing windows (which reads sensors, up to the
2 s nvidia-smi timeout) and appending to the buffer (an fsynced transaction) happen in the asyncio task
via worker threads, so inference never waits on disk or sensors.

Decisions:
- One window aggregator per served bundle; a window with no frames is not emitted.
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
                agg = WindowAggregator(bundle_digest=digest, provider=provider, started_at=now, window_s=self.window_s)
                self._windows[digest] = agg
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
        now = self._clock()
        with self._lock:
            due = [d for d, a in self._windows.items() if force or a.due(now)]
        windows: list[Body] = []
        if due:
            snapshot = await asyncio.to_thread(self._sensors.read)
            counts = await asyncio.to_thread(self.buffer.dropped_counts)
            dropped = {k: v - self._dropped_before.get(k, 0) for k, v in counts.items()}
            self._dropped_before = counts
            with self._lock:
                for digest in due:
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
        if not items:
            return 0
        await asyncio.to_thread(self.buffer.append_many, items)
        self.uploader.notify()
        return len(items)

    def close(self) -> None:
        self.buffer.close()


def _detections(result: FrameResult) -> int:
    return sum(1 for o in result.outputs if hasattr(o, "box"))
