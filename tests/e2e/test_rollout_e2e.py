"""Canary-gated site rollouts end to end: a real controller process, real ``edge-runtime`` processes, real
gRPC on loopback, real onnxruntime.

Each test enrolls its devices, puts v1 on them (``SetDesiredBundle`` per site), then rolls v2 out with
``CreateRollout`` (waves ``[1, 100%]`` per site, no bake) and watches it as an operator would: the
rollout's device list, ``GetDevice`` (desired and reported state), ``ListDeviceEvents`` and the devices'
own ``status.json``. What is proven:

1. a good bundle moves two sites wave by wave and the rollout completes, each device assigned once;
2. a regressed bundle (shifted confidences) fails on the canary device only, the rollout rolls back,
   and no other device's desired state ever changes;
3. the controller SIGKILLed mid-canary and restarted on the same data dir and port resumes and completes
   the rollout without assigning any device twice;
4. a canary device whose link is blackholed mid-canary finishes offline, reports its verdict when the
   link is back, and the rollout completes.

"Assigned once" is read from the desired-state revision: every change of a device's desired state bumps
it, so v1 + one rollout assignment is exactly one revision past the baseline taken after v1 committed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgefleet.contract.signing import SigningKey
from edgefleet.v1 import common_pb2, fleet_pb2, telemetry_pb2
from edgefleet_testing.bundles import SignedBundle, make_bundle
from edgefleet_testing.faultproxy import FaultProxy
from edgefleet_testing.fleet import Controller, EdgeProcess, start_controller, start_edge
from edgefleet_testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SOURCE = "synthetic:10"
# 50 frames at 10 FPS: a canary takes ~5 s, the watch window 1 s. p95 ratios are noisy with a dozen
# processes on two cores, so the latency-regression bound is loose; drift is what these tests exercise.
CONFIG = """apiVersion: edgefleet.io/v1
kind: FleetConfig
metadata: {name: default}
spec:
  config:
    canary: {min_frames: 50, min_seconds: 1, watch_window_s: 1, max_p95_ratio: 20}
"""

PHASE = fleet_pb2.RolloutPhase
COMMITTED = common_pb2.UPDATE_STATE_COMMITTED
DOWNLOADING = common_pb2.UPDATE_STATE_DOWNLOADING
PASS = common_pb2.CanaryVerdict.OUTCOME_PASS
FAIL = common_pb2.CanaryVerdict.OUTCOME_FAIL


# ---------------------------------------------------------------------------------------------- the fleet


@dataclass
class Fleet:
    """One test's world: its controller, signing key, v1 and the devices by name."""

    ctl: Controller
    root: Path
    key: SigningKey
    v1: SignedBundle
    sites: dict[str, list[str]]
    edges: dict[str, EdgeProcess] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    baseline: dict[str, int] = field(default_factory=dict)

    def bundle(self, version: str, *, logit_shift: float = 0.0) -> SignedBundle:
        """A same-seed (canary-compatible) bundle, pushed; a ``logit_shift`` makes it regressed."""
        made = make_bundle(self.root / f"b-{version}", self.key, version=version, seed=1, logit_shift=logit_shift)
        self.ctl.push(made)
        return made

    def rollout(self, bundle: SignedBundle, waves: Sequence[str] = ("1", "100%")) -> fleet_pb2.Rollout:
        reply: fleet_pb2.Rollout = self.ctl.fleet.CreateRollout(
            fleet_pb2.CreateRolloutRequest(
                name=f"classifier-{bundle.version}",
                bundle=bundle.digest,
                selector=fleet_pb2.RolloutSelector(sites=sorted(self.sites)),
                strategy=fleet_pb2.RolloutStrategy(waves=list(waves), bake_s=0),
                on_abort="rollback",
            ),
            metadata=self.ctl.md,
            timeout=30,
        )
        return reply

    def get(self, rollout_id: str) -> fleet_pb2.Rollout:
        return self.ctl.rollout(rollout_id)

    def wait_phase(self, rollout_id: str, phase: fleet_pb2.RolloutPhase.ValueType, timeout: float) -> fleet_pb2.Rollout:
        def reached() -> fleet_pb2.Rollout | None:
            rollout = self.get(rollout_id)
            if rollout.phase == phase:
                return rollout
            terminal = (PHASE.ROLLOUT_PHASE_COMPLETED, PHASE.ROLLOUT_PHASE_ROLLED_BACK, PHASE.ROLLOUT_PHASE_ABORTED)
            assert rollout.phase not in terminal, f"rollout ended {PHASE.Name(rollout.phase)}: {rollout.message}"
            return None

        try:
            result: fleet_pb2.Rollout = wait_until(reached, timeout, f"rollout {PHASE.Name(phase)}", interval=0.3)
        except AssertionError as exc:
            rollout = self.get(rollout_id)
            rows = [(d.device_name, d.wave, d.status) for d in rollout.devices]
            raise AssertionError(f"{exc}; now {PHASE.Name(rollout.phase)} {rollout.message!r} {rows}") from None
        return result

    def events(self, name: str) -> list[telemetry_pb2.DeviceEvent]:
        reply = self.ctl.fleet.ListDeviceEvents(
            fleet_pb2.ListDeviceEventsRequest(device=name, limit=500), metadata=self.ctl.md, timeout=10
        )
        return list(reply.events)

    def desired(self, name: str) -> common_pb2.DesiredState:
        return self.ctl.device(name).desired


def apply_config(ctl: Controller) -> None:
    ctl.apply("fleet.yaml", CONFIG, timeout=10)


@contextlib.contextmanager
def fleet_on_v1(
    root: Path,
    ctl: Controller,
    sites: dict[str, list[str]],
    *,
    address_of: Callable[[str], str] | None = None,
) -> Iterator[Fleet]:
    """Enroll ``sites`` (site → device names), commit v1 on every device, record each desired revision."""
    key = ctl.trust_new_key(root / "keys")
    v1 = make_bundle(root / "b-1.0.0", key, version="1.0.0", seed=1)
    ctl.push(v1)
    apply_config(ctl)
    fleet = Fleet(ctl, root, key, v1, sites)
    tokens = {site: ctl.enrollment_token(site) for site in sites}
    plan = [(site, name) for site, names in sites.items() for name in names]

    def boot(item: tuple[str, str]) -> EdgeProcess:
        site, name = item
        address = address_of(name) if address_of is not None else ctl.address
        return start_edge(address, root / name, tokens[site], name=name, source=SOURCE, wait_online=False)

    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(len(plan)) as pool:
            started = list(pool.map(boot, plan))
        for edge in started:
            stack.callback(edge.terminate)
            fleet.edges[edge.name] = edge
        for edge in started:
            edge.wait_for(lambda s: bool(s.get("online")), 60, "first successful Sync")
        for site in sites:
            ctl.set_site_desired(site, v1.digest)
        for edge in started:
            edge.committed(v1.digest, timeout=60)
        for name in fleet.edges:

            def on_v1(n: str = name) -> common_pb2.Device | None:
                d = ctl.device(n)
                ok = d.reported.update_state == COMMITTED and d.reported.running_bundle_digest == v1.digest
                return d if ok else None

            device: common_pb2.Device = wait_until(on_v1, 20, f"controller sees {name} committed on v1")
            fleet.ids[name] = device.id
            fleet.baseline[name] = device.desired.revision
        yield fleet


class DesiredSampler:
    """Polls every device's desired bundle while a rollout runs: the desired history as an operator sees it.

    Sampling can miss a short-lived value; the revision check in the tests is the exact proof, this one
    makes a failure readable (which device, which bundle)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.seen: dict[str, set[str]] = {name: set() for name in fleet.edges}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="desired-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def sample(self) -> None:
        for name in self.seen:
            with contextlib.suppress(Exception):  # a controller restart must not end the sampling
                self.seen[name].add(self.fleet.desired(name).bundle_digest)

    def __enter__(self) -> DesiredSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()  # the last change (a revert) may share its commit with the phase the test waited for


def by_name(rollout: fleet_pb2.Rollout) -> dict[str, fleet_pb2.DeviceRolloutStatus]:
    rows = {d.device_name: d for d in rollout.devices}
    assert len(rows) == len(rollout.devices), f"a device is listed twice: {[d.device_name for d in rollout.devices]}"
    return rows


def downloads_of(events: Sequence[telemetry_pb2.DeviceEvent], digest: str) -> int:
    """How many times the device started downloading ``digest`` (once per assignment it acted on)."""
    return sum(
        1
        for e in events
        if e.kind == telemetry_pb2.DeviceEvent.KIND_UPDATE_STATE
        and e.bundle_digest == digest
        and e.to_state == DOWNLOADING
    )


def verdicts_of(events: Sequence[telemetry_pb2.DeviceEvent], digest: str) -> list[common_pb2.CanaryVerdict]:
    return [
        e.verdict
        for e in events
        if e.kind == telemetry_pb2.DeviceEvent.KIND_CANARY_VERDICT and e.verdict.candidate_digest == digest
    ]


def assert_assigned_once(fleet: Fleet, rollout: fleet_pb2.Rollout, bundle: SignedBundle) -> None:
    """Every device: one desired revision past v1, naming this rollout and its wave; one download of v2."""
    rows = by_name(rollout)
    for name in fleet.edges:
        desired = fleet.desired(name)
        assert desired.revision == fleet.baseline[name] + 1, (name, fleet.baseline[name], desired)
        assert desired.bundle_digest == bundle.digest
        assert desired.rollout_id == rollout.id
        assert desired.reason == f"rollout {rollout.id} wave {rows[name].wave}"
        assert downloads_of(fleet.events(name), bundle.digest) == 1, name


def fleetctl(ctl: Controller, *args: str) -> str:
    env = {
        **os.environ,
        "EDGEFLEET_CONTROLLER": ctl.address,
        "EDGEFLEET_TOKEN": ctl.admin_token,
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("FORCE_COLOR", None)
    exe = Path(sys.executable).with_name("fleetctl")
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


# ---------------------------------------------------------------------------------------------- tests


def test_a_good_bundle_rolls_across_two_sites_wave_by_wave(tmp_path: Path) -> None:
    sites = {"north": ["north-1", "north-2"], "south": ["south-1", "south-2"]}
    with start_controller(tmp_path / "ctl") as ctl, fleet_on_v1(tmp_path, ctl, sites) as fleet:
        v2 = fleet.bundle("2.0.0")
        created = fleet.rollout(v2)
        assert created.waves_total == 2 and list(created.strategy.waves) == ["1", "100%"]

        done = fleet.wait_phase(created.id, PHASE.ROLLOUT_PHASE_COMPLETED, 120)
        for edge in fleet.edges.values():
            edge.committed(v2.digest, timeout=10)
        rows = by_name(done)
        assert sorted(rows) == sorted(fleet.edges)
        assert {d.status for d in done.devices} == {"succeeded"}, [(d.device_name, d.status) for d in done.devices]
        for site, names in sites.items():
            # per site: the canary wave moved one device, the second wave the rest
            assert sorted(rows[n].wave for n in names) == [1, 2], (site, [(n, rows[n].wave) for n in names])
            assert all(rows[n].site == site and rows[n].previous_bundle_digest == fleet.v1.digest for n in names)
        assert_assigned_once(fleet, done, v2)

        for name, row in rows.items():
            reported = fleet.ctl.device(name).reported
            assert reported.running_bundle_digest == v2.digest and reported.update_state == COMMITTED
            verdicts = verdicts_of(fleet.events(name), v2.digest)
            canary = [v for v in verdicts if v.phase == "canary"]
            assert [v.outcome for v in canary] == [PASS], (name, verdicts)
            assert canary[0].baseline_digest == fleet.v1.digest and canary[0].frames >= 50
            assert row.verdict.candidate_digest == v2.digest and row.verdict.outcome == PASS

        # wave 2 of a site started only after its canary device had committed v2
        for names in sites.values():
            first = next(n for n in names if rows[n].wave == 1)
            second = next(n for n in names if rows[n].wave == 2)
            committed_at = min(
                e.at.ToDatetime()
                for e in fleet.events(first)
                if e.bundle_digest == v2.digest and e.to_state == COMMITTED
            )
            assert rows[second].assigned_at.ToDatetime() >= committed_at, (first, second)

        out = fleetctl(fleet.ctl, "rollout", "status", done.id)
        assert "completed" in out and done.id in out
        assert "wave 1/2 (1): 2 assigned, 2 succeeded, 0 failed" in out, out
        assert "wave 2/2 (100%): 2 assigned, 2 succeeded, 0 failed" in out, out
        for name in fleet.edges:
            line = next(line for line in out.splitlines() if name in line)
            assert "succeeded" in line and "pass p95 " in line and " ms psi " in line and "n=" in line, line


def test_a_regressed_bundle_fails_on_the_canary_and_the_rollout_rolls_back(tmp_path: Path) -> None:
    sites = {"lab": ["lab-1", "lab-2", "lab-3"]}
    with start_controller(tmp_path / "ctl") as ctl, fleet_on_v1(tmp_path, ctl, sites) as fleet:
        bad = fleet.bundle("2.0.0-regressed", logit_shift=1.0)
        with DesiredSampler(fleet) as sampler:
            created = fleet.rollout(bad)
            done = fleet.wait_phase(created.id, PHASE.ROLLOUT_PHASE_ROLLED_BACK, 90)
        rows = by_name(done)
        canaries = [n for n, row in rows.items() if row.wave == 1]
        assert len(canaries) == 1, rows
        (canary,) = canaries
        others = sorted(set(fleet.edges) - {canary})
        assert "wave 1 (canary): 1 of 1 devices failed" in done.message, done.message
        assert rows[canary].status == "rolled_back"

        # the canary's verdict: FAIL, with its reasons and numbers, on the controller and in its events
        reported = fleet.ctl.device(canary).reported
        verdict = reported.last_verdict
        assert verdict.outcome == FAIL and verdict.phase == "canary"
        assert verdict.candidate_digest == bad.digest and verdict.baseline_digest == fleet.v1.digest
        assert verdict.frames >= 50 and verdict.candidate_latency.count == verdict.frames
        # 50 frames are too few for PSI: the verdict core uses the two-sample KS test instead
        assert verdict.ks_p_value < 0.01 and verdict.ks_statistic > 0.5
        assert any(r.startswith("confidence drift") for r in verdict.reasons), verdict.reasons
        assert rows[canary].verdict.outcome == FAIL and list(rows[canary].verdict.reasons) == list(verdict.reasons)
        assert [v.outcome for v in verdicts_of(fleet.events(canary), bad.digest)] == [FAIL]

        # the canary device is back on v1 (it never left: the shadow canary rejected v2) and so is its
        # desired state: assigned once, reverted once
        fleet.edges[canary].committed(fleet.v1.digest, timeout=10)
        assert reported.running_bundle_digest == fleet.v1.digest
        desired = fleet.desired(canary)
        assert desired.bundle_digest == fleet.v1.digest and desired.revision == fleet.baseline[canary] + 2
        assert desired.reason.startswith(f"rollback of {done.id}"), desired.reason
        assert sampler.seen[canary] == {bad.digest, fleet.v1.digest}

        # no other device ever had the regressed bundle as desired
        for name in others:
            assert rows[name].wave == 0 and rows[name].status == "pending", (name, rows[name])
            desired = fleet.desired(name)
            assert desired.revision == fleet.baseline[name], (name, desired)
            assert desired.bundle_digest == fleet.v1.digest
            assert sampler.seen[name] == {fleet.v1.digest}, (name, sampler.seen[name])
            assert not [e for e in fleet.events(name) if e.bundle_digest == bad.digest], name
            status = fleet.edges[name].committed(fleet.v1.digest, timeout=5)
            assert status["update"]["candidate"] is None and status["update"]["rejected"] is None

        out = fleetctl(fleet.ctl, "rollout", "status", done.id)
        assert "rolled_back" in out and "wave 1/2 (1): 1 assigned, 0 succeeded, 1 failed" in out, out
        line = next(line for line in out.splitlines() if canary in line)
        assert "rolled_back" in line and "fail p95 " in line and f"n={verdict.frames}" in line, line


def test_a_controller_killed_mid_rollout_resumes_it_after_a_restart(tmp_path: Path) -> None:
    sites = {"east": ["east-1", "east-2"], "west": ["west-1"]}
    data_dir = tmp_path / "ctl"
    with contextlib.ExitStack() as outer:
        ctl = outer.enter_context(start_controller(data_dir))
        fleet = outer.enter_context(fleet_on_v1(tmp_path, ctl, sites))
        v2 = fleet.bundle("2.0.0")
        created = fleet.rollout(v2)
        canaries = [d.device_name for d in created.devices if d.wave == 1]
        assert len(canaries) == 2 and "west-1" in canaries, canaries
        east_canary = next(n for n in canaries if n.startswith("east"))
        fleet.edges[east_canary].wait_for(
            lambda s: s["update"]["state"] == "canary" and s["update"]["candidate"] == v2.digest,
            60,
            "v2 in canary",
        )

        before = fleet.get(created.id)
        assert before.phase == PHASE.ROLLOUT_PHASE_RUNNING and before.wave == 1
        assert [d.status for d in before.devices if d.wave == 0] == ["pending"]
        ctl.proc.send_signal(signal.SIGKILL)
        ctl.proc.wait(10)
        # the device finishes its canary with the controller gone
        fleet.edges[east_canary].committed(v2.digest, timeout=60)

        restarted = outer.enter_context(start_controller(data_dir, port=ctl.port))
        fleet.ctl = restarted
        # same data dir = same replica id: the restarted controller takes its reconciler lease back at once
        done = fleet.wait_phase(created.id, PHASE.ROLLOUT_PHASE_COMPLETED, 120)
        rows = by_name(done)
        assert {d.status for d in done.devices} == {"succeeded"}
        assert sorted((rows[n].site, rows[n].wave) for n in rows) == [("east", 1), ("east", 2), ("west", 1)]
        for edge in fleet.edges.values():
            edge.committed(v2.digest, timeout=10)
        assert_assigned_once(fleet, done, v2)


def test_a_canary_device_offline_mid_canary_reports_when_back_and_the_rollout_completes(tmp_path: Path) -> None:
    sites = {"farm": ["farm-1", "farm-2"]}
    with contextlib.ExitStack() as stack:
        ctl = stack.enter_context(start_controller(tmp_path / "ctl"))
        proxies = {name: stack.enter_context(FaultProxy(ctl.port)) for name in sites["farm"]}
        fleet = stack.enter_context(fleet_on_v1(tmp_path, ctl, sites, address_of=lambda n: proxies[n].address))
        v2 = fleet.bundle("2.0.0")
        created = fleet.rollout(v2)
        (canary,) = [d.device_name for d in created.devices if d.wave == 1]
        (other,) = [n for n in fleet.edges if n != canary]
        edge = fleet.edges[canary]
        edge.wait_for(
            lambda s: s["update"]["state"] == "canary" and s["update"]["candidate"] == v2.digest, 60, "v2 in canary"
        )
        proxies[canary].blackhole = True

        # offline: the canary passes, the watch window passes, v2 is committed, all on the device alone
        status = edge.committed(v2.digest, timeout=60)
        assert status["last_verdict"]["candidate"] == v2.digest and status["last_verdict"]["outcome"] == "pass"
        seen = fleet.ctl.device(canary).reported
        assert not (seen.last_verdict.candidate_digest == v2.digest and seen.last_verdict.outcome == PASS), seen
        assert verdicts_of(fleet.events(canary), v2.digest) == []
        waiting = fleet.get(created.id)
        assert waiting.phase == PHASE.ROLLOUT_PHASE_RUNNING and waiting.wave == 1
        assert by_name(waiting)[other].status == "pending"
        assert fleet.desired(other).revision == fleet.baseline[other]

        proxies[canary].blackhole = False
        done = fleet.wait_phase(created.id, PHASE.ROLLOUT_PHASE_COMPLETED, 120)
        verdicts = verdicts_of(fleet.events(canary), v2.digest)
        assert [v.outcome for v in verdicts if v.phase == "canary"] == [PASS], verdicts
        assert {d.status for d in done.devices} == {"succeeded"}
        assert by_name(done)[other].wave == 2
        fleet.edges[other].committed(v2.digest, timeout=10)
        assert_assigned_once(fleet, done, v2)
