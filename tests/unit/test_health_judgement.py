"""The device's health judgement says why it is not SERVING: runner facts and the agent's own reasons
(a supervised task down) degrade a serving device; reasons stay visible while starting or failing."""

from __future__ import annotations

from edge_runtime.agent.health.endpoint import FAILING_AFTER, HealthJudgement, judge
from edge_runtime.agent.runner import RunnerSnapshot
from edgefleet.v1 import common_pb2

DOWN = "telemetry task failed 2x: RecordTooLargeError: a review record of 30000 bytes"


def snap(**changes: object) -> RunnerSnapshot:
    base: dict[str, object] = {
        "frames_inferred": 10,
        "frames_idle": 0,
        "errors": 0,
        "consecutive_errors": 0,
        "last_frame_id": 9,
        "serving": "sha256:" + "a" * 64,
        "provider": "CPUExecutionProvider",
        "fell_back": False,
        "last_total_ms": 1.0,
    }
    base.update(changes)
    return RunnerSnapshot(**base)  # type: ignore[arg-type]


def test_a_task_down_degrades_a_serving_device_with_the_reason_and_serving_returns_without_it() -> None:
    assert judge(snap(), snap(), source_alive=True, degraded_by=[DOWN]) == HealthJudgement(
        common_pb2.HEALTH_DEGRADED, (DOWN,)
    )
    back = judge(snap(), snap(), source_alive=True, degraded_by=[])
    assert back == HealthJudgement(common_pb2.HEALTH_SERVING) and back.reason == ""


def test_every_degraded_cause_is_named() -> None:
    judged = judge(snap(errors=3, fell_back=True), snap(), source_alive=False, degraded_by=[DOWN])
    assert judged.health == common_pb2.HEALTH_DEGRADED
    assert judged.reason == (
        "onnxruntime fell back from the preferred provider to CPUExecutionProvider; "
        "3 frame(s) failed since the last judgement; the frame source delivers no frames; " + DOWN
    )


def test_starting_and_failing_keep_their_health_and_still_say_a_task_is_down() -> None:
    starting = judge(snap(serving=None), None, source_alive=True, degraded_by=[DOWN])
    assert starting.health == common_pb2.HEALTH_STARTING and DOWN in starting.reasons
    failing = judge(snap(consecutive_errors=FAILING_AFTER), snap(), source_alive=True, degraded_by=[DOWN])
    assert failing.health == common_pb2.HEALTH_FAILING
    assert failing.reasons == (f"the last {FAILING_AFTER} frames all failed", DOWN)


def test_health_judgement() -> None:
    assert judge(snap(serving=None), None, source_alive=True).health == common_pb2.HEALTH_STARTING
    assert judge(snap(), snap(), source_alive=True).health == common_pb2.HEALTH_SERVING
    assert judge(snap(errors=1), snap(), source_alive=True).health == common_pb2.HEALTH_DEGRADED
    assert judge(snap(fell_back=True), snap(), source_alive=True).health == common_pb2.HEALTH_DEGRADED
    assert judge(snap(), snap(), source_alive=False).health == common_pb2.HEALTH_DEGRADED
    failing = snap(errors=FAILING_AFTER, consecutive_errors=FAILING_AFTER)
    assert judge(failing, snap(), source_alive=True).health == common_pb2.HEALTH_FAILING
