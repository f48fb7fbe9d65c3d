"""What a start declares about the frames the previous run never reported. Pure: no I/O, no clock.

The pipeline counts every frame it observes (cumulatively, across runs) in the frame checkpoint
(``frame_progress``), and commits with each batch of closed windows the count they cover (``FramesThrough``,
in the buffer's transaction: a window and its count are durable together or not at all). At the next start
``declare_gap`` compares the two:

- same boot, checkpoint ahead of the buffer: the difference is exact (the checkpoint lives in the page
  cache, which outlives a killed process): ``frames_known``, cause ``process_killed`` (kill -9, a crash, or
  a flush that failed);
- another boot without a clean-stop flag: the page cache may have died with the power, so the count is only
  a lower bound (``frames_known`` false, cause ``rebooted``); a clean stop before a reboot declares nothing;
- a checkpoint that is unreadable (``checkpoint_corrupt``), missing while the buffer has counted frames
  (``checkpoint_missing``), behind the buffer on the same boot (``checkpoint_corrupt``), or a buffer that lost
  its count (recreated after corruption: ``buffer_reset``): an interval with an unknown count.

``base`` is where counting goes on from; the declaring start commits it as the new frames-through.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from edgefleet.v1.telemetry_pb2 import DeviceEvent, FrameGap


class GapCause(StrEnum):
    """Why frames went unreported; the stored names never change (they travel in ``FrameGap.cause``)."""

    PROCESS_KILLED = "process_killed"
    REBOOTED = "rebooted"
    CHECKPOINT_CORRUPT = "checkpoint_corrupt"
    CHECKPOINT_MISSING = "checkpoint_missing"
    BUFFER_RESET = "buffer_reset"


@dataclass(frozen=True, slots=True)
class FramesThrough:
    """The cumulative frame count the buffer's windows cover, and when it was committed (the open window's
    start)."""

    frames: int
    at: datetime


@dataclass(frozen=True, slots=True)
class CheckpointState:
    """What the frame checkpoint said: the cumulative count, the newest frame's time, its bundle, the boot it
    was written on and whether the run ended with a clean (flushed) stop."""

    frames: int
    last_at: datetime
    bundle_digest: str
    boot_id: str
    clean: bool


@dataclass(frozen=True, slots=True)
class UnreadableCheckpoint:
    """The checkpoint file exists but holds no valid slot; ``modified_at`` bounds when its last frame was."""

    reason: str
    modified_at: datetime


@dataclass(frozen=True, slots=True)
class Gap:
    """A declared interval of unreported frames (``frames`` is a lower bound unless ``frames_known``)."""

    start: datetime
    end: datetime
    frames: int
    frames_known: bool
    cause: GapCause
    bundle_digest: str = ""


@dataclass(frozen=True, slots=True)
class Reconciled:
    gap: Gap | None
    base: int


def declare_gap(
    checkpoint: CheckpointState | UnreadableCheckpoint | None,
    through: FramesThrough | None,
    *,
    boot_id: str,
    now: datetime,
) -> Reconciled:
    """The gap (if any) between the checkpoint and the buffer's frames-through (module docstring)."""
    counted = through.frames if through is not None else 0
    if isinstance(checkpoint, UnreadableCheckpoint):
        start = through.at if through is not None else checkpoint.modified_at
        end = max(start, checkpoint.modified_at)
        return Reconciled(Gap(start, end, 0, False, GapCause.CHECKPOINT_CORRUPT), counted)
    if checkpoint is None:
        if through is None or through.frames == 0:
            return Reconciled(None, counted)  # first start: nothing was ever counted
        return Reconciled(Gap(through.at, max(through.at, now), 0, False, GapCause.CHECKPOINT_MISSING), counted)
    ck = checkpoint
    if through is None:
        if ck.frames == 0:
            return Reconciled(None, ck.frames)
        # The buffer was recreated (its count went with it): what the old one held unsent is unknown.
        return Reconciled(Gap(ck.last_at, ck.last_at, 0, False, GapCause.BUFFER_RESET, ck.bundle_digest), ck.frames)
    base = max(ck.frames, through.frames)
    ahead = ck.frames - through.frames
    start, end = through.at, max(through.at, ck.last_at)
    if boot_id and ck.boot_id and boot_id != ck.boot_id:
        if ck.clean and ahead == 0:
            return Reconciled(None, base)
        return Reconciled(Gap(start, end, max(0, ahead), False, GapCause.REBOOTED, ck.bundle_digest), base)
    if ahead < 0:
        return Reconciled(Gap(start, end, 0, False, GapCause.CHECKPOINT_CORRUPT, ck.bundle_digest), base)
    if ahead == 0:
        return Reconciled(None, base)
    return Reconciled(Gap(start, end, ahead, True, GapCause.PROCESS_KILLED, ck.bundle_digest), base)


def gap_event(gap: Gap, *, event_id: str, at: datetime) -> DeviceEvent:
    """The ``KIND_FRAME_GAP`` event that carries ``gap`` through the buffer to the controller."""
    count = (
        f"{gap.frames} frames" if gap.frames_known else (f"at least {gap.frames} frames" if gap.frames else "frames")
    )
    event = DeviceEvent(
        event_id=event_id,
        kind=DeviceEvent.KIND_FRAME_GAP,
        bundle_digest=gap.bundle_digest,
        reason=(
            f"{count} processed between {gap.start.isoformat()} and {gap.end.isoformat()} were never reported "
            f"({gap.cause.value})"
        ),
        frame_gap=FrameGap(frames=gap.frames, frames_known=gap.frames_known, cause=gap.cause.value),
    )
    event.at.FromDatetime(at)
    event.frame_gap.start.FromDatetime(gap.start)
    event.frame_gap.end.FromDatetime(gap.end)
    return event
