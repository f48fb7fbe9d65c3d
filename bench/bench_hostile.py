"""Benchmark: does the controller stay responsive while 50 hostile clients send worst-case payloads?

``run(quick=False) -> list[dict]`` returns the rows ``python -m bench`` tabulates; ``python
bench/bench_hostile.py [--quick]`` prints them. One real ``edgefleet-controller serve`` process (loopback gRPC,
SQLite, ``--log-level info`` as in production) serves two phases of the same length in the same run
(30 s each; 8 s with ``--quick``; ``BENCH_HOSTILE_S`` overrides):

(A) baseline: 50 well-behaved clients, closed loop at full speed: 45 enrolled devices cycling Sync (answered at
    once with the site's desired bundle), ReportEvent (2 alerts), UploadTelemetry (5 valid windows, acked), and
    5 viewers cycling ListDevices (page of 100) and a fleet-wide QueryTelemetry of the last 10 s.
(B) hostile: 50 clients, closed loop at full speed, each call with a 10 s deadline (the loops end by
    themselves): unauthenticated Enroll with a 6 MB name (over the 2 MiB request limit: gRPC refuses it
    unparsed); payloads just under the limit, which the server parses and checks field by field: Enroll with
    a valid (5-use) token and a 2 MB ``cpu_model``, Sync with a 2 MB ``reported.details``, ReportEvent of
    6,500 fresh events (13x the cap); UploadTelemetry of windows with bin offset -2^31, gamma 0 and 1.5,
    NaN ``window_s``, 500,000 bins, seq 2^63; GetBundle
    and GetDevice with 20 KB refs; bad and garbage bearer tokens; names with NUL, U+202E and ``../``.

The clients are asyncio tasks in one child process at ``nice 10`` (on 2 cores the load generator must not
starve the controller, or the figure measures the client), with requests serialised once. A second child
process (nice 0) probes throughout: grpc.health.v1 Check every 20 ms, and a normal Sync of a separate probe
device every 100 ms; a probe past its 10 s deadline counts as 10 s. Rows: p99 health latency and p99 Sync
latency, hostile over baseline; controller RSS peak and log bytes written per phase (refusals are logged;
the log must stay bounded). The controller's and the clients' CPU seconds are in the measured text.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import psutil  # noqa: E402
from benchlib import Row, row, run_alone  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from hostile_workload import CALL_DEADLINE_S, CLIENTS, DEVICE, Clients, bearer, channels, reported  # noqa: E402

from edgefleet.v1 import device_pb2, fleet_pb2  # noqa: E402


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Health Check every 20 ms and a normal Sync every 100 ms, each sequential on its own channel."""
    health_ch, sync_ch = channels(spec["address"], 2)
    check = health_pb2_grpc.HealthStub(health_ch).Check
    sync: Any = sync_ch.unary_unary(DEVICE + "Sync")
    sync_req = device_pb2.SyncRequest(known_revision=0, wait_s=1, reported=reported(spec["bundle"]))
    raw = sync_req.SerializeToString()
    meta = bearer(spec["probe_cred"])
    deadline = time.monotonic() + spec["seconds"]
    out: dict[str, list[float]] = {"health_ms": [], "sync_ms": []}
    failures: Counter[str] = Counter()

    async def probe(name: str, every_s: float, call: Callable[[], Awaitable[Any]]) -> None:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                failures[f"{name} {exc.code().name}"] += 1
            took = time.perf_counter() - t0
            out[name].append(took * 1000)
            await asyncio.sleep(max(0.0, every_s - took))

    await asyncio.gather(
        probe("health_ms", 0.02, lambda: check(health_pb2.HealthCheckRequest(), timeout=CALL_DEADLINE_S)),
        probe("sync_ms", 0.1, lambda: sync(raw, metadata=meta, timeout=CALL_DEADLINE_S)),
    )
    await health_ch.close()
    await sync_ch.close()
    return {**out, "failures": dict(failures)}


def _child_main(role: str, spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    if role == "load":
        os.nice(10)
        result = asyncio.run(Clients(spec).run())
    else:
        result = asyncio.run(_probe(spec))
    print("result " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- parent side


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _controller_class() -> type[Any]:
    from edgefleet_testing.controller import ControllerProcess

    class CountingController(ControllerProcess):
        """The test harness's controller process, its stderr (the JSON log) counted in bytes, not kept."""

        log_bytes = 0

        def _read_stderr(self, stream: object) -> None:
            for line in stream:  # type: ignore[attr-defined]
                self.log_bytes += len(line.encode())
                if len(self.stderr_lines) < 200:
                    self.stderr_lines.append(line[:300])

    return CountingController


def _spawn(role: str, spec: dict[str, Any], work: Path) -> subprocess.Popen[str]:
    path = work / f"{role}-{spec['mode']}.json"
    path.write_text(json.dumps(spec))
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--role", role, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
    )


def _result(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout_s)
    for line in out.splitlines():
        if line.startswith("result "):
            parsed: dict[str, Any] = json.loads(line[len("result ") :])
            return parsed
    raise RuntimeError(f"bench child exited {proc.returncode} without a result")


def _phase(ctrl: Any, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run one phase (load + probe children); sample the controller's RSS; count its log and CPU."""
    process = psutil.Process(ctrl.pid)
    peak = [process.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak.append(process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    log0, cpu0 = ctrl.log_bytes, sum(process.cpu_times()[:2])
    sampler.start()
    load = _spawn("load", spec, work)
    time.sleep(1.0)  # the load is running before the first probe
    probe = _spawn("probe", {**spec, "seconds": spec["seconds"] - 1.0}, work)
    try:
        probed = _result(probe, spec["seconds"] + 60)
        loaded = _result(load, spec["seconds"] + 60)
    finally:
        for p in (probe, load):
            if p.poll() is None:
                p.kill()
                p.wait(10)
        stop.set()
        sampler.join(5)
    time.sleep(1.0)  # the last log lines of the phase; what the heap keeps once its calls are gone
    every = max(1, len(peak) // 8)
    _say(f"controller RSS during the phase, MB: {' '.join(f'{r / 1e6:.0f}' for r in peak[::every])}")
    return {
        "rss_end": process.memory_info().rss,
        **probed,
        **loaded,
        "rss_peak": max(peak),
        "log_bytes": ctrl.log_bytes - log0,
        "ctrl_cpu_s": sum(process.cpu_times()[:2]) - cpu0,
    }


async def _setup(ctrl: Any, work: Path) -> dict[str, Any]:
    from telemetry_workload import PRESENT_SENSORS, detector_window

    from edgefleet.contract.signing import generate_keypair
    from edgefleet_testing.controller import connected, publish_bundle

    key = generate_keypair("bench-publisher")
    archive = publish_bundle(work, key)
    async with connected(ctrl) as c:
        await c.trust(key)
        bundle = (await c.push(archive)).bundle.digest
        creds = await c.enroll_many("bench-site", [f"dev-{i}" for i in range(CLIENTS)])
        _, probe_cred = await c.enroll("bench-site", "probe")
        await c.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(site="bench-site", bundle=bundle), metadata=c.admin
        )
        _, viewer = await c.operator_token("viewer", "bench-viewer")
        enroll_token = await c.enrollment_token("bench-site", max_uses=5)  # bounds what a 2 MB enrol could store
        names_token = await c.enrollment_token("bench-site")
    window = detector_window(
        0, started_at=datetime.now(UTC), bundle_digest=bundle, provider="CPUExecutionProvider", sensors=PRESENT_SENSORS
    )
    return {
        "address": ctrl.address,
        "bundle": bundle,
        "creds": creds,
        "probe_cred": probe_cred,
        "viewer": viewer,
        "enroll_token": enroll_token,
        "names_token": names_token,
        "window_hex": window.SerializeToString().hex(),
    }


def _calls_text(calls: dict[str, dict[str, int]]) -> str:
    return "; ".join(
        f"{kind}: " + ", ".join(f"{n} {code}" for code, n in codes.items()) for kind, codes in calls.items()
    )


def _rows(base: dict[str, Any], hostile: dict[str, Any], seconds: float) -> list[Row]:
    def latency(name: str) -> tuple[float, str]:
        h = hostile[name]
        return _percentile(h, 99), f"p50 {_percentile(h, 50):.1f} / p95 {_percentile(h, 95):.1f} / n {len(h)}"

    def load_text(phase: dict[str, Any]) -> str:
        calls = sum(sum(codes.values()) for codes in phase["calls"].values())
        return (
            f"{calls} calls in {phase['seconds']:.0f} s; controller CPU {phase['ctrl_cpu_s']:.1f} s, "
            f"clients CPU {phase['cpu_s']:.1f} s (nice 10)"
        )

    rows: list[Row] = []
    goal_ratio = 3.0
    for name, label in (("health_ms", "grpc health Check"), ("sync_ms", "a normal device Sync")):
        p99, spread = latency(name)
        b99 = _percentile(base[name], 99)
        failures = {k: v for k, v in hostile["failures"].items() if k.startswith(name)}
        rows.append(
            row(
                f"hostile.p99_{name.removesuffix('_ms')} ({label}, {CLIENTS} clients, {seconds:.0f} s)",
                f"p99 {p99:.1f} ms ({spread}; failed {sum(failures.values())}) under hostile load: "
                + load_text(hostile),
                f"p99 {b99:.1f} ms (p50 {_percentile(base[name], 50):.1f}) under well-behaved load: " + load_text(base),
                p99 / b99,
                f"<= {goal_ratio:.0f}x well-behaved, no probe failed",
                p99 <= goal_ratio * b99 and not failures,
            )
        )
    from edgefleet_controller.server import MAX_RECEIVE_BYTES

    # Every hostile call may be in flight with a request at the server's limit, held ~3 times (gRPC's
    # buffer, the joined bytes, the parsed message) until it is refused: bounded by concurrency, not time.
    rss_bound = CLIENTS * MAX_RECEIVE_BYTES * 3
    rss_growth = hostile["rss_peak"] - base["rss_peak"]
    rows.append(
        row(
            "hostile.controller_rss_peak",
            f"{hostile['rss_peak'] / 1e6:.0f} MB peak under hostile load, {hostile['rss_end'] / 1e6:.0f} MB after",
            f"{base['rss_peak'] / 1e6:.0f} MB peak under well-behaved load, {base['rss_end'] / 1e6:.0f} MB after",
            rss_growth / rss_bound,
            f"<= +{rss_bound / 1e6:.0f} MB ({CLIENTS} in flight x {MAX_RECEIVE_BYTES >> 20} MiB request limit x 3)",
            rss_growth <= rss_bound,
        )
    )
    per_s = hostile["log_bytes"] / seconds
    rows.append(
        row(
            "hostile.log_bytes",
            f"{hostile['log_bytes'] / 1e3:.0f} kB in {seconds:.0f} s ({per_s / 1e3:.1f} kB/s) of refusals logged",
            f"{base['log_bytes'] / 1e3:.0f} kB with well-behaved load",
            per_s / 4e3,
            "<= 4 kB/s (all clients share one peer host: a few truncated lines a second, whatever the attack rate)",
            per_s <= 4e3,
        )
    )

    def tally(calls: dict[str, dict[str, int]], code: str) -> tuple[int, int, list[str]]:
        hits = [kind for kind, codes in calls.items() if codes.get(code)]
        return sum(c.get(code, 0) for c in calls.values()), sum(sum(c.values()) for c in calls.values()), hits

    accepted, total, accepted_kinds = tally(hostile["calls"], "OK")
    late, _, _ = tally(hostile["calls"], "DEADLINE_EXCEEDED")
    base_ok, base_total, _ = tally(base["calls"], "OK")
    _say("hostile calls: " + _calls_text(hostile["calls"]))
    _say("well-behaved calls: " + _calls_text(base["calls"]))
    rows.append(
        row(
            "hostile.calls_accepted",
            f"{accepted} of {total} hostile calls answered OK ({', '.join(accepted_kinds) or 'none'}); "
            f"{late} past their {CALL_DEADLINE_S:.0f} s deadline",
            f"{base_ok} of {base_total} well-behaved calls OK",
            accepted / max(total, 1),
            "0 accepted (every worst-case payload refused whole)",
            accepted == 0,
        )
    )
    return rows


def run(quick: bool = False) -> list[Row]:
    seconds = float(os.environ.get("BENCH_HOSTILE_S", 8 if quick else 30))
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        work = Path(tmp)
        ctrl = _controller_class()(work / "data", log_level="info")
        ctrl.start()
        try:
            spec = asyncio.run(_setup(ctrl, work))
            _say(f"phase A: {CLIENTS} well-behaved clients for {seconds:.0f} s")
            base = _phase(ctrl, {**spec, "mode": "well", "seconds": seconds}, work)
            _say(f"phase B: {CLIENTS} hostile clients for {seconds:.0f} s")
            hostile = _phase(ctrl, {**spec, "mode": "hostile", "seconds": seconds}, work)
            if ctrl.proc is None or ctrl.proc.poll() is not None:
                raise RuntimeError(f"controller died: {''.join(ctrl.stderr_lines[-10:])}")
        finally:
            if ctrl.proc is not None and ctrl.proc.poll() is None:
                ctrl.terminate()
            ctrl.kill()
    return _rows(base, hostile, seconds)


def main() -> int:
    return run_alone(run, child=_child_main)


if __name__ == "__main__":
    sys.exit(main())
