"""``fleetctl describe device``'s event lines say what each kind of event carries."""

from __future__ import annotations

from edgefleet.v1 import common_pb2, telemetry_pb2
from fleetctl.fleet_cmds import event_line

Event = telemetry_pb2.DeviceEvent


def test_a_transition_shows_its_states_and_reason() -> None:
    e = Event(
        kind=Event.KIND_UPDATE_STATE,
        from_state=common_pb2.UPDATE_STATE_TRIAL,
        to_state=common_pb2.UPDATE_STATE_FAILED,
        reason="download failed",
    )
    assert "trial→failed download failed" in event_line(e)


def test_a_verdict_shows_its_outcome_and_phase_not_unspecified_states() -> None:
    verdict = common_pb2.CanaryVerdict(outcome=common_pb2.CanaryVerdict.OUTCOME_PASS, phase="canary")
    line = event_line(Event(kind=Event.KIND_CANARY_VERDICT, verdict=verdict))
    assert "canary_verdict" in line and line.endswith("pass (canary)") and "unspecified" not in line


def test_a_frame_gap_shows_its_count_and_cause() -> None:
    known = telemetry_pb2.FrameGap(frames=83, frames_known=True, cause="process_killed")
    assert event_line(Event(kind=Event.KIND_FRAME_GAP, frame_gap=known)).endswith("83 frames lost (process_killed)")
    bound = telemetry_pb2.FrameGap(frames=5, cause="rebooted")
    assert event_line(Event(kind=Event.KIND_FRAME_GAP, frame_gap=bound)).endswith(">= 5 frames lost (rebooted)")
    unknown = telemetry_pb2.FrameGap(cause="checkpoint_corrupt")
    assert event_line(Event(kind=Event.KIND_FRAME_GAP, frame_gap=unknown)).endswith(
        "unknown frames lost (checkpoint_corrupt)"
    )


def test_an_alert_ends_with_its_reason() -> None:
    line = event_line(Event(kind=Event.KIND_ALERT, reason="thermal throttling"))
    assert line.endswith("alert          thermal throttling") and "unspecified" not in line
