"""The fleet demo: an embedded controller and one site of edge-runtime processes on synthetic cameras.

What it shows, end to end and for real (OS processes, gRPC over loopback, SQLite, onnxruntime):

1. a publisher signs three bundles of one classifier: v1, v2 (same weights, new version) and v3, whose
   confidences are shifted by construction (a "retrained" model that drifted);
2. the controller trusts the publisher key, stores the bundles, applies a fleet config with a short canary;
3. four devices enroll with a site-scoped token and install v1;
4. a rollout v1 → v2 in waves ``[1, 50%, 100%]`` passes every canary and completes;
5. a rollout v2 → v3 fails its canary on the first device (drift, with its numbers), aborts at once and rolls
   back: the canary device is on v2 again and no other device ever received v3;
6. the operator tries v3 again: refused, with the earlier canary verdict (``--force`` would override it);
7. config rollouts through the same canary: a SiteConfig raising ``inference.conf_threshold`` to 0.99 (every
   classification dropped) is staged and rolled out by a Rollout manifest in the same apply; its canary device
   compares the new config with the current one in shadow on the same frames, fails on agreement and is put
   back; a SiteConfig with a harmless threshold then passes wave by wave and goes live;
8. a fleet status table, the rollouts with their verdicts, and telemetry percentiles are printed.

Everything lives under ``demo-out/fleet/`` and every process is stopped at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from edgefleet.contract.signing import SigningKey, generate_keypair
from edgefleet.v1 import common_pb2, fleet_pb2, fleet_pb2_grpc
from edgefleet_testing.bundles import SignedBundle
from edgefleet_testing.bundles import make_bundle as make_signed_bundle
from edgefleet_testing.fleet import Controller, EdgeProcess, start_controller, start_edge, terminate_all
from edgefleet_testing.waiting import wait_until
from fleetctl.output import health_name, update_state_name
from fleetctl.rollout_cmds import phase_name

SITE = "warehouse-a"
DEVICES = ("dock-1", "dock-2", "dock-3", "dock-4")
POLL_S = 0.5  # the demo polls the controller every half second, as an operator's script would

FLEET_CONFIG = """\
apiVersion: edgefleet.io/v1
kind: FleetConfig
metadata: {name: default}
spec:
  config:
    sla: {latency_ms: 50}
    canary:
      min_frames: 100       # live frames the candidate must see in shadow
      min_seconds: 3
      deadline_s: 60
      watch_window_s: 4     # post-promotion watch before commit
      headroom: 0.2
    telemetry: {window_s: 5}
---
apiVersion: edgefleet.io/v1
kind: SiteConfig
metadata: {name: warehouse-a, site: warehouse-a}
spec:
  config:
    review: {sample_rate: 0.01, low_confidence_below: 0.3}
"""


@dataclass
class Fleet:
    """The demo's fleet on the shared process harness: the controller, the devices, and the console."""

    root: Path
    console: Console
    ctl: Controller | None = None
    edges: list[EdgeProcess] = field(default_factory=list)

    @property
    def controller(self) -> Controller:
        assert self.ctl is not None, "the controller is started in step 2"
        return self.ctl

    @property
    def fleet(self) -> fleet_pb2_grpc.FleetServiceStub:
        return self.controller.fleet

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return self.controller.md

    def start_device(self, name: str, token: str) -> None:
        edge = start_edge(
            self.controller.address,
            self.root / "devices" / name,
            token,
            name=name,
            source="synthetic:10",
            timeout=90,
            wait_online=False,
        )
        self.edges.append(edge)

    def devices(self) -> list[common_pb2.Device]:
        return self.controller.devices(SITE)

    def rollout(self, rollout_id: str) -> fleet_pb2.Rollout:
        return self.controller.rollout(rollout_id)


def make_bundle(root: Path, key: SigningKey, version: str, *, logit_shift: float = 0.0) -> SignedBundle:
    # Same seed: v1, v2 and v3 share their weights; v3's logits are shifted, so its confidences drift.
    return make_signed_bundle(
        root / "bundles" / version,
        key,
        version=version,
        seed=7,
        name="dock-classifier",
        labels=("empty", "pallet", "forklift", "person"),
        sla_ms=50,
        providers=("tensorrt", "cuda", "cpu"),
        logit_shift=logit_shift,
    )


def follow_rollout(fleet: Fleet, rollout_id: str, terminal: set[Any], timeout: float) -> fleet_pb2.Rollout:
    """Print each change of phase, wave or device status until the rollout is terminal."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        ro = fleet.rollout(rollout_id)
        head = f"phase {phase_name(ro.phase)}, wave {ro.wave}/{ro.waves_total}"
        if seen.get("") != head:
            seen[""] = head
            fleet.console.print(f"  [cyan]{rollout_id}[/cyan] {head}" + (f" — {ro.message}" if ro.message else ""))
        for d in ro.devices:
            line = f"{d.status} ({update_state_name(d.update_state)})"
            if seen.get(d.device_id) != line and d.status != "pending":
                seen[d.device_id] = line
                fleet.console.print(f"    {d.device_name:8} wave {d.wave}: {line}", highlight=False)
        if ro.phase in terminal:
            return ro
        if time.monotonic() > deadline:
            raise TimeoutError(f"rollout {rollout_id} still {phase_name(ro.phase)} after {timeout:.0f} s")
        time.sleep(0.5)


def verdict_text(v: common_pb2.CanaryVerdict) -> str:
    """The numbers of a verdict: the canary, and the watch window after promotion, compare candidate and
    baseline (the previous bundle, or the same bundle under the previous config) on the same frames."""
    if not v.outcome:
        return "-"
    outcome = common_pb2.CanaryVerdict.Outcome.Name(v.outcome).removeprefix("OUTCOME_").lower()
    text = (
        f"{v.phase or 'canary'} {outcome}: {v.frames} frames, p95 {v.candidate_latency.p95_ms:.2f} ms vs "
        f"{v.baseline_latency.p95_ms:.2f} ms (budget {v.latency_budget_ms:.1f} ms)"
    )
    if v.phase == "watch":
        return text
    drift = f"PSI {v.psi:.3f}" if v.psi else f"KS D {v.ks_statistic:.2f} (p {v.ks_p_value:.2g})"
    return f"{text}, {drift}, agreement {v.agreement:.2f}"


def site_config_rollout(threshold: float, name: str) -> str:
    """A SiteConfig change and the Rollout that canaries it, in one file (``fleetctl apply -f`` of it)."""
    return f"""\
apiVersion: edgefleet.io/v1
kind: SiteConfig
metadata: {{name: {SITE}, site: {SITE}}}
spec:
  config:
    review: {{sample_rate: 0.01, low_confidence_below: 0.3}}
    inference: {{conf_threshold: {threshold}}}
---
apiVersion: edgefleet.io/v1
kind: Rollout
metadata: {{name: {name}}}
spec:
  target: {{config: SiteConfig/{SITE}}}
  selector: {{sites: [{SITE}]}}
  strategy: {{waves: [1, "50%", "100%"], bake_s: 1}}
  on_abort: rollback
"""


def apply_rollout_file(fleet: Fleet, name: str, content: str) -> str:
    reply = fleet.controller.apply(name, content)
    for line in reply.results:
        fleet.console.print(f"  {line}", highlight=False)
    if len(reply.rollout_ids) != 1:
        raise RuntimeError(f"{name}: expected one rollout, got {list(reply.rollout_ids)}")
    rollout_id: str = reply.rollout_ids[0]
    return rollout_id


def config_rollout(fleet: Fleet, threshold: float, terminal: set[Any], expect: int) -> fleet_pb2.Rollout:
    """Apply a SiteConfig threshold with its Rollout, follow it, and insist it ends in phase ``expect``."""
    name = f"threshold-{threshold:g}".replace(".", "")
    rollout_id = apply_rollout_file(fleet, f"{name}.yaml", site_config_rollout(threshold, name))
    ro = follow_rollout(fleet, rollout_id, terminal, 150)
    if ro.phase != expect:
        raise RuntimeError(
            f"config rollout {threshold:g} ended {phase_name(ro.phase)}, expected {phase_name(expect)}: {ro.message}"
        )
    return ro


def run(root: Path, console: Console) -> int:
    started = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    fleet = Fleet(root, console)
    with contextlib.ExitStack() as stack:
        console.rule("[bold]1. publisher: three signed bundles")
        key = generate_keypair("demo-publisher")
        v1 = make_bundle(root, key, "1.0.0")
        v2 = make_bundle(root, key, "1.1.0")
        v3 = make_bundle(root, key, "2.0.0-drifted", logit_shift=1.5)
        for b in (v1, v2, v3):
            console.print(f"  dock-classifier@{b.version}  {b.digest[:19]}…  {b.archive.stat().st_size} bytes")

        console.rule("[bold]2. controller: trust the publisher, store bundles, apply the fleet config")
        fleet.ctl = stack.enter_context(start_controller(root / "controller"))
        # Unwound last in, first out: every device is stopped (all at once), then the controller.
        stack.callback(lambda: terminate_all(fleet.edges))
        console.print(f"  controller on {fleet.controller.address} (SQLite + blobs in {root / 'controller'})")
        fleet.controller.trust(key)
        for b in (v1, v2, v3):
            fleet.controller.push(b)
        applied = fleet.controller.apply("fleet.yaml", FLEET_CONFIG, timeout=10)
        for line in applied.results:
            console.print(f"  {line}")

        console.rule(f"[bold]3. site {SITE}: {len(DEVICES)} cameras enroll and install v1")
        token = fleet.controller.enrollment_token(SITE)
        starters = [threading.Thread(target=fleet.start_device, args=(name, token)) for name in DEVICES]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        wait_until(lambda: len(fleet.devices()) == len(DEVICES), 60, "all devices enrolled", POLL_S)
        fleet.controller.set_site_desired(SITE, v1.digest)
        wait_until(
            lambda: all(d.reported.running_bundle_digest == v1.digest for d in fleet.devices()),
            90,
            "v1 committed everywhere",
            POLL_S,
        )
        console.print(f"  all {len(DEVICES)} devices run v1 ({time.monotonic() - started:.0f} s)")

        terminal = {
            fleet_pb2.ROLLOUT_PHASE_COMPLETED,
            fleet_pb2.ROLLOUT_PHASE_ABORTED,
            fleet_pb2.ROLLOUT_PHASE_ROLLED_BACK,
        }
        strategy = fleet_pb2.RolloutStrategy(waves=["1", "50%", "100%"], bake_s=2)

        console.rule("[bold]4. rollout v1 → v2 in waves [1, 50%, 100%]")
        good = fleet.fleet.CreateRollout(
            fleet_pb2.CreateRolloutRequest(
                name="v2", bundle=v2.digest, selector=fleet_pb2.RolloutSelector(sites=[SITE]), strategy=strategy
            ),
            metadata=fleet.md,
            timeout=10,
        )
        for line in good.admission:
            console.print(f"  admission: {line}")
        good = follow_rollout(fleet, good.id, terminal, 150)
        if good.phase != fleet_pb2.ROLLOUT_PHASE_COMPLETED:
            raise RuntimeError(f"rollout v2 ended {phase_name(good.phase)}: {good.message}")

        console.rule("[bold]5. rollout v2 → v3 (drifted by construction)")
        bad = fleet.fleet.CreateRollout(
            fleet_pb2.CreateRolloutRequest(
                name="v3",
                bundle=v3.digest,
                selector=fleet_pb2.RolloutSelector(sites=[SITE]),
                strategy=strategy,
                on_abort="rollback",
            ),
            metadata=fleet.md,
            timeout=10,
        )
        bad = follow_rollout(fleet, bad.id, terminal, 120)
        canary = [d for d in bad.devices if d.wave == 1]
        assigned = [d for d in bad.devices if d.status != "pending"]
        if bad.phase != fleet_pb2.ROLLOUT_PHASE_ROLLED_BACK or len(canary) != 1 or len(assigned) != 1:
            raise RuntimeError(
                f"rollout v3 should roll back after one canary; got {phase_name(bad.phase)}: {bad.message}"
            )
        canary_id = canary[0].device_id
        wait_until(
            lambda: next(d for d in fleet.devices() if d.id == canary_id).reported.running_bundle_digest == v2.digest,
            60,
            "the canary device back on v2",
            POLL_S,
        )
        verdict = next(d for d in fleet.devices() if d.id == canary_id).reported.last_verdict
        console.print(f"  canary {canary[0].device_name}: {verdict_text(verdict)}", highlight=False)
        for reason in verdict.reasons:
            console.print(f"    - {reason}", highlight=False)
        others_saw_v3 = []
        for d in fleet.devices():
            if d.id == canary_id:
                continue
            events = fleet.fleet.ListDeviceEvents(
                fleet_pb2.ListDeviceEventsRequest(device=d.id, limit=500), metadata=fleet.md, timeout=10
            ).events
            if d.desired.bundle_digest == v3.digest or any(e.bundle_digest == v3.digest for e in events):
                others_saw_v3.append(d.name)
        if others_saw_v3:
            raise RuntimeError(f"devices other than the canary received v3: {others_saw_v3}")
        console.print(f"  no other device ever received v3; {canary[0].device_name} serves v2 again")

        console.rule("[bold]6. the operator tries v3 again")
        try:
            fleet.fleet.CreateRollout(
                fleet_pb2.CreateRolloutRequest(
                    name="v3-again", bundle=v3.digest, selector=fleet_pb2.RolloutSelector(sites=[SITE])
                ),
                metadata=fleet.md,
                timeout=10,
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            console.print(f"  refused: {exc.code().name}: {exc.details()}", highlight=False)
        else:
            raise RuntimeError("a second rollout of the bundle that failed its canary was accepted")

        console.rule("[bold]7. config rollouts: a threshold that drops every classification, then a good one")
        bad_config = config_rollout(fleet, 0.99, terminal, fleet_pb2.ROLLOUT_PHASE_ROLLED_BACK)
        (config_canary,) = [d for d in bad_config.devices if d.wave == 1]
        console.print(f"  canary {config_canary.device_name}: {verdict_text(config_canary.verdict)}", highlight=False)
        for reason in config_canary.verdict.reasons:
            console.print(f"    - {reason}", highlight=False)
        never_config = sorted(d.device_name for d in bad_config.devices if d.status == "pending")
        console.print(f"  the failing config never reached: {', '.join(never_config)}", highlight=False)
        good_config = config_rollout(fleet, 0.05, terminal, fleet_pb2.ROLLOUT_PHASE_COMPLETED)

        console.rule("[bold]8. fleet status")
        print_status(fleet, {v1.digest: "1.0.0", v2.digest: "1.1.0", v3.digest: "2.0.0-drifted"})
        for ro in (good, bad, bad_config, good_config):
            console.print(
                f"rollout {ro.id} ({ro.name}): [bold]{phase_name(ro.phase)}[/bold] {ro.message}", highlight=False
            )
            for st in ro.devices:
                if st.status != "pending":
                    console.print(
                        f"  wave {st.wave} {st.device_name:8} {st.status:12} {verdict_text(st.verdict)}",
                        highlight=False,
                    )
            never = sorted(st.device_name for st in ro.devices if st.status == "pending")
            if never:
                console.print(f"  never assigned: {', '.join(never)}", highlight=False)
        print_telemetry(fleet)
        console.print(f"[green]demo finished in {time.monotonic() - started:.0f} s[/green]")
        return 0


def print_status(fleet: Fleet, versions: dict[str, str]) -> None:
    table = Table(title=f"site {SITE}", title_justify="left")
    for col in ("DEVICE", "HEALTH", "RUNNING", "UPDATE", "PROVIDER", "HARDWARE", "LAST VERDICT"):
        table.add_column(col)
    for d in fleet.devices():
        r = d.reported
        outcome = (
            common_pb2.CanaryVerdict.Outcome.Name(r.last_verdict.outcome).removeprefix("OUTCOME_").lower()
            if r.last_verdict.outcome
            else "-"
        )
        table.add_row(
            d.name,
            health_name(d.health),
            versions.get(r.running_bundle_digest, r.running_bundle_digest[:19]),
            update_state_name(r.update_state),
            ",".join(p.removesuffix("ExecutionProvider") for p in r.active_providers) or "-",
            d.hardware.hardware_class or "-",
            outcome,
        )
    fleet.console.print(table)


def print_telemetry(fleet: Fleet) -> None:
    with contextlib.suppress(grpc.RpcError):
        reply = fleet.fleet.QueryTelemetry(
            fleet_pb2.QueryTelemetryRequest(group_by="device"), metadata=fleet.md, timeout=10
        )
        names = {d.id: d.name for d in fleet.devices()}
        table = Table(title="telemetry (merged DDSketches, whole run)", title_justify="left")
        for col in ("DEVICE", "FRAMES", "P50 ms", "P95 ms", "P99 ms", "FPS", "CPU °C"):
            table.add_column(col, justify="right")
        for row in sorted(reply.rows, key=lambda r: names.get(r.key, r.key)):
            temp = next((s for s in row.sensors if s.name == "cpu_temp"), None)
            table.add_row(
                names.get(row.key, row.key),
                str(row.frames),
                f"{row.latency_e2e.p50_ms:.2f}",
                f"{row.latency_e2e.p95_ms:.2f}",
                f"{row.latency_e2e.p99_ms:.2f}",
                f"{row.fps:.1f}",
                "missing" if temp is None or temp.missing else f"{temp.value:.0f}",
            )
        if reply.rows:
            fleet.console.print(table)
