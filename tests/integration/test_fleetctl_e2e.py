"""fleetctl end to end: the real CLI (a subprocess, as an operator runs it) against a real
``edgefleet-controller serve`` process. Outputs are parsed the way scripts would parse them; errors must
be one line on stderr with a non-zero exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import yaml

from edgefleet.contract.bundle_upload import read_archive_for_upload
from edgefleet.contract.signing import PRIVATE_SUFFIX, PUBLIC_SUFFIX, generate_keypair
from edgefleet.v1 import common_pb2, device_pb2, device_pb2_grpc, telemetry_pb2
from edgefleet_controller.store.blobs import BlobStore
from edgefleet_testing.controller import REPO, ControllerProcess, bearer, free_port, publish_bundle

pytestmark = pytest.mark.integration


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Env:
    ctrl: ControllerProcess
    work: Path
    archive: Path
    pub_key: Path

    def run(self, *args: str, token: str | None = None, address: str | None = None, tty: bool = False) -> Result:
        env = dict(os.environ)
        env.update(
            EDGEFLEET_CONTROLLER=address or self.ctrl.address,
            EDGEFLEET_TOKEN=token if token is not None else self.ctrl.admin_token,
            XDG_CONFIG_HOME=str(self.work / "xdg"),
            PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
            COLUMNS="100",
        )
        env.pop("FORCE_COLOR", None)
        if tty:
            env["FORCE_COLOR"] = "1"  # rich renders the live progress bar as on a terminal
        exe = Path(sys.executable).with_name("fleetctl")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from fleetctl.main import run; run()"]
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=60, cwd=str(REPO))
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, **kw: object) -> Result:
        result = self.run(*args, **kw)  # type: ignore[arg-type]
        assert result.code == 0, (args, result)
        return result

    def fails(self, *args: str, **kw: object) -> Result:
        result = self.run(*args, **kw)  # type: ignore[arg-type]
        assert result.code != 0, (args, result)
        lines = [line for line in result.err.splitlines() if line.strip()]
        assert len(lines) == 1, (args, result.err)
        assert "Traceback" not in result.err
        return result


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("fleetctl")
    key = generate_keypair("release-test")
    pub = work / f"{key.key_id}{PUBLIC_SUFFIX}"
    key.save(work / f"{key.key_id}{PRIVATE_SUFFIX}", pub)
    archive = publish_bundle(work, key)
    ctrl = ControllerProcess(work / "data")
    ctrl.start()
    try:
        yield Env(ctrl, work, archive, pub)
        assert ctrl.terminate() == 0
    finally:
        ctrl.kill()


def enroll(address: str, token: str, name: str, tags: dict[str, str]) -> tuple[str, str]:
    with grpc.insecure_channel(address) as channel:
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        reply = stub.Enroll(
            device_pb2.EnrollRequest(
                enrollment_token=token,
                name=name,
                tags=tags,
                hardware=common_pb2.HardwareProfile(hardware_class="jetson-orin-nano"),
            ),
            timeout=10,
        )
        stub.Sync(
            device_pb2.SyncRequest(wait_s=1, reported=common_pb2.ReportedState(health=common_pb2.HEALTH_SERVING)),
            metadata=bearer(reply.device_credential),
            timeout=10,
        )
        return reply.device_id, reply.device_credential


def _table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of a rich table (``│ a │ b │``), stripped."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.strip().startswith("│")
    ]


def described_digest(env: Env, device: str) -> str:
    return str(json.loads(env.ok("describe", "device", device, "-o", "json").out)["desired"]["config_digest"])


def test_fleetctl_operates_a_real_controller(env: Env) -> None:
    trusted = env.ok("keys", "trust", str(env.pub_key))
    assert "trusted key release-test" in trusted.out

    created = env.ok("token", "create", "--site", "warehouse-a", "--expires", "1h", "--max-uses", "5")
    enroll_token = created.out.strip()
    assert enroll_token.startswith("eft_") and "\n" not in enroll_token
    assert "for site warehouse-a" in created.err
    device_id, _ = enroll(env.ctrl.address, enroll_token, "wa-dock-door-3", {"camera": "thermal"})
    enroll(env.ctrl.address, enroll_token, "wa-aisle-1", {"camera": "rgb"})

    viewer = env.ok("token", "operator", "--name", "dashboard", "--role", "viewer").out.strip()
    assert viewer.startswith("eot_")

    applied = env.ok(
        "apply",
        "-f",
        "manifests/fleet.yaml",
        "-f",
        "manifests/sites",
        "-f",
        "manifests/devices",
    )
    assert "FleetConfig/default created" in applied.out
    assert "SiteConfig/warehouse-a created" in applied.out
    assert "2 device(s) get a new config" in applied.out

    pushed = env.ok("bundle", "push", str(env.archive), tty=True)
    assert "pushed: classifier@1.0.0 sha256:" in pushed.out
    assert "push classifier@1.0.0" in pushed.err  # the progress bar's description
    assert "100%" in pushed.err or "━" in pushed.err
    again = env.ok("bundle", "push", str(env.archive))
    assert "already present: classifier@1.0.0" in again.out and "restored" not in again.out
    # The model blob is found corrupt and moved aside (the controller's serve check, through its blob store);
    # pushing the bundle again stores it again and says so.
    upload = read_archive_for_upload(env.archive)
    model = next(a for a in upload.manifest_obj.artifacts.values() if a.role == "model")
    blobs = BlobStore(env.ctrl.data_dir / "blobs")
    _, hashed = blobs.hash_blob(model.digest)
    assert blobs.quarantine(model.digest, "sha256:" + "0" * 64, "test", datetime.now(UTC), hashed) is not None
    restored = env.ok("bundle", "push", str(env.archive))
    assert "already present: classifier@1.0.0" in restored.out
    assert f"restored quarantined artifacts: {model.digest} (stored again from this push)" in restored.out

    table = env.ok("get", "devices").out
    assert "wa-dock-door-3" in table and "warehouse-a" in table and "serving" in table
    as_json = json.loads(env.ok("get", "devices", "-o", "json", token=viewer).out)
    assert sorted(d["name"] for d in as_json) == ["wa-aisle-1", "wa-dock-door-3"]
    as_yaml = yaml.safe_load(env.ok("get", "devices", "-o", "yaml", "--tag", "camera=thermal").out)
    assert [d["id"] for d in as_yaml] == [device_id]
    assert as_yaml[0]["desired"]["config_digest"].startswith("sha256:")
    assert len(as_yaml[0]["desired"]["config_digest"]) == 71  # not folded by the terminal width
    assert env.ok("get", "devices", "-o", "wide").out.count("┳") == 10  # 6 columns + 5 wide ones

    bundles = json.loads(env.ok("get", "bundles", "-o", "json").out)
    assert [(b["name"], b["version"], b["key_id"]) for b in bundles] == [("classifier", "1.0.0", "release-test")]
    digest = bundles[0]["digest"]
    assert "classifier" in env.ok("get", "bundles").out

    set_bundle = env.ok("devices", "set-bundle", "classifier@1.0.0", "--device", "wa-dock-door-3")
    assert "1 device(s) now want classifier@1.0.0" in set_bundle.out
    described = json.loads(env.ok("describe", "device", "wa-dock-door-3", "-o", "json").out)
    assert described["desired"]["bundle_digest"] == digest
    text = env.ok("describe", "device", device_id).out
    assert "wa-dock-door-3" in text and digest in text.replace("\n", "")

    sites = yaml.safe_load(env.ok("get", "sites", "-o", "yaml").out)
    assert [(s["site"], s["devices"]) for s in sites] == [("warehouse-a", 2)]
    assert "warehouse-a" in env.ok("get", "sites").out

    # Per key, the value and the layer it came from: defaults < the desired bundle's declared policy <
    # FleetConfig < SiteConfig < tag DeviceConfig < device DeviceConfig; a layer wins only the keys it sets.
    effective = env.ok("config", "effective", "wa-dock-door-3").out
    assert "layers: defaults < bundle classifier@1.0.0 < FleetConfig/default < SiteConfig/warehouse-a" in effective
    rows = {cells[0]: cells[1:] for cells in _table_rows(effective)}
    assert rows["sla.thermal_buffer"] == ["0.25", "DeviceConfig/dock-door-3"]
    assert rows["inference.conf_threshold"] == ["0.35", "DeviceConfig/thermal-cameras"]
    assert rows["canary.min_frames"] == ["600", "SiteConfig/warehouse-a"]
    assert rows["canary.min_seconds"] == ["30", "bundle classifier@1.0.0"]  # the bundle's own canary section
    assert rows["canary.deadline_s"] == ["900", "FleetConfig/default"]
    as_json = json.loads(env.ok("config", "effective", "wa-aisle-1", "-o", "json").out)
    values = {v["path"]: (v["value"], v["layer"]) for v in as_json["values"]}
    # No desired or running bundle: nothing between the defaults and the manifests.
    assert as_json["layers"] == ["defaults", "FleetConfig/default", "SiteConfig/warehouse-a"]
    assert values["canary.min_seconds"] == (30, "defaults")
    assert values["canary.min_frames"] == (600, "SiteConfig/warehouse-a")
    assert values["sla.latency_ms"] == (50, "SiteConfig/warehouse-a")
    # The digest is that of the config the device receives: manifest keys only, no defaults.
    assert "min_seconds" not in as_json["config"]["canary"] and as_json["config"]["sla"]["latency_ms"] == 50
    assert as_json["digest"] == described_digest(env, "wa-aisle-1")


def test_describe_device_shows_the_newest_events(env: Env) -> None:
    token = env.ok("token", "create", "--site", "warehouse-b").out.strip()
    device_id, cred = enroll(env.ctrl.address, token, "wb-events-1", {})
    with grpc.insecure_channel(env.ctrl.address) as channel:
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        for n in range(1, 16):  # one at a time: arrival order is the order they happened
            event = telemetry_pb2.DeviceEvent(
                event_id=f"e{n}", kind=telemetry_pb2.DeviceEvent.KIND_ALERT, reason=f"alert-{n:02d}"
            )
            stub.ReportEvent(device_pb2.ReportEventRequest(events=[event]), metadata=bearer(cred), timeout=10)
    text = env.ok("describe", "device", device_id).out
    assert "events (the newest 10, newest last):" in text
    shown = [line.rsplit(" ", 1)[-1] for line in text.splitlines() if "alert-" in line]
    assert shown == [f"alert-{n:02d}" for n in range(6, 16)]


def test_fleetctl_errors_are_one_line(env: Env) -> None:
    viewer = env.ok("token", "operator", "--name", "reader", "--role", "viewer").out.strip()
    denied = env.fails("bundle", "push", str(env.archive), token=viewer)
    assert "PERMISSION_DENIED" in denied.err and "viewer" in denied.err

    missing = env.fails("describe", "device", "no-such-device")
    assert "NOT_FOUND" in missing.err and "no-such-device" in missing.err

    bad = env.work / "bad.yaml"
    bad.write_text(
        "apiVersion: edgefleet.io/v1\nkind: FleetConfig\nmetadata:\n  name: x\n"
        "spec:\n  config:\n    sla:\n      latency_ms: -5\n"
    )
    invalid = env.fails("apply", "-f", str(bad))
    assert invalid.code == 2
    assert "INVALID_ARGUMENT" in invalid.err and "bad.yaml:8" in invalid.err

    unauth = env.fails("get", "devices", token="eot_nope.nope")
    assert "UNAUTHENTICATED" in unauth.err

    down = env.fails("get", "sites", address=f"127.0.0.1:{free_port()}")
    assert "UNAVAILABLE" in down.err and "is the controller running" in down.err

    fmt = env.run("get", "devices", "-o", "xml")
    assert fmt.code == 2 and "xml" in fmt.err


def sync_code(address: str, credential: str) -> grpc.StatusCode:
    """What the controller answers a device's Sync with this credential."""
    with grpc.insecure_channel(address) as channel:
        try:
            device_pb2_grpc.DeviceServiceStub(channel).Sync(
                device_pb2.SyncRequest(wait_s=0), metadata=bearer(credential), timeout=10
            )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.slow
def test_fleetctl_revokes_tokens_and_disables_rotates_deletes_devices(env: Env) -> None:
    ci = env.ok("token", "operator", "--name", "ci-revoke", "--role", "operator")
    assert "expires 20" in ci.err  # the default lifetime (90 days), not "never"
    zero = env.run("token", "operator", "--name", "x", "--expires", "0")  # no longer "no expiry": a usage error
    assert zero.code == 2 and "never" in zero.err
    eternal = env.ok("token", "operator", "--name", "break-glass", "--role", "viewer", "--expires", "never")
    assert "never expires" in eternal.err and "expires never" in eternal.err
    env.ok("get", "sites", token=ci.out.strip())
    listed = {t["name"]: t for t in json.loads(env.ok("token", "list", "-o", "json").out)}
    assert "last_used_at" in listed["ci-revoke"] and "last_used_at" not in listed["break-glass"]
    assert "expires_at" not in listed["break-glass"]
    rows = {r[1]: r for r in _table_rows(env.ok("token", "list").out)}
    assert rows["ci-revoke"][3] == "active" and rows["ci-revoke"][5].endswith("ago")
    assert rows["break-glass"][4] == "never" and rows["break-glass"][5] == "never"

    assert "revoked operator token" in env.ok("token", "revoke", listed["ci-revoke"]["id"]).out
    assert "UNAUTHENTICATED" in env.fails("get", "sites", token=ci.out.strip()).err
    own = env.ctrl.admin_token.partition(".")[0]  # eot_<id>: the bootstrap admin, this fleetctl's token
    asked = env.run("token", "revoke", own)
    assert asked.code == 2 and "this fleetctl is using" in asked.err and "--yes" in asked.err
    last = env.run("token", "revoke", own, "--yes")  # the last admin token: refused without --force-last-admin
    assert last.code != 0 and "warning: revoking the token this fleetctl is using" in last.err
    assert "FAILED_PRECONDITION" in last.err and "--force-last-admin" in last.err and "admin.token" in last.err
    env.ok("get", "sites")  # nothing was revoked
    unknown = env.fails("token", "revoke", "0123456789abcdef").err
    assert "NOT_FOUND" in unknown and "fleetctl token list" in unknown and "shown once" in unknown

    token = env.ok("token", "create", "--site", "warehouse-r").out.strip()
    device_id, old = enroll(env.ctrl.address, token, "rv-1", {})
    viewer = eternal.out.strip()
    assert "PERMISSION_DENIED" in env.fails("device", "disable", "rv-1", token=viewer).err
    assert "disabled device rv-1" in env.ok("device", "disable", "rv-1").out
    assert sync_code(env.ctrl.address, old) == grpc.StatusCode.PERMISSION_DENIED
    assert [r[2] for r in _table_rows(env.ok("get", "devices", "--site", "warehouse-r").out)] == ["disabled"]
    assert [r[0] for r in _table_rows(env.ok("get", "devices", "--health", "disabled").out)] == ["rv-1"]
    described = env.ok("describe", "device", "rv-1").out
    assert (
        "health:      disabled" in described and f"re-enable it with: fleetctl device enable {device_id}" in described
    )
    env.ok("device", "enable", device_id)
    assert _table_rows(env.ok("get", "devices", "--health", "disabled").out) == []
    assert "disabled:" not in env.ok("describe", "device", "rv-1").out
    assert sync_code(env.ctrl.address, old) == grpc.StatusCode.OK

    rotated = env.ok("device", "rotate-credential", "rv-1")
    new = rotated.out.strip()
    assert new.startswith(f"edc_{device_id}.") and "credential.json" in rotated.err
    assert sync_code(env.ctrl.address, old) == grpc.StatusCode.UNAUTHENTICATED
    assert sync_code(env.ctrl.address, new) == grpc.StatusCode.OK

    refused = env.run("device", "delete", "rv-1")
    assert refused.code == 2 and "--yes" in refused.err
    assert sync_code(env.ctrl.address, new) == grpc.StatusCode.OK  # the refused delete changed nothing
    assert f"deleted device rv-1 ({device_id})" in env.ok("device", "delete", "rv-1", "--yes").out
    assert sync_code(env.ctrl.address, new) == grpc.StatusCode.UNAUTHENTICATED
    assert "NOT_FOUND" in env.fails("device", "delete", device_id, "--yes").err

    # a bare id that no operator token has is an enrollment token's: revoked as before
    enrollment_id = token.partition(".")[0].removeprefix("eft_")
    assert enrollment_id in env.ok("token", "revoke", enrollment_id).out
    with pytest.raises(grpc.RpcError) as refused_enroll:
        enroll(env.ctrl.address, token, "rv-2", {})
    assert refused_enroll.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
