"""Benchmarks of the controller: Sync throughput, thousands of waiting long-polls, FetchBlob throughput.

``run(quick=False) -> list[dict]`` returns one row per measurement:
``{"benchmark", "measured", "baseline", "ratio", "goal", "ok"}``; ``python bench/bench_controller.py
[--quick]`` prints them. The controller is a real ``edgefleet-controller serve`` process on a fresh data
dir; the load comes from separate client processes (this file, run with a role), so the controller's
event loop is never shared with the load generator. Baselines are bare ``grpc.aio`` servers (also this
file, role ``echo``) answering the same bytes, measured by the same client in the same run.

(1) Sync throughput: C concurrent devices each re-issue ``Sync`` with a stale ``known_revision``, so
    every call is answered at once with the full desired state (bundle manifest, signature, artifact
    list, effective config). ``wait_s = 0`` means "the default (30 s)" in proto3 (unset and 0 are the
    same on the wire), so a stale revision is how a device gets an immediate answer. Baseline: an echo
    server returning a response of the same size to the same request bytes. Goal ≥ 50 %.
(2) N devices hold a waiting ``Sync`` at once (a client process with several channels): controller RSS
    per waiting device (psutil, against the RSS just before the calls were issued) and the time from
    ``SetDesiredBundle`` for their site until every one of them got the new desired state.
(3) FetchBlob throughput of one large artifact, against a bare server streaming the same file in the
    same chunk size (goal ≥ 70 %), and controller RSS growth during 50 concurrent downloads of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import psutil  # noqa: E402
from benchlib import row, run_alone  # noqa: E402

from edgefleet.contract.signing import generate_keypair  # noqa: E402
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2  # noqa: E402

SYNC = "/edgefleet.v1.DeviceService/Sync"
FETCH = "/edgefleet.v1.DeviceService/FetchBlob"
ECHO_SYNC = "/bench.Echo/Sync"
ECHO_FETCH = "/bench.Echo/FetchBlob"
CHUNK = 1 << 20
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.use_local_subchannel_pool", 1)]


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- child roles


async def _echo_server(response: bytes, blob_file: str) -> None:
    """Bare grpc.aio server: Sync answers fixed bytes; FetchBlob streams ``blob_file`` in BlobChunks.

    It reads the file with plain blocking calls on the event loop, as the simplest server would; the data is
    in the page cache, so this is the cheapest way to stream it and the fairest baseline."""

    async def sync(request: bytes, context: Any) -> bytes:
        return response

    async def fetch(request: bytes, context: Any) -> Any:
        req = device_pb2.FetchBlobRequest.FromString(request)
        total = os.path.getsize(blob_file)  # noqa: ASYNC240 - see the docstring
        offset = req.offset
        with open(blob_file, "rb") as f:  # noqa: ASYNC230 - see the docstring
            f.seek(offset)
            while data := f.read(req.chunk_bytes or CHUNK):
                yield device_pb2.BlobChunk(offset=offset, data=data, total_size=total).SerializeToString()
                offset += len(data)

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Sync": grpc.unary_unary_rpc_method_handler(sync),
            "FetchBlob": grpc.unary_stream_rpc_method_handler(fetch),
        },
    )
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 << 20)])
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await server.stop(0)


def _channels(address: str, count: int) -> list[grpc.aio.Channel]:
    # Distinct channel args → distinct TCP connections (gRPC would otherwise share one subchannel).
    return [grpc.aio.insecure_channel(address, options=[*CHANNEL_OPTIONS, ("bench.channel", i)]) for i in range(count)]


async def _sync_load(spec: dict[str, Any]) -> dict[str, Any]:
    """C workers re-issue Sync for ``seconds``; each uses its own device credential."""
    channels = _channels(spec["address"], spec["channels"])
    creds: list[str] = spec["creds"]
    request = device_pb2.SyncRequest(
        known_revision=0, wait_s=1, reported=common_pb2.ReportedState(health=common_pb2.HEALTH_SERVING)
    ).SerializeToString()
    count = 0
    sizes: set[int] = set()
    deadline = time.perf_counter() + spec["warmup"] + spec["seconds"]
    measure_from = time.perf_counter() + spec["warmup"]

    async def worker(i: int) -> None:
        nonlocal count
        call: Any = channels[i % len(channels)].unary_unary(spec["method"])
        metadata = (("authorization", f"Bearer {creds[i % len(creds)]}"),)
        while (now := time.perf_counter()) < deadline:
            reply = await call(request, metadata=metadata, timeout=30)
            if now >= measure_from:
                count += 1
                sizes.add(len(reply))

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(spec["concurrency"])))
    elapsed = time.perf_counter() - max(start, measure_from - spec["warmup"]) - spec["warmup"]
    for ch in channels:
        await ch.close()
    return {"count": count, "seconds": elapsed, "sizes": sorted(sizes)}


async def _wait_load(spec: dict[str, Any]) -> dict[str, Any]:
    """Learn each device's revision, hold one waiting Sync per device, report when each returned."""
    channels = _channels(spec["address"], spec["channels"])
    creds: list[str] = spec["creds"]
    calls: list[Any] = [ch.unary_unary(SYNC) for ch in channels]
    reported = common_pb2.ReportedState(health=common_pb2.HEALTH_SERVING)
    sem = asyncio.Semaphore(64)

    async def learn(i: int) -> int:
        async with sem:
            raw = await calls[i % len(calls)](
                device_pb2.SyncRequest(known_revision=0, wait_s=1, reported=reported).SerializeToString(),
                metadata=(("authorization", f"Bearer {creds[i]}"),),
                timeout=60,
            )
            return int(device_pb2.SyncResponse.FromString(raw).desired.revision)

    revisions = await asyncio.gather(*(learn(i) for i in range(len(creds))))
    print("learned", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # parent: "go"
    done: list[float] = []
    changed = 0

    async def hold(i: int) -> None:
        nonlocal changed
        raw = await calls[i % len(calls)](
            device_pb2.SyncRequest(known_revision=revisions[i], wait_s=120, reported=reported).SerializeToString(),
            metadata=(("authorization", f"Bearer {creds[i]}"),),
            timeout=180,
        )
        done.append(time.time())
        changed += device_pb2.SyncResponse.FromString(raw).changed

    tasks = [asyncio.ensure_future(hold(i)) for i in range(len(creds))]
    print("issued", flush=True)
    await asyncio.gather(*tasks)
    for ch in channels:
        await ch.close()
    return {"last_done": max(done), "first_done": min(done), "changed": changed}


async def _fetch_load(spec: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` downloads of ``digest`` at once, ``rounds`` times; bytes and time per round."""
    channels = _channels(spec["address"], spec["channels"])
    request = device_pb2.FetchBlobRequest(digest=spec["digest"], chunk_bytes=CHUNK).SerializeToString()
    metadata = (("authorization", f"Bearer {spec['cred']}"),)

    async def one(i: int) -> int:
        got = 0
        call: Any = channels[i % len(channels)].unary_stream(spec["method"])
        async for raw in call(request, metadata=metadata, timeout=600):
            got += len(raw)
        return got

    rounds = []
    for _ in range(spec["rounds"]):
        start = time.perf_counter()
        sizes = await asyncio.gather(*(one(i) for i in range(spec["concurrency"])))
        rounds.append({"bytes": sum(sizes), "seconds": time.perf_counter() - start})
    for ch in channels:
        await ch.close()
    return {"rounds": rounds}


def _child_main(role: str, arg: str) -> None:
    if role == "echo":
        response_file, blob_file = arg.split(",", 1)
        asyncio.run(_echo_server(Path(response_file).read_bytes(), blob_file))
        return
    spec = json.loads(Path(arg).read_text())
    fn = {"sync": _sync_load, "wait": _wait_load, "fetch": _fetch_load}[role]
    print("result " + json.dumps(asyncio.run(fn(spec))), flush=True)


# ---------------------------------------------------------------------------------------------- parent side


class _Child:
    """This file run as a child process with a role; talks line by line over stdin/stdout."""

    def __init__(self, role: str, arg: str) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--role", role, arg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    def expect(self, prefix: str, timeout_s: float = 300) -> str:
        assert self.proc.stdout is not None
        result: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith(prefix):
                    result.append(line[len(prefix) :].strip())
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not result:
            self.close()
            raise RuntimeError(f"bench child did not say {prefix!r} within {timeout_s} s")
        return result[0]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _run_child(role: str, spec: dict[str, Any], work: Path, timeout_s: float = 300) -> dict[str, Any]:
    path = work / f"{role}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    child = _Child(role, str(path))
    try:
        out: dict[str, Any] = json.loads(child.expect("result ", timeout_s))
        return out
    finally:
        child.close()


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


async def _bench(quick: bool, work: Path) -> list[dict[str, Any]]:
    from edgefleet_testing.controller import ControllerProcess, connected, free_port, publish_bundle

    rows: list[dict[str, Any]] = []
    key = generate_keypair("bench-publisher")
    blob_mb = int(os.environ.get("BENCH_BLOB_MB", 16 if quick else 64))
    big = os.urandom(blob_mb << 20)
    archive = publish_bundle(work, key, extra={"engine.plan": big})
    del big
    metrics_port = free_port()
    ctrl = ControllerProcess(work / "data", metrics_port=metrics_port, log_level="warning")
    ctrl.start()
    echo: _Child | None = None
    try:
        async with connected(ctrl) as c:
            await c.trust(key)
            pushed = await c.push(archive)
            bundle = pushed.bundle.digest

            # ------------------------------------------------------------------ (1) Sync throughput
            concurrency = 32
            creds = await c.enroll_many("sync-site", [f"s-{i}" for i in range(concurrency)])
            await c.fleet.SetDesiredBundle(
                fleet_pb2.SetDesiredBundleRequest(site="sync-site", bundle=bundle), metadata=c.admin
            )
            sample = await c.sync(creds[0], known_revision=0)
            response_file = work / "sync-response.bin"
            response_file.write_bytes(sample.SerializeToString())
            big_path = next((work / "bundle-classifier-1.0.0-0" / "artifacts").glob("engine.plan*"))
            echo = _Child("echo", f"{response_file},{big_path}")
            echo_port = int(echo.expect("port "))
            seconds = 2.0 if quick else 4.0
            common = {"concurrency": concurrency, "channels": 4, "seconds": seconds, "warmup": 0.5, "creds": creds}
            ctrl_rates, echo_rates = [], []
            for _ in range(2 if quick else 3):  # interleaved so machine noise hits both; medians
                ctrl_sync = _run_child("sync", {**common, "address": ctrl.address, "method": SYNC}, work)
                echo_sync = _run_child(
                    "sync", {**common, "address": f"127.0.0.1:{echo_port}", "method": ECHO_SYNC}, work
                )
                ctrl_rates.append(ctrl_sync["count"] / ctrl_sync["seconds"])
                echo_rates.append(echo_sync["count"] / echo_sync["seconds"])
            ctrl_rps, echo_rps = statistics.median(ctrl_rates), statistics.median(echo_rates)
            ratio = ctrl_rps / echo_rps
            rows.append(
                row(
                    f"Sync answered at once, {concurrency} concurrent devices ({ctrl_sync['sizes'][0]} B replies)",
                    f"{ctrl_rps:.0f} calls/s",
                    f"{echo_rps:.0f} calls/s (bare grpc.aio echo, same sizes)",
                    ratio,
                    ">= 0.50 of bare echo",
                    ratio >= 0.5,
                )
            )

            # ------------------------------------------------------------------ (3) FetchBlob
            _, fetch_cred = await c.enroll("sync-site", "fetcher")
            await c.fleet.SetDesiredBundle(
                fleet_pb2.SetDesiredBundleRequest(device="fetcher", bundle=bundle), metadata=c.admin
            )
            plan = next(a for a in (await c.sync(fetch_cred)).desired.artifacts if a.role == "engine.plan")
            fetch_common = {"digest": plan.digest, "cred": fetch_cred, "channels": 1, "concurrency": 1}
            ctrl_runs, echo_runs = [], []
            rounds = 5 if quick else 4
            for _ in range(3):  # interleaved so machine noise hits both; first round per child warms up
                ctrl_runs.append(
                    _run_child(
                        "fetch", {**fetch_common, "address": ctrl.address, "method": FETCH, "rounds": rounds}, work
                    )
                )
                echo_runs.append(
                    _run_child(
                        "fetch",
                        {**fetch_common, "address": f"127.0.0.1:{echo_port}", "method": ECHO_FETCH, "rounds": rounds},
                        work,
                    )
                )

            def mbps(runs: list[dict[str, Any]]) -> float:
                return float(
                    statistics.median(r["bytes"] / r["seconds"] / 1e6 for run in runs for r in run["rounds"][1:])
                )

            ctrl_mbps, echo_mbps = mbps(ctrl_runs), mbps(echo_runs)
            ratio = ctrl_mbps / echo_mbps
            rows.append(
                row(
                    f"FetchBlob one {blob_mb} MB artifact, 1 MiB chunks",
                    f"{ctrl_mbps:.0f} MB/s",
                    f"{echo_mbps:.0f} MB/s (bare grpc.aio stream of the same file)",
                    ratio,
                    ">= 0.70 of bare stream",
                    ratio >= 0.7,
                )
            )
            downloads = 10 if quick else 50
            rss_before = _rss(ctrl.pid)
            peak = [rss_before]
            stop = threading.Event()

            def sample_rss() -> None:
                while not stop.wait(0.05):
                    peak.append(_rss(ctrl.pid))

            sampler = threading.Thread(target=sample_rss, daemon=True)
            sampler.start()
            many = await asyncio.to_thread(
                _run_child,
                "fetch",
                {
                    **fetch_common,
                    "address": ctrl.address,
                    "method": FETCH,
                    "rounds": 1,
                    "concurrency": downloads,
                    "channels": 10,
                },
                work,
            )
            stop.set()
            sampler.join(5)
            growth_mb = (max(peak) - rss_before) / 1e6
            round_ = many["rounds"][0]
            limit_mb = 256.0
            rows.append(
                row(
                    f"controller RSS growth during {downloads} concurrent {blob_mb} MB downloads",
                    f"+{growth_mb:.0f} MB peak ({round_['bytes'] / round_['seconds'] / 1e6:.0f} MB/s total)",
                    f"{rss_before / 1e6:.0f} MB before",
                    growth_mb / limit_mb,
                    f"<= {limit_mb:.0f} MB (no per-download buffering of the artifact)",
                    growth_mb <= limit_mb,
                )
            )

            # ------------------------------------------------------------------ (2) waiting Syncs
            n = int(os.environ.get("BENCH_WAITING", 1000 if quick else 5000))
            _say(f"enrolling {n} devices")
            wait_creds = await c.enroll_many("wait-site", [f"w-{i}" for i in range(n)])
            _say("enrolled; first Sync of each")
            waiter = _Child(
                "wait", str(_spec_file(work, {"address": ctrl.address, "channels": 8, "creds": wait_creds}))
            )
            try:
                waiter.expect("learned", 300)
                rss_idle = _rss(ctrl.pid)
                waiter.send("go")
                waiter.expect("issued", 120)
                deadline = time.monotonic() + 120
                # Polls another process's /metrics: there is no event to await.
                while _metric(metrics_port, "edgefleet_waiting_syncs") < n and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
                held = _metric(metrics_port, "edgefleet_waiting_syncs")
                _say(f"{held:.0f} Syncs waiting")
                rss_waiting = _rss(ctrl.pid)
                changed_at = time.time()
                await c.fleet.SetDesiredBundle(
                    fleet_pb2.SetDesiredBundleRequest(site="wait-site", bundle=bundle), metadata=c.admin, timeout=120
                )
                _say("desired bundle set for the site")
                result = json.loads(waiter.expect("result ", 120))
            finally:
                waiter.close()
            per_device = (rss_waiting - rss_idle) / max(held, 1)
            rows.append(
                row(
                    f"controller RSS per waiting Sync ({int(held)} held)",
                    f"{per_device / 1024:.1f} KiB",
                    f"{rss_idle / 1e6:.0f} MB before the calls",
                    per_device / (64 * 1024),
                    "<= 64 KiB per waiting device",
                    per_device <= 64 * 1024 and held >= n,
                )
            )
            fanout = result["last_done"] - changed_at
            goal_s = 5.0 if quick else 10.0
            rows.append(
                row(
                    f"SetDesiredBundle for a site → all {n} waiting devices answered",
                    f"{fanout:.2f} s ({result['changed']} changed)",
                    f"first answer after {result['first_done'] - changed_at:.2f} s",
                    fanout / goal_s,
                    f"<= {goal_s:.0f} s",
                    fanout <= goal_s and result["changed"] == n,
                )
            )
    finally:
        if echo is not None:
            echo.close()
        if ctrl.proc is not None and ctrl.proc.poll() is None:
            ctrl.terminate()
        ctrl.kill()
    return rows


def _spec_file(work: Path, spec: dict[str, Any]) -> Path:
    path = work / f"spec-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    return path


def run(quick: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-controller-") as tmp:
        return asyncio.run(_bench(quick, Path(tmp)))


def main() -> int:
    return run_alone(run, child=_child_main)


if __name__ == "__main__":
    sys.exit(main())
