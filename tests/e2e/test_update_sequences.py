"""Update sequences on real processes: restarts during canary and trial, first installs, config candidates.

A real controller and real ``edge-runtime`` processes (real gRPC, real onnxruntime), observed through
``status.json`` and the controller's FleetService like an operator would:

- (e) SIGKILL during the canary and during the trial of a bundle: the restarted device resumes the canary or
  the trial of the SAME verified candidate from its journal (no re-download) and commits it; the crash is
  counted against the candidate (it died right after loading it) but one crash does not reject it. A first
  install of a bundle too slow for its SLA serves it anyway with degraded health and an alert.
- (f) config candidates: a config change that keeps the outputs passes its shadow canary and commits; one
  whose threshold drops every confident classification fails agreement and the previous config is
  restored, reported ``rolled_back`` with both config digests in the verdict.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.v1 import common_pb2, fleet_pb2, telemetry_pb2
from tests.support.fleet import make_bundle, running_edge, start_controller, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_first_install_of_a_too_slow_bundle_serves_degraded_with_an_alert(tmp_path: Path) -> None:
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        slow = make_bundle(tmp_path / "b1", key, version="1.0.0", seed=1)
        ctl.push(slow)
        # An SLA no model meets: every frame is over budget, nothing else is wrong with the bundle.
        ctl.apply_config(watch_window_s=0.5, min_frames=50, min_seconds=0.3, extra="    sla: {latency_ms: 0.001}\n")
        token = ctl.enrollment_token("lab")
        with running_edge(ctl.address, tmp_path / "dev", token, name="dev") as dev:
            ctl.set_desired("dev", slow.digest)
            status = dev.committed(slow.digest, timeout=60)
            assert status["update"]["degraded"] is not None and "first install" in status["update"]["degraded"]
            dev.wait_for(lambda s: s["health"] == "HEALTH_DEGRADED", 10, "degraded health")
            assert status["last_verdict"]["outcome"] == "fail"

            def alerts() -> list[telemetry_pb2.DeviceEvent]:
                reply = ctl.fleet.ListDeviceEvents(
                    fleet_pb2.ListDeviceEventsRequest(device="dev", limit=100), metadata=ctl.md, timeout=10
                )
                return [e for e in reply.events if e.kind == telemetry_pb2.DeviceEvent.KIND_ALERT]

            alert = wait_until(
                lambda: next((e for e in alerts() if e.reason.startswith("first_install.latency_miss")), None),
                20,
                "the first-install alert at the controller",
            )
            assert alert.bundle_digest == slow.digest
            assert alert.numbers["candidate_p95_ms"] > alert.numbers["latency_budget_ms"] > 0
            reported = wait_until(
                lambda: (d := ctl.device("dev")).reported.health == common_pb2.HEALTH_DEGRADED and d, 20, "degraded"
            )
            assert reported.reported.running_bundle_digest == slow.digest
            assert reported.reported.update_state == common_pb2.UPDATE_STATE_COMMITTED
