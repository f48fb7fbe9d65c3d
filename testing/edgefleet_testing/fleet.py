"""Test fleet: a real controller process, real ``edge-runtime`` processes, signed bundles, operator calls.

Reusable by every integration / e2e test that needs devices talking to a controller over gRPC (``make_bundle``
from ``edgefleet_testing.bundles``)::

    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        v1 = make_bundle(tmp_path / "b1", key, version="1.0.0", seed=1)
        ctl.push(v1)
        ctl.apply_config(watch_window_s=0.5)
        token = ctl.enrollment_token("lab")
        with start_edge(ctl.address, tmp_path / "dev1", token, name="dev1") as dev:
            ctl.set_desired("dev1", v1.digest)
            dev.wait_for(lambda s: s["update"]["committed"] == v1.digest)

Everything is an operator's view: the controller is driven through ``FleetService`` with the admin token
(the same calls fleetctl makes), and a device is observed through its ``status.json``, its frame log and
``FleetService.GetDevice``. Nothing here imports the controller's or the runtime's internals. The demo
(``demo/fleet.py``) runs its fleet on this harness too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from edgefleet.contract.request_bounds import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from edgefleet.contract.signing import SigningKey, generate_keypair
from edgefleet.v1 import common_pb2, fleet_pb2, fleet_pb2_grpc
from edgefleet_testing.bundles import SignedBundle, push_requests
from edgefleet_testing.waiting import wait_until

BIN = Path(sys.executable).parent
CONTROLLER = BIN / "edgefleet-controller"
EDGE_RUNTIME = BIN / "edge-runtime"


def _read_port(proc: subprocess.Popen[str], marker: str, timeout: float, log: Path) -> tuple[int, threading.Thread]:
    """Read stdout lines until ``<marker> <port>``; the rest of stdout is drained on a thread."""
    found: list[int] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                if not found and line.startswith(marker):
                    found.append(int(line.rsplit(" ", 1)[1]))
                    ready.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            proc.wait(5)
            thread.join(5)
            raise RuntimeError(f"{marker!r} not printed within {timeout} s (exit {proc.poll()}); log:\n{tail}")
    return found[0], thread


# ---------------------------------------------------------------------------------------------- controller


@dataclass
class Controller:
    """An ``edgefleet-controller serve`` process, and an operator's admin client of it (``start_controller``)."""

    proc: subprocess.Popen[str]
    data_dir: Path
    port: int
    log: Path
    admin_token: str
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        # The controller's message limits, as fleetctl's channel has them: a fleet-wide ListReviewSamples
        # include_jpeg answer may take up to MAX_RESPONSE_BYTES, over gRPC's 4 MiB default.
        self.channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
                ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
            ],
        )

    @functools.cached_property
    def fleet(self) -> fleet_pb2_grpc.FleetServiceStub:
        return fleet_pb2_grpc.FleetServiceStub(self.channel)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin_token}"),)

    def trust(self, key: SigningKey) -> None:
        """Add the publisher's public key to the fleet's trusted keys."""
        self.fleet.AddTrustedKey(
            fleet_pb2.AddTrustedKeyRequest(key_id=key.key_id, public_key_pem=key.public_pem().decode()),
            metadata=self.md,
            timeout=10,
        )

    def trust_new_key(self, key_dir: Path, key_id: str = "test-publisher") -> SigningKey:
        key = generate_keypair(key_id)
        key_dir.mkdir(parents=True, exist_ok=True)
        key.save(key_dir / f"{key_id}.key.pem", key_dir / f"{key_id}.pub.pem")
        self.trust(key)
        return key

    def push(self, bundle: SignedBundle) -> fleet_pb2.PushBundleResponse:
        reply: fleet_pb2.PushBundleResponse = self.fleet.PushBundle(
            iter(push_requests(bundle.archive)), metadata=self.md, timeout=60
        )
        return reply

    def enrollment_token(self, site: str = "lab") -> str:
        reply = self.fleet.CreateEnrollmentToken(
            fleet_pb2.CreateEnrollmentTokenRequest(site=site, ttl_s=3600), metadata=self.md, timeout=10
        )
        return str(reply.token)

    def apply_config(
        self, *, watch_window_s: float = 0.5, min_frames: int = 60, min_seconds: float = 0.5, extra: str = ""
    ) -> None:
        """A fleet config with a short canary (tests use sub-millisecond models on a shared 2-core box)."""
        text = (
            "apiVersion: edgefleet.io/v1\nkind: FleetConfig\nmetadata: {name: default}\n"
            f"spec:\n  config:\n    canary: {{watch_window_s: {watch_window_s}, min_frames: {min_frames}, "
            f"min_seconds: {min_seconds}}}\n{extra}"
        )
        self.apply("fleet.yaml", text, timeout=10)

    def apply(
        self, name: str, content: str, *, stage: bool = False, timeout: float = 30
    ) -> fleet_pb2.ApplyConfigResponse:
        """Apply one manifest file (``fleetctl apply -f``, ``--stage``), e.g. config documents with a Rollout."""
        reply: fleet_pb2.ApplyConfigResponse = self.fleet.ApplyConfig(
            fleet_pb2.ApplyConfigRequest(files=[fleet_pb2.ManifestFile(name=name, content=content)], stage=stage),
            metadata=self.md,
            timeout=timeout,
        )
        return reply

    def set_desired(self, device: str, bundle: str) -> None:
        self.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(device=device, bundle=bundle), metadata=self.md, timeout=10
        )

    def set_site_desired(self, site: str, bundle: str) -> None:
        """Every device of ``site`` wants ``bundle`` (``fleetctl devices set-bundle --site``)."""
        self.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(site=site, bundle=bundle), metadata=self.md, timeout=10
        )

    def device(self, device: str) -> common_pb2.Device:
        reply: common_pb2.Device = self.fleet.GetDevice(
            fleet_pb2.GetDeviceRequest(device=device), metadata=self.md, timeout=10
        )
        return reply

    def devices(self, site: str) -> list[common_pb2.Device]:
        """The devices of ``site``, by name."""
        reply = self.fleet.ListDevices(fleet_pb2.ListDevicesRequest(site=site), metadata=self.md, timeout=10)
        return sorted(reply.devices, key=lambda d: d.name)

    def rollout(self, rollout_id: str) -> fleet_pb2.Rollout:
        reply: fleet_pb2.Rollout = self.fleet.GetRollout(
            fleet_pb2.GetRolloutRequest(id=rollout_id), metadata=self.md, timeout=10
        )
        return reply

    def fleetctl(self, *args: str) -> str:
        """``fleetctl ARGS`` as an operator runs it against this controller (a real process, wide columns, no
        colour, its own settings file beside the controller's data); its stdout. A non-zero exit fails with
        the whole result."""
        env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}
        env.update(
            EDGEFLEET_CONTROLLER=self.address,
            EDGEFLEET_TOKEN=self.admin_token,
            XDG_CONFIG_HOME=str(self.data_dir / "fleetctl-config"),
            COLUMNS="400",
        )
        exe = Path(sys.executable).with_name("fleetctl")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from fleetctl.main import run; run()"]
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc
        return proc.stdout

    def blob_path(self, digest: str) -> Path:
        hex_part = digest.removeprefix("sha256:")
        return self.data_dir / "blobs" / "sha256" / hex_part[:2] / hex_part

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def start_controller(data_dir: Path, *, port: int = 0) -> Iterator[Controller]:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                str(CONTROLLER),
                "serve",
                "--data-dir",
                str(data_dir),
                "--listen",
                f"127.0.0.1:{port}",
                "--grace-s",
                "1",
                "--log-json",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    controller: Controller | None = None
    try:
        bound, pump = _read_port(proc, "edgefleet-controller listening on port", 60, log)
        wait_until(lambda: (data_dir / "admin.token").is_file(), 10, "admin.token")
        controller = Controller(proc, data_dir, bound, log, (data_dir / "admin.token").read_text().strip())
        yield controller
        controller.stop()
        pump.join(5)
    finally:
        if controller is not None:
            controller.stop()
        elif proc.poll() is None:
            proc.kill()
            proc.wait(5)


# ---------------------------------------------------------------------------------------------- devices


@dataclass
class EdgeProcess:
    """An ``edge-runtime run`` process, observed through its status file and frame log (``start_edge``)."""

    proc: subprocess.Popen[str]
    data_dir: Path
    name: str
    health_port: int
    log: Path
    frame_log: Path
    stdout_pump: threading.Thread | None = None

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.data_dir / "status.json").read_text())
            return data
        except (FileNotFoundError, ValueError):
            return {}

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} waiting for {what}:\n{tail}")
            status = self.status()
            return status if status and status.get("pid") == self.proc.pid and predicate(status) else None

        result: dict[str, Any] = wait_until(check, timeout, f"{self.name}: {what}")
        return result

    def committed(self, digest: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait_for(
            lambda s: s["update"]["committed"] == digest and s["serving"] == digest,
            timeout,
            f"bundle {digest[:19]} committed and serving",
        )

    def frames(self) -> list[tuple[int, str]]:
        if not self.frame_log.exists():
            return []
        out = []
        for line in self.frame_log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out.append((int(parts[0]), parts[1]))
        return out

    def request_stop(self) -> None:
        """SIGTERM, without waiting (``terminate_all`` stops several devices at once)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def terminate(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.request_stop()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._join_pump()
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._join_pump()
        return code

    def _join_pump(self) -> None:
        if self.stdout_pump is not None:
            self.stdout_pump.join(5)


def start_edge(
    controller: str,
    data_dir: Path,
    token: str,
    *,
    name: str,
    source: str = "synthetic:30",
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    sync_wait_s: int = 5,
    timeout: float = 60,
    wait_online: bool = True,
) -> EdgeProcess:
    """Start ``edge-runtime run`` and wait for its health line; stop it with ``terminate()``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}.log"
    frame_log = data_dir.parent / f"{data_dir.name}.frames"
    args = [
        str(EDGE_RUNTIME),
        "run",
        "--controller",
        controller,
        "--data-dir",
        str(data_dir),
        "--enroll-token",
        token,
        "--name",
        name,
        "--source",
        source,
        "--sync-wait-s",
        str(sync_wait_s),
        "--intra-op-threads",
        "1",
        "--frame-log",
        str(frame_log),
        *extra_args,
    ]
    with log.open("a") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **(env or {})})
    port, pump = _read_port(proc, "edge-runtime health listening on port", timeout, log)
    edge = EdgeProcess(proc, data_dir, name, port, log, frame_log, pump)
    if wait_online:
        # Enrolled and synced once: from here the controller knows the device by name.
        edge.wait_for(lambda s: bool(s.get("online")), timeout, "first successful Sync")
    return edge


def terminate_all(edges: Iterable[EdgeProcess], timeout: float = 15) -> None:
    """SIGTERM every device first, then wait for each (killed after ``timeout``): they drain in parallel."""
    edges = list(edges)
    for edge in edges:
        edge.request_stop()
    for edge in edges:
        edge.terminate(timeout)


@contextlib.contextmanager
def running_edge(*args: Any, **kwargs: Any) -> Iterator[EdgeProcess]:
    edge = start_edge(*args, **kwargs)
    try:
        yield edge
    finally:
        edge.terminate()
