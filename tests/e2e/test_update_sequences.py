"""Update sequences on real processes: restarts during canary and trial, first installs, config candidates.

A real controller and real ``edge-runtime`` processes (real gRPC, real onnxruntime), observed through
``status.json``, the frame log and the controller's FleetService like an operator would:

- (e) SIGKILL during the canary and during the trial of a bundle: the restarted device resumes the canary or
  the trial of the SAME verified candidate from its journal (re-verified from its slot, nothing fetched
  again) and commits it; the death right after loading the candidate is counted against it, one count does
  not reject it. A first-install device killed in its trial resumes it too (it used to end with no bundle).
  A SIGTERM stop is clean (its marker is on disk). A first install of a bundle too slow for its SLA serves
  it anyway, with degraded health and a ``first_install.latency_miss`` alert carrying the numbers. A first
  install serving its trial keeps serving (no idle frame) through a config change, a corrupt bundle and a
  SIGKILL, until a good bundle passes its canary and replaces it.
- (f) config rollouts through the controller (a staged FleetConfig revision rolled out in waves): a change
  of ``inference.conf_threshold`` that keeps every classification is canaried in shadow (a second engine of
  the same bundle under the new config) and committed on both devices; one whose threshold drops every
  classification fails agreement on the canary device, which restores the previous config and reports
  ``rolled_back`` under the rollout's assignment with both config digests in the verdict, and the rollout
  never reaches the second device.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgefleet.v1 import common_pb2, fleet_pb2, telemetry_pb2
from edgefleet_testing.bundles import make_bundle
from edgefleet_testing.fleet import Controller, EdgeProcess, running_edge, start_controller, start_edge
from edgefleet_testing.waiting import wait_until
from tests.e2e.test_rollout_e2e import PHASE, Fleet, by_name, fleet_on_v1

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KIND = telemetry_pb2.DeviceEvent
S = common_pb2


def events(ctl: Controller, name: str) -> list[telemetry_pb2.DeviceEvent]:
    reply = ctl.fleet.ListDeviceEvents(
        fleet_pb2.ListDeviceEventsRequest(device=name, limit=500), metadata=ctl.md, timeout=10
    )
    return sorted(reply.events, key=lambda e: e.at.ToNanoseconds())


# ---------------------------------------------------------------------------------------------- (e)


def test_sigkill_during_canary_and_during_trial_resumes_the_same_candidate_and_commits(tmp_path: Path) -> None:
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        v1 = make_bundle(tmp_path / "b1", key, version="1.0.0", seed=1)
        v2 = make_bundle(tmp_path / "b2", key, version="2.0.0", seed=1)  # same weights: its canary passes
        ctl.push(v1)
        ctl.push(v2)
        ctl.apply_config(watch_window_s=1.0, min_frames=50, min_seconds=1.0)
        token = ctl.enrollment_token("lab")

        # dev-canary and dev-trial run v1 and die installing v2; dev-first dies in the trial of its first
        # bundle (the sequence that used to end with no bundle at all: the candidate discarded on restart,
        # its download then refused once the aborted rollout cleared the desired bundle).
        plans = {"dev-canary": "canary:after", "dev-trial": "trial:after", "dev-first": "trial:after"}

        def first_life(name: str) -> tuple[str, dict[str, Any]]:
            env = {"EDGEFLEET_CRASH_AT": plans[name], "EDGEFLEET_CRASH_CANDIDATE": v2.digest}
            dev = start_edge(ctl.address, tmp_path / name, token, name=name, source="synthetic:30", env=env)
            try:
                if name != "dev-first":
                    ctl.set_desired(name, v1.digest)
                    dev.committed(v1.digest, timeout=60)
                ctl.set_desired(name, v2.digest)
                assert dev.wait_exit(60) == -signal.SIGKILL
            finally:
                dev.terminate()
            return name, dev.status()

        with ThreadPoolExecutor(3) as pool:
            lives = dict(pool.map(first_life, plans))
        for name, last in lives.items():
            # The dead process's last status: the candidate verified and in its slot, v1 still committed.
            expected = None if name == "dev-first" else v1.digest
            assert last["update"]["committed"] == expected, (name, last["update"])
            assert (tmp_path / name / "bundles" / v2.digest.removeprefix("sha256:")).is_dir()

        def second_life(name: str) -> tuple[str, dict[str, Any], list[telemetry_pb2.DeviceEvent]]:
            dev = start_edge(ctl.address, tmp_path / name, token, name=name, source="synthetic:30")
            try:
                status = dev.committed(v2.digest, timeout=90)
                wait_until(
                    lambda: ctl.device(name).reported.running_bundle_digest == v2.digest, 20, f"{name} reports v2"
                )
                found = events(ctl, name)
            finally:
                # A SIGTERM stop is clean: it leaves the marker that keeps the next start from counting a crash.
                assert dev.terminate() == 0
            assert (tmp_path / name / "update" / "clean-stop.json").is_file()
            return name, status, found

        with ThreadPoolExecutor(3) as pool:
            results = {name: (status, evs) for name, status, evs in pool.map(second_life, lives)}

        for phase, name in (("canary", "dev-canary"), ("trial", "dev-trial"), ("trial", "dev-first")):
            status, evs = results[name]
            # Nothing fetched again: the verified slot on disk was the candidate.
            assert status["fetch"]["bytes_received"] == 0, status["fetch"]
            assert status["update"]["previous"] == (None if name == "dev-first" else v1.digest)
            resumed = [e for e in evs if e.kind == KIND.KIND_UPDATE_STATE and e.reason.startswith("resumed at")]
            assert resumed, [(e.to_state, e.reason) for e in evs]
            # Died right after loading the candidate: a crash that counts, one of three.
            assert resumed[0].reason == (
                f"resumed at {phase} after the process crashed; crash 1 of 3 counted against it"
            ), resumed[0].reason
            assert resumed[0].to_state == S.UPDATE_STATE_VERIFYING and resumed[0].bundle_digest == v2.digest
            after = [
                e
                for e in evs
                if e.kind == KIND.KIND_UPDATE_STATE and e.at.ToNanoseconds() >= resumed[0].at.ToNanoseconds()
            ]
            states = [e.to_state for e in after]
            if phase == "canary":
                # The canary runs again from the start, then the trial, then the commit.
                assert S.UPDATE_STATE_CANARY in states and S.UPDATE_STATE_TRIAL in states, states
            else:
                # The trial resumes: the canary the bundle passed before the crash is not run again.
                assert S.UPDATE_STATE_CANARY not in states and S.UPDATE_STATE_TRIAL in states, states
            assert states[-1] == S.UPDATE_STATE_COMMITTED, states


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
            assert any(reason.startswith("p95 latency") for reason in status["last_verdict"]["reasons"])

            def alert() -> telemetry_pb2.DeviceEvent | None:
                found = [e for e in events(ctl, "dev") if e.kind == KIND.KIND_ALERT]
                return next((e for e in found if e.reason.startswith("first_install.latency_miss")), None)

            event = wait_until(alert, 20, "the first-install alert at the controller")
            assert event.bundle_digest == slow.digest
            assert event.numbers["candidate_p95_ms"] > event.numbers["latency_budget_ms"] > 0
            assert event.numbers["sla_ms"] == pytest.approx(0.001)
            reported = wait_until(
                lambda: (d := ctl.device("dev")).reported.health == S.HEALTH_DEGRADED and d, 20, "degraded health"
            )
            assert reported.reported.running_bundle_digest == slow.digest
            assert reported.reported.update_state == S.UPDATE_STATE_COMMITTED
            # It serves: frames are inferred with it, none idle since it was committed.
            assert dev.frames() and dev.frames()[-1][1] == slow.digest


# ---------------------------------------------------------------------------------------------- (f)

FLEET_CONFIG = """apiVersion: edgefleet.io/v1
kind: FleetConfig
metadata: {{name: default}}
spec:
  config:
    canary: {{min_frames: 50, min_seconds: 1, watch_window_s: 1, max_p95_ratio: 20}}
    inference: {{conf_threshold: {threshold}}}
"""


def stage_threshold(ctl: Controller, threshold: float) -> None:
    ctl.apply("fleet.yaml", FLEET_CONFIG.format(threshold=threshold), stage=True, timeout=10)


def config_rollout(fleet: Fleet) -> fleet_pb2.Rollout:
    reply: fleet_pb2.Rollout = fleet.ctl.fleet.CreateRollout(
        fleet_pb2.CreateRolloutRequest(
            config="FleetConfig/default",
            selector=fleet_pb2.RolloutSelector(sites=sorted(fleet.sites)),
            strategy=fleet_pb2.RolloutStrategy(waves=["1", "100%"], bake_s=0),
            on_abort="rollback",
        ),
        metadata=fleet.ctl.md,
        timeout=30,
    )
    return reply


def config_is(digest: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: bool(status["update"]["committed_config"] == digest)


def committed_config(edge: EdgeProcess) -> str | None:
    config: str | None = edge.status()["update"]["committed_config"]
    return config


def test_config_rollouts_canary_a_threshold_change_and_revert_one_that_drops_every_classification(
    tmp_path: Path,
) -> None:
    with start_controller(tmp_path / "ctl") as ctl, fleet_on_v1(tmp_path, ctl, {"lab": ["lab-1", "lab-2"]}) as fleet:
        before = {name: committed_config(edge) for name, edge in fleet.edges.items()}
        assert all(before.values()), before

        # Passes: every classification's confidence is above 0.1, so the outputs do not change.
        stage_threshold(ctl, 0.1)
        good = config_rollout(fleet)
        done = fleet.wait_phase(good.id, PHASE.ROLLOUT_PHASE_COMPLETED, 120)
        targets = {name: row.target_config_digest for name, row in by_name(done).items()}
        for name, edge in fleet.edges.items():
            status = edge.wait_for(config_is(targets[name]), 20, "config committed")
            assert status["update"]["committed"] == fleet.v1.digest and status["update"]["state"] == "committed"
            reported = ctl.device(name).reported
            assert reported.running_config_digest == targets[name] != before[name]
            assert reported.assignment_id == by_name(done)[name].assignment_id
            # It was canaried in shadow: a canary verdict of the same bundle under the two configs.
            canaries = [
                e.verdict
                for e in events(ctl, name)
                if e.kind == KIND.KIND_CANARY_VERDICT
                and e.verdict.phase == "canary"
                and e.verdict.candidate_config_digest == targets[name]
            ]
            assert canaries and canaries[-1].outcome == S.CanaryVerdict.OUTCOME_PASS, canaries
            assert canaries[-1].candidate_digest == canaries[-1].baseline_digest == fleet.v1.digest
            assert canaries[-1].baseline_config_digest == before[name]
            assert canaries[-1].agreement == 1.0
        passed = {name: committed_config(edge) for name, edge in fleet.edges.items()}

        # Fails: a threshold above every confidence drops every classification; agreement collapses.
        stage_threshold(ctl, 0.99)
        bad = config_rollout(fleet)
        rolled_back = fleet.wait_phase(bad.id, PHASE.ROLLOUT_PHASE_ROLLED_BACK, 120)
        rows = by_name(rolled_back)
        (canary,) = [name for name, row in rows.items() if row.wave == 1]
        (other,) = [name for name in fleet.edges if name != canary]
        target = rows[canary].target_config_digest
        assert rows[canary].verdict.outcome == S.CanaryVerdict.OUTCOME_FAIL, rows[canary]
        assert rows[canary].verdict.assignment_id == rows[canary].assignment_id
        # What the device said under the rollout's assignment: rolled back, with the verdict naming both
        # configs (the controller then reverts it to the previous config, a new assignment it reaches at once).
        evs = events(ctl, canary)
        (verdict,) = [
            e.verdict
            for e in evs
            if e.kind == KIND.KIND_CANARY_VERDICT and e.verdict.assignment_id == rows[canary].assignment_id
        ]
        assert verdict.outcome == S.CanaryVerdict.OUTCOME_FAIL and verdict.phase == "canary"
        assert (verdict.candidate_config_digest, verdict.baseline_config_digest) == (target, passed[canary])
        assert verdict.candidate_digest == verdict.baseline_digest == fleet.v1.digest
        assert any("agreement" in reason for reason in verdict.reasons), verdict.reasons
        rollback = [
            e
            for e in evs
            if e.kind == KIND.KIND_ROLLBACK and e.at.ToNanoseconds() >= verdict.decided_at.ToNanoseconds()
        ]
        assert rollback and rollback[0].reason.startswith("canary failed: agreement"), rollback
        reported = wait_until(
            lambda: (
                (d := ctl.device(canary)).reported.assignment_id == d.desired.assignment_id
                and d.reported.update_state == S.UPDATE_STATE_COMMITTED
                and d
            ),
            20,
            "the canary device back on the previous config under the revert",
        ).reported
        assert reported.running_config_digest == passed[canary], "the previous config is restored"
        assert reported.running_bundle_digest == fleet.v1.digest
        edge = fleet.edges[canary]
        assert committed_config(edge) == passed[canary]
        # The device goes on serving v1, under the restored config.
        served_from = len(edge.frames())
        wait_until(lambda: len(edge.frames()) > served_from + 10, 20, "frames served after the rollback")
        assert edge.status()["serving"] == fleet.v1.digest
        # The second device never had the failing config.
        assert committed_config(fleet.edges[other]) == passed[other]
        assert all(
            e.verdict.candidate_config_digest != rows[other].target_config_digest
            or not rows[other].target_config_digest
            for e in events(ctl, other)
            if e.kind == KIND.KIND_CANARY_VERDICT
        )


def test_a_first_install_in_trial_serves_through_a_config_change_a_corrupt_bundle_a_sigkill_and_a_good_one(
    tmp_path: Path,
) -> None:
    """Nothing committed, v1 serving its first-install trial: a telemetry-only config change, then a bundle
    whose blob is corrupt on the controller (DATA_LOSS), with a SIGKILL while it is in progress, then a good
    bundle. v1 serves the whole time (no idle frame, no gap in the frame log, health never back to starting)
    until v2 passes its canary and replaces it. This sequence used to clear v1 and serve nothing."""
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        v1 = make_bundle(tmp_path / "b1", key, version="1.0.0", seed=1)
        bad = make_bundle(tmp_path / "bad", key, version="2.0.0-corrupt", seed=3)  # its own model blob
        v2 = make_bundle(tmp_path / "b2", key, version="3.0.0", seed=1)  # same weights: its canary passes
        for bundle in (v1, bad, v2):
            ctl.push(bundle)
        blob = ctl.blob_path(bad.artifact_digests["model"])
        blob.chmod(0o644)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        canary: dict[str, Any] = {"watch_window_s": 600.0, "min_frames": 50, "min_seconds": 1.0}  # trials outlast it
        ctl.apply_config(**canary)
        token = ctl.enrollment_token("lab")
        seen: list[dict[str, Any]] = []

        def serving_v1(status: dict[str, Any]) -> bool:
            seen.append(status)
            return bool(status["serving"] == v1.digest)

        dev = start_edge(ctl.address, tmp_path / "dev", token, name="dev")
        try:
            ctl.set_desired("dev", v1.digest)
            trial = dev.wait_for(lambda s: s["update"]["state"] == "trial" and s["serving"] == v1.digest, 60, "trial")
            assert trial["update"]["committed"] is None
            first_frame = dev.frames()[-1][0]

            # A telemetry-only change: v1 is committed and goes on serving, the config in a watch window.
            ctl.apply_config(**canary, extra="    telemetry: {window_s: 2}\n")
            dev.wait_for(lambda s: serving_v1(s) and s["update"]["committed"] == v1.digest, 20, "v1 committed")
            # The corrupt bundle: its downloads are refused; killed while it is in progress.
            ctl.set_desired("dev", bad.digest)
            dev.wait_for(lambda s: serving_v1(s) and s["update"]["candidate"] == bad.digest, 20, "bad in progress")
            dev.proc.kill()
            assert dev.wait_exit(10) == -signal.SIGKILL
            logged = dev.frames()
            first_life = [(fid, digest) for fid, digest in logged if fid >= first_frame]
            dev = start_edge(ctl.address, tmp_path / "dev", token, name="dev")
            dev.wait_for(lambda s: serving_v1(s) and s["update"]["state"] == "failed", 60, "bad failed")
            wait_until(lambda: ctl.device("dev").reported.update_state == S.UPDATE_STATE_FAILED, 20, "failed")
            reported = ctl.device("dev").reported
            assert reported.running_bundle_digest == v1.digest and bad.digest not in reported.slot_digests
            # The good one: canaried against v1 in shadow, then it replaces v1.
            ctl.set_desired("dev", v2.digest)
            replaced = dev.wait_for(lambda s: not serving_v1(s), 60, "v2 serving")
            assert replaced["serving"] == v2.digest and replaced["update"]["state"] == "trial"
            assert replaced["update"]["committed"] == v1.digest
            second_life = dev.frames()[len(logged) :]
        finally:
            dev.terminate()
        # First life: v1 serves every frame from its trial on. Second life: from the moment recovery loaded it.
        lives = [[s for s in seen if s["pid"] == trial["pid"]], [s for s in seen if s["pid"] != trial["pid"]]]
        lives[1] = lives[1][next(i for i, s in enumerate(lives[1]) if s["serving"] == v1.digest) :]
        for statuses in lives:
            assert all(s["health"] != "HEALTH_STARTING" for s in statuses), [s["health_reason"] for s in statuses]
            assert {s["frames_idle"] for s in statuses} == {statuses[0]["frames_idle"]}, "frames went idle"
        for frames in (first_life, second_life):
            ids = [fid for fid, _ in frames]
            assert ids and ids == list(range(ids[0], ids[0] + len(ids))), "a frame was not served"
        assert {digest for _, digest in first_life} == {v1.digest}
        changes = [(a, b) for (_, a), (_, b) in itertools.pairwise(second_life) if a != b]
        assert second_life[0][1] == v1.digest and changes == [(v1.digest, v2.digest)], changes
