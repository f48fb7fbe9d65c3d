"""``edge-runtime profile`` on real bundles with real onnxruntime: signed archives verified with trusted keys,
bundle directories with ``--no-verify`` (labelled), JSON that ``fleetctl budget`` consumes, refusals with
exit code 2, and a profile reported to a real in-process controller with the device credential."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
import typer

from edge_runtime.agent.enroll import Credential, save_credential
from edge_runtime.cli import main as edge_runtime_main
from edgefleet.contract.signing import generate_keypair, sign_bundle
from edgefleet.v1 import fleet_pb2, telemetry_pb2
from edgefleet_testing.cli import invoke
from edgefleet_testing.controller import connected, publish_bundle, running_controller
from fleetctl.budget_cmds import budget
from tests.integration.test_device_precision import build_int8_bundle

pytestmark = pytest.mark.integration

fleet = typer.Typer()
fleet.command("budget")(budget)
fleet.command("noop")(lambda: None)
FAST = ["--seconds", "0.3", "--warmup", "3", "--max-frames", "60", "--variant-runs", "5"]


@dataclass(frozen=True)
class EdgeResult:
    """What one ``edge-runtime`` command did: its exit code, stdout and stderr."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke_edge(args: list[str]) -> EdgeResult:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = edge_runtime_main(args)
    # The command configures structlog to print to the captured stderr, which is gone once this returns.
    structlog.reset_defaults()
    return EdgeResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A signed .efb of a generated classifier and the directory holding its publisher's public key."""
    work = tmp_path_factory.mktemp("signed")
    key = generate_keypair("publisher-a")
    archive = publish_bundle(work, key)
    keys = work / "keys"
    keys.mkdir()
    (keys / "publisher-a.pub.pem").write_bytes(key.public_pem())
    return archive, keys


def test_signed_archive_prints_a_table(signed: tuple[Path, Path]) -> None:
    archive, keys = signed
    result = invoke_edge(["profile", "--bundle", str(archive), "--trusted", str(keys), *FAST])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "latency profile: classifier@1.0.0" in out and "UNVERIFIED" not in out
    for row in ("pre", "model", "post", "total", "CPUExecutionProvider", "fp32", "cpu_temp", "gpu_clock"):
        assert row in out, row
    assert "60 frames" in out


def test_json_profile_of_an_int8_bundle_feeds_fleetctl_budget(tmp_path: Path) -> None:
    bundle = build_int8_bundle(tmp_path / "work")
    result = invoke_edge(["profile", "--bundle", str(bundle), "--no-verify", "-o", "json", *FAST])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["verified"] is False
    assert doc["format"] == "edgefleet.latency-profile/v1" and doc["frames"] == 60
    assert doc["provider"] == "CPUExecutionProvider" and doc["active_providers"] == ["CPUExecutionProvider"]
    assert doc["variant"] in ("fp32", "int8") and doc["variant_choice"]["chosen"] == doc["variant"]
    assert set(doc["variant_choice"]["figures"]) == {"fp32", "int8"}
    total = doc["stages"]["total"]
    assert total["count"] == 60 and 0 < total["p50_ms"] <= total["p95_ms"] <= total["p99_ms"]
    assert doc["fps"] > 0 and doc["seconds"] > 0
    names = [r["name"] for r in doc["sensors_before"]]
    assert names[:4] == ["cpu_temp", "gpu_temp", "cpu_clock", "gpu_clock"]
    assert all((r["value"] is None) == r["missing"] for r in doc["sensors_after"])

    forced = invoke_edge(
        ["profile", "--bundle", str(bundle), "--no-verify", "--precision", "int8", "-o", "json", *FAST]
    )
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["precision"] == "int8"

    path = tmp_path / "profile.json"
    path.write_text(result.stdout)
    sla = f"{total['p95_ms'] * 10:.3f}ms"
    chosen = invoke(fleet, ["budget", "--sla", sla, "--profile", str(path)])
    assert chosen.exit_code == 0, chosen.output
    assert chosen.stdout.strip().splitlines()[-1].startswith("chosen: classifier@1.0.0 (p95 ")


def test_refusals_exit_2_with_a_reason(signed: tuple[Path, Path], tmp_path: Path) -> None:
    archive, keys = signed
    no_keys = invoke_edge(["profile", "--bundle", str(archive), *FAST])
    assert no_keys.exit_code == 2 and "pass --trusted DIR" in no_keys.stderr
    other = tmp_path / "other-keys"
    other.mkdir()
    (other / "publisher-b.pub.pem").write_bytes(generate_keypair("publisher-b").public_pem())
    untrusted = invoke_edge(["profile", "--bundle", str(archive), "--trusted", str(other), *FAST])
    assert untrusted.exit_code == 2 and "publisher-a" in untrusted.stderr
    missing = invoke_edge(["profile", "--bundle", str(tmp_path / "nope.efb"), "--no-verify", *FAST])
    assert missing.exit_code == 2 and "no such bundle directory" in missing.stderr
    bad_source = invoke_edge(["profile", "--bundle", str(archive), "--trusted", str(keys), "--source", "webcam", *FAST])
    assert bad_source.exit_code == 2 and "frame source" in bad_source.stderr
    unverified_report = invoke_edge(
        ["profile", "--bundle", str(archive), "--no-verify", "--report-to", "127.0.0.1:1", "--data-dir", str(tmp_path)],
    )
    assert unverified_report.exit_code == 2 and "refuses an unverified bundle" in unverified_report.stderr


async def test_report_to_a_real_controller(signed: tuple[Path, Path], tmp_path: Path) -> None:
    archive, _ = signed
    key = generate_keypair("publisher-c")
    async with running_controller(tmp_path / "controller") as ctrl, connected(ctrl) as c:
        device_id, credential = await c.enroll("warehouse-a", "cam-1")
        data_dir = tmp_path / "device"
        # The publisher keys the controller hands out at enrollment verify the bundle: no --trusted needed.
        save_credential(
            data_dir,
            Credential(device_id, credential, "warehouse-a", ctrl.address, {"publisher-c": key.public_pem().decode()}),
        )
        bundle = build_int8_bundle(tmp_path / "work")
        sign_bundle(bundle, key)
        args = ["profile", "--bundle", str(bundle), "--data-dir", str(data_dir), "--report-to", ctrl.address, *FAST]
        result = await asyncio.to_thread(invoke_edge, args)
        assert result.exit_code == 0, result.output
        assert "1 event(s) accepted" in result.stderr
        request = fleet_pb2.ListDeviceEventsRequest(device=device_id)
        # Fleet.fleet is an aio stub typed with the sync stubs' signatures.
        events = await c.fleet.ListDeviceEvents(request, metadata=c.admin)  # type: ignore[misc]
        profiles = [e for e in events.events if e.kind == telemetry_pb2.DeviceEvent.KIND_PROFILE]
        assert len(profiles) == 1
        reported = profiles[0].profile
        assert reported.provider == "CPUExecutionProvider" and reported.frames == 60 and reported.source == "profile"
        assert reported.total.count == 60 and reported.total.p95_ms > 0
        assert reported.precision in ("fp32", "int8") and reported.hardware_class
    assert archive.is_file()
