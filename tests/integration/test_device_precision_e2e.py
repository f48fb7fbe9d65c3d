"""A real ``edge-runtime`` device on a real controller serves a bundle with four servable precision variants
(FP32, S8S8 and U8S8 QDQ INT8, FP16) and one that failed its accuracy gate: it measures them on itself, serves
the one the rule picks, reports the choice with its numbers (``details.precision``, a ``precision_chosen``
event) and ``fleetctl describe device`` shows it. After a restart the device measures again and reports the
choice of the engine it serves now.

Which variant wins depends on this CPU (QDQ INT8 is slower than FP32 on a CPU without fast INT8 kernels), so
the test checks the choice against the rule applied to the device's own reported figures, not a fixed name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from edgefleet.contract.bundle_archive import pack_bundle
from edgefleet.contract.precision import LatencyFigures, select_precision
from edgefleet.contract.signing import sign_bundle
from edgefleet.v1 import fleet_pb2, telemetry_pb2
from edgefleet_testing.bundles import SignedBundle
from edgefleet_testing.fleet import Controller, start_controller, start_edge
from edgefleet_testing.waiting import wait_until
from tests.integration.precision_variants_bundle import build_variant_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SERVABLE = ["fp16", "fp32", "int8", "int8-u8s8"]


def reported_choice(ctl: Controller, device: str) -> dict[str, Any] | None:
    value = ctl.device(device).reported.details.fields.get("precision")
    return MessageToDict(value.struct_value) if value is not None and value.HasField("struct_value") else None


def precision_events(ctl: Controller, device: str) -> list[telemetry_pb2.DeviceEvent]:
    reply = ctl.fleet.ListDeviceEvents(
        fleet_pb2.ListDeviceEventsRequest(device=device, limit=100), metadata=ctl.md, timeout=10
    )
    return [e for e in reply.events if e.kind == telemetry_pb2.DeviceEvent.KIND_PRECISION_CHOSEN]


def check_choice(choice: dict[str, Any]) -> None:
    """The reported choice is the rule's on the device's own figures, with every servable variant measured."""
    figures = {
        name: LatencyFigures(f["p50_ms"], f["p90_ms"], f["mean_ms"], int(f["runs"]))
        for name, f in choice["figures"].items()
    }
    assert sorted(figures) == SERVABLE
    assert choice["chosen"] == select_precision(figures, eligible=set(figures)).chosen
    assert choice["speedup"] == pytest.approx(figures["fp32"].p50_ms / figures[choice["chosen"]].p50_ms, rel=1e-3)
    assert choice["provider"] == "CPUExecutionProvider" and choice["measured_on"] == "device"
    assert choice["requested"] == "auto" and choice["reference"] == "fp32"
    assert choice["refused"] == {"int8-lossy": "int8-lossy: accuracy loss 5.00% is above the bound 1.00%"}


def test_device_serves_and_reports_its_measured_precision_across_a_restart(tmp_path: Path) -> None:
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        # The bundle's default golden tolerance (1e-3): whichever variant wins, the preflight judges it with the
        # tolerance the builder recorded for that variant (FP32's golden outputs are off by INT8's error).
        directory, manifest = build_variant_bundle(tmp_path / "bundle", size=128, extra_matmuls=6)
        sign_bundle(directory, key)
        archive = pack_bundle(directory, tmp_path / "variants.efb")
        ctl.push(SignedBundle(archive, directory, manifest.digest, manifest.version, {}))
        ctl.apply_config(watch_window_s=0.5)
        token = ctl.enrollment_token("lab")
        dev = start_edge(ctl.address, tmp_path / "dev1", token, name="dev1")
        try:
            ctl.set_desired("dev1", manifest.digest)
            dev.committed(manifest.digest, timeout=120)
            first = wait_until(lambda: reported_choice(ctl, "dev1"), 30, "details.precision reported")
            check_choice(first)
            events = wait_until(lambda: precision_events(ctl, "dev1") or None, 30, "a precision_chosen event")
            assert events[-1].bundle_digest == manifest.digest
            assert events[-1].reason.startswith(f"{first['chosen']} (")
            assert events[-1].numbers["p50_ms.fp32"] > 0 and "p50_ms.int8-lossy" not in events[-1].numbers

            text = ctl.fleetctl("describe", "device", "dev1")
            line = next(ln for ln in text.splitlines() if ln.startswith("precision:"))
            assert line.startswith(f"precision:   {first['chosen']} ({first['kind']}) on CPUExecutionProvider, ")
            speedup = f"{first['speedup']:.1f}x vs fp32: "
            assert speedup in line and line.endswith("(measured on the device)")
            for name in SERVABLE:
                assert f" {name} " in line.replace("fp16 p50", "fp16")
            assert "refused int8-lossy: accuracy loss 5.00% is above the bound 1.00%" in text
            assert "precision_chosen" in text
            described = json.loads(ctl.fleetctl("describe", "device", "dev1", "-o", "json"))
            assert described["reported"]["details"]["precision"]["chosen"] == first["chosen"]
            served_before = len(precision_events(ctl, "dev1"))
        finally:
            assert dev.terminate() == 0

        # A restart loads the committed bundle again: the choice is made again, on this device, now.
        dev = start_edge(ctl.address, tmp_path / "dev1", token, name="dev1")
        try:
            dev.committed(manifest.digest, timeout=120)
            wait_until(
                lambda: len(precision_events(ctl, "dev1")) > served_before or None, 60, "a new precision_chosen event"
            )
            again = wait_until(
                lambda: (c := reported_choice(ctl, "dev1")) is not None and c["figures"] != first["figures"] and c,
                30,
                "the restarted device's choice reported",
            )
            check_choice(again)
            assert precision_events(ctl, "dev1")[-1].reason.startswith(f"{again['chosen']} (")
        finally:
            assert dev.terminate() == 0
