"""PushBundle is atomic from the client's view: a bundle is stored only when the request stream ended with a
half-close and every check passed. A hostile archive pushed with the real ``fleetctl bundle push`` is refused
with the message ``fleetctl bundle verify`` prints; a client that cancels, or whose connection drops, after
sending every byte leaves no bundle, no blob and no temp file; pushing again then succeeds, and two clients
pushing one bundle at once store it once."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from edgefleet.contract.bundle_upload import BundleUpload, read_archive_for_upload
from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.errors import UnsafeArchiveError
from edgefleet.contract.signing import PUBLIC_SUFFIX, SigningKey, generate_keypair, signature_document
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc
from edgefleet_testing.bundles import push_requests
from edgefleet_testing.controller import (
    REPO,
    ControllerProcess,
    Fleet,
    connected,
    publish_bundle,
    running_controller,
)
from edgefleet_testing.faultproxy import FaultProxy
from edgefleet_testing.waiting import wait_until
from fleetctl.bundle_push import send_upload

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Member = tuple[tarfile.TarInfo, bytes]


# ------------------------------------------------------------------------------------ hostile archives


def _members(archive: Path) -> list[Member]:
    with tarfile.open(archive) as tar:
        out = []
        for member in tar.getmembers():
            fh = tar.extractfile(member)
            out.append((member, fh.read() if fh is not None else b""))
        return out


def _write(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _regular(name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _resigned(members: list[Member], key: SigningKey, edit: Callable[[dict[str, object]], None]) -> list[Member]:
    """The archive with bundle.json edited and signed again by ``key``: a lie the signature vouches for."""
    doc = json.loads(members[0][1])
    edit(doc)
    manifest = canonical_json(doc, trailing_newline=True)
    return [_regular("bundle.json", manifest), _regular("bundle.sig", signature_document(manifest, key)), *members[2:]]


def _model_entry(doc: dict[str, object]) -> dict[str, object]:
    artifacts = doc["artifacts"]
    assert isinstance(artifacts, dict)
    entry = artifacts["model"]
    assert isinstance(entry, dict)
    return entry


def hostile_archives(good: Path, key: SigningKey, out: Path) -> dict[str, Path]:
    members = _members(good)
    assert [m.name for m, _ in members[:2]] == ["bundle.json", "bundle.sig"]
    model_at = next(i for i, (m, _) in enumerate(members) if m.name == "artifacts/model.onnx")
    link = tarfile.TarInfo("artifacts/model.onnx")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"

    def lie_digest(doc: dict[str, object]) -> None:
        _model_entry(doc)["sha256"] = "0" * 64

    def lie_size(doc: dict[str, object]) -> None:
        entry = _model_entry(doc)
        assert isinstance(entry["size"], int)
        entry["size"] += 7

    truncated = out / "truncated.efb"
    with tarfile.open(good) as tar:
        model = tar.getmember("artifacts/model.onnx")
    truncated.write_bytes(good.read_bytes()[: model.offset_data + model.size // 2])
    return {
        "traversal": _write(out / "traversal.efb", [*members[:2], _regular("../escape.txt", b"x"), *members[2:]]),
        "symlink": _write(out / "symlink.efb", [*members[:model_at], (link, b""), *members[model_at + 1 :]]),
        "lying-digest": _write(out / "lying-digest.efb", _resigned(members, key, lie_digest)),
        "lying-size": _write(out / "lying-size.efb", _resigned(members, key, lie_size)),
        "truncated": truncated,
    }


# ------------------------------------------------------------------------------------ observations


def stored_files(data_dir: Path) -> list[str]:
    """Every file in the controller's blob directory (blobs and temp files alike)."""
    root = data_dir / "blobs"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def listed(c: Fleet) -> list[str]:
    reply = await c.fleet.ListBundles(fleet_pb2.ListBundlesRequest(), metadata=c.admin)
    return [f"{b.name}@{b.version}" for b in reply.bundles]


async def eventually(predicate: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        if predicate():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def staged_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "blobs" / "tmp").glob("*.part"))


def artifact_bytes(archive: Path) -> int:
    return read_archive_for_upload(archive).total_bytes


async def held_stream(
    requests: list[fleet_pb2.PushBundleRequest], release: asyncio.Event
) -> AsyncIterator[fleet_pb2.PushBundleRequest]:
    """The requests, then no half-close until ``release`` (which a cancelled call never sees)."""
    for request in requests:
        yield request
    await release.wait()


# ------------------------------------------------------------------------------------ fleetctl


@dataclass
class Cli:
    ctrl: ControllerProcess
    home: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update(
            EDGEFLEET_CONTROLLER=self.ctrl.address,
            EDGEFLEET_TOKEN=self.ctrl.admin_token,
            XDG_CONFIG_HOME=str(self.home),
            PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
            COLUMNS="400",
        )
        env.pop("FORCE_COLOR", None)
        exe = Path(sys.executable).with_name("fleetctl")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from fleetctl.main import run; run()"]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=60, cwd=str(REPO))


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    ctrl = ControllerProcess(tmp_path / "data")
    ctrl.start()
    try:
        yield Cli(ctrl, tmp_path / "xdg")
    finally:
        ctrl.terminate()


def test_hostile_archives_via_fleetctl_push_give_the_verify_reason_and_store_nothing(cli: Cli, tmp_path: Path) -> None:
    key = generate_keypair("hostile-test")
    pub = tmp_path / f"{key.key_id}{PUBLIC_SUFFIX}"
    pub.write_bytes(key.public_pem())
    good = publish_bundle(tmp_path / "w", key)
    assert cli.run("keys", "trust", str(pub)).returncode == 0
    for variant, archive in hostile_archives(good, key, tmp_path).items():
        verify = cli.run("bundle", "verify", str(archive), "--trusted", str(pub))
        push = cli.run("bundle", "push", str(archive))
        assert verify.returncode == push.returncode == 2, (variant, verify, push)
        reason = verify.stderr.strip()
        assert reason.startswith(f"error: {archive}: ") and "\n" not in reason, (variant, reason)
        assert push.stderr.strip() == reason, variant
        assert "Exception iterating requests" not in push.stderr
        assert push.stdout == ""
    listing = cli.run("get", "bundles", "-o", "json")
    assert listing.returncode == 0 and json.loads(listing.stdout) == [], listing.stdout
    assert [f for f in stored_files(cli.ctrl.data_dir) if not f.startswith("quarantine")] == []
    # The operator fixes the archive and pushes the good one: stored, with its blobs.
    pushed = cli.run("bundle", "push", str(good))
    assert pushed.returncode == 0 and "pushed: classifier@1.0.0" in pushed.stdout, pushed
    assert len([f for f in stored_files(cli.ctrl.data_dir) if f.startswith("sha256/")]) >= 2


# ------------------------------------------------------------------------------------ raw clients


async def test_a_lying_archive_from_a_raw_client_is_refused_with_the_verify_reason(tmp_path: Path) -> None:
    key = generate_keypair("raw-pub")
    good = publish_bundle(tmp_path / "w", key)
    lying = hostile_archives(good, key, tmp_path)["lying-digest"]
    model = next(a for a in read_archive_for_upload(lying).manifest_obj.artifacts.values() if a.role == "model")
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        await c.trust(key)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.fleet.PushBundle(iter(push_requests(lying)), metadata=c.admin)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        detail = refused.value.details() or ""
        # bundle verify: "<archive>: artifact 'model' (artifacts/model.onnx) has sha256:…, bundle.json says …"
        assert f"artifact 'model' ({model.path}) has sha256:" in detail
        assert f"bundle.json says {model.digest}; the archive was altered or corrupted" in detail
        assert await listed(c) == []
        assert stored_files(tmp_path / "data") == []


async def test_a_push_cancelled_after_every_artifact_arrived_stores_nothing_then_a_retry_succeeds(
    tmp_path: Path,
) -> None:
    key = generate_keypair("cancel-pub")
    archive = publish_bundle(tmp_path / "w", key, extra={"padding": os.urandom(3 << 20)})
    data = tmp_path / "data"
    async with running_controller(data) as ctrl, connected(ctrl) as c:
        await c.trust(key)
        release = asyncio.Event()
        call = c.fleet.PushBundle(held_stream(push_requests(archive), release), metadata=c.admin)
        # The controller has every declared byte staged; only the half-close is missing.
        await eventually(lambda: staged_bytes(data) == artifact_bytes(archive), "all artifacts staged")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await eventually(lambda: stored_files(data) == [], "staged files removed")
        await asyncio.sleep(0.3)  # past the settle window: still nothing
        assert await listed(c) == []
        assert stored_files(data) == []

        again = await c.push(archive)
        assert again.created and list(again.deduplicated_artifacts) == []
        assert await listed(c) == ["classifier@1.0.0"]
        assert [f for f in stored_files(data) if f.startswith("tmp/")] == []


async def test_a_connection_reset_mid_stream_stores_nothing_and_the_retry_succeeds(tmp_path: Path) -> None:
    key = generate_keypair("reset-pub")
    archive = publish_bundle(tmp_path / "w", key, extra={"padding": os.urandom(3 << 20)})
    data = tmp_path / "data"
    requests = push_requests(archive, chunk_bytes=256 << 10)
    async with running_controller(data) as ctrl, connected(ctrl) as c:
        await c.trust(key)
        with FaultProxy(ctrl.port) as proxy:
            async with grpc.aio.insecure_channel(proxy.address) as channel:
                stub = fleet_pb2_grpc.FleetServiceStub(channel)
                half = len(requests) // 2
                call = stub.PushBundle(held_stream(requests[:half], asyncio.Event()), metadata=c.admin)
                await eventually(lambda: staged_bytes(data) > 0, "some bytes staged")
                proxy.reset_all()
                with pytest.raises(grpc.aio.AioRpcError) as dropped:
                    await call
                assert dropped.value.code() == grpc.StatusCode.UNAVAILABLE
            await eventually(lambda: stored_files(data) == [], "staged files removed")
            assert await listed(c) == []
            async with grpc.aio.insecure_channel(proxy.address) as channel:
                retry = await fleet_pb2_grpc.FleetServiceStub(channel).PushBundle(iter(requests), metadata=c.admin)
            assert retry.created
            assert proxy.stats.connections >= 2
        assert await listed(c) == ["classifier@1.0.0"]


async def test_two_clients_pushing_one_bundle_at_once_store_it_once(tmp_path: Path) -> None:
    key = generate_keypair("race-pub")
    archive = publish_bundle(tmp_path / "w", key, extra={"padding": os.urandom(1 << 20)})
    data = tmp_path / "data"
    async with running_controller(data) as ctrl, connected(ctrl) as a, connected(ctrl) as b:
        await a.trust(key)
        replies = await asyncio.gather(a.push(archive), b.push(archive))
        assert sorted(r.created for r in replies) == [False, True]
        assert replies[0].bundle.digest == replies[1].bundle.digest
        assert await listed(a) == ["classifier@1.0.0"]
        blobs = [f for f in stored_files(data) if f.startswith("sha256/")]
        assert len(blobs) == len({d for d in read_archive_for_upload(archive).manifest_obj.artifacts.values()})
        assert [f for f in stored_files(data) if f.startswith("tmp/")] == []


async def test_fleetctl_reports_an_archive_read_error_mid_stream_as_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The archive changes after fleetctl checked it (here: it is truncated): the read error inside the
    request iterator cancels the call and is raised as itself, not as grpc's "Exception iterating requests!"."""
    key = generate_keypair("iter-pub")
    good = publish_bundle(tmp_path / "w", key)
    checked = read_archive_for_upload(good)
    cut = hostile_archives(good, key, tmp_path)["truncated"]
    upload = BundleUpload(cut, checked.manifest_obj, checked.manifest, checked.signature)
    data = tmp_path / "data"
    async with running_controller(data) as ctrl, connected(ctrl) as c:
        await c.trust(key)
        with grpc.insecure_channel(ctrl.address) as channel, caplog.at_level(logging.DEBUG):
            stub = fleet_pb2_grpc.FleetServiceStub(channel)
            with pytest.raises(UnsafeArchiveError, match="is truncated"):
                await asyncio.to_thread(send_upload, stub, upload, c.admin)
        assert "Exception iterating requests" not in caplog.text
        await eventually(lambda: stored_files(data) == [], "staged files removed")
        await asyncio.sleep(0.3)
        assert await listed(c) == []
        with grpc.insecure_channel(ctrl.address) as channel:
            reply = await asyncio.to_thread(send_upload, fleet_pb2_grpc.FleetServiceStub(channel), checked, c.admin)
        assert reply.created


def test_a_controller_killed_mid_push_leaves_nothing_after_restart(cli: Cli, tmp_path: Path) -> None:
    """kill -9 during a push leaves staged temp files; the next start removes those untouched for an hour
    (a replica's push in progress is spared), no bundle was stored, and the push then succeeds."""
    key = generate_keypair("kill-pub")
    archive = publish_bundle(tmp_path / "w", key, extra={"padding": os.urandom(2 << 20)})
    ctrl, data = cli.ctrl, cli.ctrl.data_dir
    pub = tmp_path / f"{key.key_id}{PUBLIC_SUFFIX}"
    pub.write_bytes(key.public_pem())
    assert cli.run("keys", "trust", str(pub)).returncode == 0
    release = threading.Event()

    def held() -> Iterator[fleet_pb2.PushBundleRequest]:
        yield from push_requests(archive)
        release.wait(30)

    with grpc.insecure_channel(ctrl.address) as channel:
        call = fleet_pb2_grpc.FleetServiceStub(channel).PushBundle.future(
            held(), metadata=(("authorization", f"Bearer {ctrl.admin_token}"),)
        )
        wait_until(lambda: staged_bytes(data) == artifact_bytes(archive), 20, "all artifacts staged")
        ctrl.kill()
        with pytest.raises(grpc.RpcError):
            call.result(10)
        release.set()
    leftovers = list((data / "blobs" / "tmp").glob("*.part"))
    assert leftovers  # what a dead controller leaves behind
    hour_ago = time.time() - 3700
    for path in leftovers:
        os.utime(path, (hour_ago, hour_ago))
    ctrl.start()
    assert stored_files(data) == []
    listing = cli.run("get", "bundles", "-o", "json")
    assert json.loads(listing.stdout) == []
    pushed = cli.run("bundle", "push", str(archive))
    assert pushed.returncode == 0 and "pushed: classifier@1.0.0" in pushed.stdout, pushed
