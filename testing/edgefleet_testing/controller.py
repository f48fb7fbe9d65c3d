"""Starting real controllers for tests: in-process (``build_server`` on port 0) for most tests, and a real
``edgefleet-controller serve`` OS process for restart and SIGTERM tests; plus publishing real signed
bundles and enrolling devices over the wire.

Nothing here mocks the controller: every helper speaks gRPC over loopback sockets to a real server on a
real SQLite data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health

from edgefleet.contract.bundle_archive import pack_bundle
from edgefleet.contract.signing import SigningKey, sign_bundle
from edgefleet.grpc_server import set_serving
from edgefleet.v1 import common_pb2, device_pb2, device_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from edgefleet_controller.bootstrap import Controller, build_controller, build_server
from edgefleet_controller.server import SERVICE_NAMES
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_testing.bundles import push_requests
from edgefleet_testing.modelgen import make_classifier

REPO = Path(__file__).resolve().parents[2]
SAMPLE_SPEC = REPO / "examples" / "bundles" / "classifier-v1.spec.yaml"
#: Config manifests in the repository (``manifests/bundles`` holds bundle specs, ``rollouts`` rollouts).
CONFIG_MANIFESTS = [REPO / "manifests" / "fleet.yaml", REPO / "manifests" / "sites", REPO / "manifests" / "devices"]

Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------- bundles


def write_sample_spec(
    src: Path, *, name: str = "classifier", version: str = "1.0.0", seed: int = 0, canary: dict[str, Any] | None = None
) -> Path:
    """``SAMPLE_SPEC`` over a generated classifier (10 classes, 16×16), written with its model into ``src``;
    ``canary`` replaces keys of the spec's ``canary`` section. Returns the spec's path."""
    src.mkdir(parents=True, exist_ok=True)
    model = make_classifier(src / "model.onnx", num_classes=10, size=16, seed=seed)
    spec = yaml.safe_load(SAMPLE_SPEC.read_text())
    spec.update(name=name, version=version, model=str(model))
    spec["preprocess"]["size"] = [16, 16]
    spec["canary"].update(canary or {})
    spec_path = src / "bundle.spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return spec_path


def publish_bundle(
    work: Path,
    key: SigningKey | None,
    *,
    name: str = "classifier",
    version: str = "1.0.0",
    seed: int = 0,
    extra: dict[str, bytes] | None = None,
    canary: dict[str, Any] | None = None,
) -> Path:
    """Build a real bundle (generated ONNX classifier), sign it with ``key`` (None = unsigned), pack it
    to ``work/<name>-<version>.efb`` and return the archive. ``extra`` maps artifact role → file bytes;
    ``canary`` replaces keys of the sample spec's ``canary`` section (the bundle's declared policy)."""
    tag = f"{name}-{version}-{seed}"
    src = work / f"src-{tag}"
    spec_path = write_sample_spec(src, name=name, version=version, seed=seed, canary=canary)
    extra_paths = {}
    for role, data in (extra or {}).items():
        path = src / f"{role}.bin"
        path.write_bytes(data)
        extra_paths[role] = path
    bundle_dir = work / f"bundle-{tag}"
    build_bundle(spec_path, bundle_dir, extra_artifacts=extra_paths, golden_count=1)
    if key is not None:
        sign_bundle(bundle_dir, key)
    return pack_bundle(bundle_dir, work / f"{tag}.efb")


# ---------------------------------------------------------------------------------------------- clients


@dataclass
class Fleet:
    """A connected test client: stubs on one channel, and the admin token."""

    channel: grpc.aio.Channel
    admin_token: str
    fleet: fleet_pb2_grpc.FleetServiceAsyncStub = field(init=False)
    device: device_pb2_grpc.DeviceServiceAsyncStub = field(init=False)

    def __post_init__(self) -> None:
        self.fleet = fleet_pb2_grpc.FleetServiceStub(self.channel)
        self.device = device_pb2_grpc.DeviceServiceStub(self.channel)

    @property
    def admin(self) -> Metadata:
        return bearer(self.admin_token)

    async def operator_token(self, role: str, name: str | None = None, ttl_s: int = 0) -> tuple[str, str]:
        reply = await self.fleet.CreateOperatorToken(
            fleet_pb2.CreateOperatorTokenRequest(name=name or f"test-{role}", role=role, ttl_s=ttl_s),
            metadata=self.admin,
        )
        return reply.token_id, reply.token

    async def trust(self, key: SigningKey) -> None:
        await self.fleet.AddTrustedKey(
            fleet_pb2.AddTrustedKeyRequest(key_id=key.key_id, public_key_pem=key.public_pem().decode()),
            metadata=self.admin,
        )

    async def push(self, archive: Path, token: str | None = None) -> fleet_pb2.PushBundleResponse:
        reply: fleet_pb2.PushBundleResponse = await self.fleet.PushBundle(
            iter(push_requests(archive)), metadata=bearer(token or self.admin_token)
        )
        return reply

    async def enrollment_token(self, site: str, ttl_s: int = 3600, max_uses: int = 0) -> str:
        reply = await self.fleet.CreateEnrollmentToken(
            fleet_pb2.CreateEnrollmentTokenRequest(site=site, ttl_s=ttl_s, max_uses=max_uses), metadata=self.admin
        )
        return str(reply.token)

    async def enroll(
        self,
        site: str,
        name: str,
        tags: dict[str, str] | None = None,
        hardware_class: str = "x86-avx2",
        token: str | None = None,
    ) -> tuple[str, str]:
        """Enroll a device; return (device id, credential)."""
        reply = await self.device.Enroll(
            device_pb2.EnrollRequest(
                enrollment_token=token or await self.enrollment_token(site),
                name=name,
                hardware=common_pb2.HardwareProfile(
                    hardware_class=hardware_class, execution_providers=["CPUExecutionProvider"], cpu_cores=4
                ),
                tags=tags or {},
            )
        )
        return reply.device_id, reply.device_credential

    async def enroll_many(self, site: str, names: Sequence[str], *, concurrency: int = 16) -> list[str]:
        """Enroll ``names`` at ``site`` with one token, ``concurrency`` at a time; return their credentials."""
        token = await self.enrollment_token(site)
        slots = asyncio.Semaphore(concurrency)

        async def one(name: str) -> str:
            async with slots:
                return (await self.enroll(site, name, token=token))[1]

        return list(await asyncio.gather(*(one(name) for name in names)))

    async def sync(
        self,
        credential: str,
        known_revision: int = 0,
        wait_s: int = 1,
        reported: common_pb2.ReportedState | None = None,
        deadline_s: float | None = None,
    ) -> device_pb2.SyncResponse:
        reply: device_pb2.SyncResponse = await self.device.Sync(
            device_pb2.SyncRequest(
                known_revision=known_revision,
                wait_s=wait_s,
                reported=reported or common_pb2.ReportedState(health=common_pb2.HEALTH_SERVING),
            ),
            metadata=bearer(credential),
            timeout=deadline_s if deadline_s is not None else wait_s + 10,
        )
        return reply

    async def report_running(self, credential: str, bundle_digest: str) -> None:
        """The device reports running ``bundle_digest`` (one Sync, no wait): its telemetry windows may then
        name that bundle (the controller refuses windows of bundles a device neither runs nor was assigned)."""
        reported = common_pb2.ReportedState(
            health=common_pb2.HEALTH_SERVING, running_bundle_digest=bundle_digest, slot_digests=[bundle_digest]
        )
        await self.sync(credential, wait_s=0, reported=reported)

    async def fetch(self, credential: str, digest: str, offset: int = 0, chunk_bytes: int = 0) -> bytes:
        out = bytearray()
        call = self.device.FetchBlob(
            device_pb2.FetchBlobRequest(digest=digest, offset=offset, chunk_bytes=chunk_bytes),
            metadata=bearer(credential),
            timeout=60,
        )
        async for chunk in call:
            assert chunk.offset == offset + len(out), (chunk.offset, offset, len(out))
            out.extend(chunk.data)
        return bytes(out)


# ---------------------------------------------------------------------------------------------- in-process


@dataclass
class InProcessController:
    app: Controller
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    metrics_port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return (self.app.data_dir / "admin.token").read_text().strip()


@contextlib.asynccontextmanager
async def running_controller(
    data_dir: Path,
    *,
    clock: Callable[[], datetime] | None = None,
    metrics: bool = False,
    store_url: str | None = None,
) -> AsyncIterator[InProcessController]:
    """A real controller on 127.0.0.1:<any port>, in this event loop, SERVING until the block ends. Two
    started with one ``store_url`` (and their own data dirs) are two replicas sharing a database."""
    app = (
        build_controller(data_dir, clock=clock, store_url=store_url)
        if clock is not None
        else build_controller(data_dir, store_url=store_url)
    )
    server, port, health_servicer = build_server(app, "127.0.0.1:0")
    await app.start()
    await server.start()
    metrics_port = app.metrics.serve("127.0.0.1", 0) if metrics else None
    await set_serving(health_servicer, SERVICE_NAMES, True)
    try:
        yield InProcessController(app, server, port, health_servicer, metrics_port)
    finally:
        app.begin_shutdown()
        await server.stop(1.0)
        await app.stop()


@contextlib.asynccontextmanager
async def connected(ctrl: InProcessController | ControllerProcess) -> AsyncIterator[Fleet]:
    async with grpc.aio.insecure_channel(ctrl.address) as channel:
        yield Fleet(channel, ctrl.admin_token)


# ---------------------------------------------------------------------------------------------- OS process

_LISTENING = re.compile(r"listening on port (\d+)")


class ControllerProcess:
    """``edgefleet-controller serve`` as a child process on a fixed data dir (restartable)."""

    def __init__(
        self, data_dir: Path, *, metrics_port: int | None = None, grace_s: float = 5.0, log_level: str = "info"
    ) -> None:
        self.data_dir = data_dir
        self.log_level = log_level
        self.metrics_port = metrics_port
        self.grace_s = grace_s
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.stderr_lines: list[str] = []
        self._readers: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 30.0) -> None:
        cmd = [
            sys.executable,
            "-c",
            "from edgefleet_controller.cli import run; run()",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            "127.0.0.1:0",
            "--grace-s",
            str(self.grace_s),
            "--log-json",
            "--log-level",
            self.log_level,
        ]
        if self.metrics_port is not None:
            cmd += ["--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO)
        )
        lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None and self.proc.stderr is not None

        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout, lines), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        while True:
            try:
                line = lines.get(timeout=timeout_s)
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"controller did not report its port within {timeout_s} s") from None
            if line is None:
                self.wait(10)
                raise RuntimeError(f"controller exited before serving: {''.join(self.stderr_lines[-20:])}")
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                return

    @staticmethod
    def _read_stdout(stream: object, lines: queue.Queue[str | None]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)
        lines.put(None)

    def _read_stderr(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.stderr_lines.append(line)

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM; return the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit, then close its pipes; return the exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout_s)
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code

    def kill(self) -> None:
        """Make sure the process is gone (test cleanup); safe to call after it exited."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)
