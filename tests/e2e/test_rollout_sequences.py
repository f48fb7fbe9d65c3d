"""Rollouts on the operator sequences that used to break them, end to end: a real controller process, real
``edge-runtime`` processes, real gRPC on loopback, real onnxruntime, fleetctl as a subprocess.

(a) A bundle fails its canary and the rollout rolls back. A new rollout of the same bundle is refused with
    the earlier verdict quoted; forced (``fleetctl rollout create --force``), its canary device runs it
    first — under a new assignment, judged only on what it reports under that assignment — and no other
    device ever has it as desired while the canary fails again.
(b) After that rollback, a rollout of a good bundle to the same site completes: the canary's left-over
    "rolled back" state and FAIL verdict (another assignment) count neither for nor against it.

The fleet helpers (``fleet_on_v1``: enroll, commit v1 everywhere, short canary windows by FleetConfig) are
those of ``test_rollout_e2e``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from edgefleet.v1 import common_pb2, fleet_pb2
from edgefleet_testing.fleet import Controller, start_controller
from tests.e2e.test_rollout_e2e import (
    PHASE,
    DesiredSampler,
    Fleet,
    by_name,
    downloads_of,
    fleet_on_v1,
    verdicts_of,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FAIL = common_pb2.CanaryVerdict.OUTCOME_FAIL
PASS = common_pb2.CanaryVerdict.OUTCOME_PASS
COMMITTED = common_pb2.UPDATE_STATE_COMMITTED


def fleetctl(ctl: Controller, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGEFLEET_CONTROLLER": ctl.address,
        "EDGEFLEET_TOKEN": ctl.admin_token,
        "COLUMNS": "250",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("FORCE_COLOR", None)
    exe = Path(sys.executable).with_name("fleetctl")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=60, cwd=str(REPO))


class RolloutWatcher:
    """``WatchRollout`` on a thread: every (phase, wave, message) the rollout showed until it ended."""

    def __init__(self, ctl: Controller, rollout_id: str) -> None:
        self.seen: list[tuple[int, int, str]] = []
        self._call = ctl.fleet.WatchRollout(fleet_pb2.GetRolloutRequest(id=rollout_id), metadata=ctl.md, timeout=180)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rollout-watcher", daemon=True)

    def _run(self) -> None:
        try:
            for update in self._call:
                self.seen.append((update.phase, update.wave, update.message))
        except grpc.RpcError:
            pass  # the stream ended at the terminal phase, or __exit__ cancelled it
        except Exception as exc:  # kept for the test to see, never raised on the thread
            self.error = exc

    def __enter__(self) -> RolloutWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(15)  # the stream ends at the terminal phase the test waited for
        self._call.cancel()
        self._thread.join(5)
        assert self.error is None, f"WatchRollout's reader failed: {self.error!r}"


def fail_verdicts(fleet: Fleet, name: str, digest: str) -> list[common_pb2.CanaryVerdict]:
    return [v for v in verdicts_of(fleet.events(name), digest) if v.phase == "canary" and v.outcome == FAIL]


def roll_back_a_bad_bundle(fleet: Fleet) -> tuple[fleet_pb2.Rollout, str, str]:
    """Roll a regressed bundle out; its canary fails; return (the rolled-back rollout, canary name, digest)."""
    bad = fleet.bundle("2.0.0-regressed", logit_shift=1.0)
    first = fleet.rollout(bad)
    done = fleet.wait_phase(first.id, PHASE.ROLLOUT_PHASE_ROLLED_BACK, 90)
    (canary,) = [n for n, row in by_name(done).items() if row.wave == 1]
    assert "wave 1 (canary): 1 of 1 devices failed" in done.message, done.message
    (verdict,) = fail_verdicts(fleet, canary, bad.digest)
    assert verdict.assignment_id == by_name(done)[canary].assignment_id == f"{first.id}/{fleet.ids[canary]}/w1"
    return done, canary, bad.digest


def test_a_bundle_that_failed_its_canary_is_refused_and_forced_runs_its_canary_first(tmp_path: Path) -> None:
    sites = {"lab": ["lab-1", "lab-2", "lab-3"]}
    with start_controller(tmp_path / "ctl") as ctl, fleet_on_v1(tmp_path, ctl, sites) as fleet:
        first, canary, bad = roll_back_a_bad_bundle(fleet)

        # the controller remembers: GetBundle lists the failure, CreateRollout refuses quoting it
        bundle = ctl.fleet.GetBundle(fleet_pb2.GetBundleRequest(ref=bad), metadata=ctl.md, timeout=10)
        assert [(f.device_name, f.rollout_id, f.kind) for f in bundle.canary_failures] == [
            (canary, first.id, "canary_fail")
        ]
        with pytest.raises(grpc.RpcError) as refused:
            ctl.fleet.CreateRollout(
                fleet_pb2.CreateRolloutRequest(bundle=bad, selector=fleet_pb2.RolloutSelector(sites=["lab"])),
                metadata=ctl.md,
                timeout=30,
            )
        details = refused.value.details() or ""
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"{canary} in rollout {first.id}" in details and "confidence drift" in details, details
        plain = fleetctl(ctl, "rollout", "create", bad, "--site", "lab", "--waves", "1,100%")
        assert plain.returncode != 0 and "failed its canary before" in plain.stderr + plain.stdout, plain
        assert "--force" in plain.stderr + plain.stdout
        assert [r.id for r in ctl.fleet.ListRollouts(fleet_pb2.ListRolloutsRequest(), metadata=ctl.md).rollouts] == [
            first.id
        ]

        # an operator sees the failure on the bundle itself
        described = fleetctl(ctl, "describe", "bundle", bad)
        assert described.returncode == 0, described
        assert "canary failures (1)" in described.stdout and canary in described.stdout, described.stdout
        assert first.id in described.stdout and "refused unless --force" in described.stdout
        clean = fleetctl(ctl, "describe", "bundle", fleet.v1.digest)
        assert clean.returncode == 0 and "canary failures: none" in clean.stdout, clean

        # fleetctl budget never picks it, and says why
        budget = fleetctl(ctl, "budget", bad, "--sla", "10s")
        assert "failed its canary" in budget.stdout and canary in budget.stdout, budget

        # forced: the canary device runs it again under a new assignment; nobody else ever gets it
        with DesiredSampler(fleet) as sampler:
            forced_out = fleetctl(
                ctl, "rollout", "create", bad, "--site", "lab", "--waves", "1,100%", "--force", "-o", "json"
            )
            assert forced_out.returncode == 0, forced_out
            forced = json.loads(forced_out.stdout)
            assert forced["forced"] is True
            assert any(line.startswith("failed-canary refusal overridden (forced)") for line in forced["admission"])
            done = fleet.wait_phase(forced["id"], PHASE.ROLLOUT_PHASE_ROLLED_BACK, 90)
        rows = by_name(done)
        (again,) = [n for n, row in rows.items() if row.wave == 1]
        assert rows[again].assignment_id == f"{done.id}/{fleet.ids[again]}/w1"
        verdicts = fail_verdicts(fleet, again, bad)
        assert rows[again].assignment_id in {v.assignment_id for v in verdicts}, verdicts  # judged on its own run
        assert "wave 1 (canary): 1 of 1 devices failed" in done.message
        assert downloads_of(fleet.events(again), bad) >= 1
        for name in set(fleet.edges) - {canary, again}:
            assert rows[name].wave == 0 and rows[name].status == "pending", (name, rows[name])
            assert sampler.seen[name] == {fleet.v1.digest}, (name, sampler.seen[name])
            assert not [e for e in fleet.events(name) if e.bundle_digest == bad], name
        for edge in fleet.edges.values():
            edge.committed(fleet.v1.digest, timeout=30)

        status = fleetctl(ctl, "rollout", "status", done.id)
        assert status.returncode == 0 and "overridden (forced)" in status.stdout, status
        assert "failed-canary refusal overridden" in status.stdout


def test_after_a_rollback_a_good_bundle_rolls_out_to_the_same_site(tmp_path: Path) -> None:
    sites = {"lab": ["lab-1", "lab-2"]}
    with start_controller(tmp_path / "ctl") as ctl, fleet_on_v1(tmp_path, ctl, sites) as fleet:
        first_rollout, canary, bad = roll_back_a_bad_bundle(fleet)
        stale = fleet.ctl.device(canary).reported
        assert stale.last_verdict.outcome == FAIL and stale.last_verdict.candidate_digest == bad

        good = fleet.bundle("3.0.0")
        created = fleet.rollout(good)
        with RolloutWatcher(ctl, created.id) as watcher:
            done = fleet.wait_phase(created.id, PHASE.ROLLOUT_PHASE_COMPLETED, 120)
        rows = by_name(done)
        assert {d.status for d in done.devices} == {"succeeded"}, [(d.device_name, d.status) for d in done.devices]
        assert sorted(row.wave for row in rows.values()) == [1, 2]
        # as an operator watching it saw it: running wave 1, then wave 2, then completed; never aborting
        phases = [phase for phase, _, _ in watcher.seen]
        assert set(phases) <= {PHASE.ROLLOUT_PHASE_RUNNING, PHASE.ROLLOUT_PHASE_COMPLETED}, watcher.seen
        waves = [wave for _, wave, _ in watcher.seen]
        assert waves == sorted(waves) and waves[0] == 1 and waves[-1] == 2, watcher.seen
        for name, edge in fleet.edges.items():
            edge.committed(good.digest, timeout=30)
            desired = fleet.desired(name)
            assert (desired.bundle_digest, desired.rollout_id) == (good.digest, done.id)
            assert (
                desired.assignment_id == rows[name].assignment_id == f"{done.id}/{fleet.ids[name]}/w{rows[name].wave}"
            )
            (passed,) = [v for v in verdicts_of(fleet.events(name), good.digest) if v.phase == "canary"]
            assert passed.outcome == PASS and passed.assignment_id == desired.assignment_id
        # wave 2 started only after the canary's own run of the good bundle ended (canary, then watch window)
        first = next(n for n, row in rows.items() if row.wave == 1)
        second = next(n for n, row in rows.items() if row.wave == 2)
        judged = [
            v for v in verdicts_of(fleet.events(first), good.digest) if v.assignment_id == rows[first].assignment_id
        ]
        assert {v.phase for v in judged} == {"canary", "watch"} and {v.outcome for v in judged} == {PASS}, judged
        watched_at = max(v.decided_at.ToDatetime() for v in judged)
        assert rows[second].assigned_at.ToDatetime() >= watched_at, (first, second)
        # the rolled-back rollout still shows its canary's failing verdict after the device moved on
        old = by_name(
            ctl.fleet.GetRollout(fleet_pb2.GetRolloutRequest(id=first_rollout.id), metadata=ctl.md, timeout=10)
        )
        assert old[canary].status == "rolled_back" and old[canary].verdict.outcome == FAIL, old[canary]
        assert old[canary].verdict.assignment_id == old[canary].assignment_id != rows[canary].assignment_id
        shown = fleetctl(ctl, "rollout", "status", first_rollout.id)
        assert "1 assigned, 0 succeeded, 1 failed" in shown.stdout, shown.stdout
