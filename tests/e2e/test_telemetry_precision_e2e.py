"""The served precision variant reaches the operator: a real ``edge-runtime`` device on a real controller
process serves a bundle with several precision variants (it measures them and picks one), its metric windows
name the variant, the controller stores it per window, and ``QueryTelemetry`` / ``fleetctl telemetry`` show
it — the variant the device reports having chosen, with that variant's own latency row under
``--by-precision``.

Which variant wins depends on this CPU, so the test compares with the device's own reported choice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from edgefleet.contract.bundle_archive import pack_bundle
from edgefleet.contract.signing import sign_bundle
from edgefleet.v1 import fleet_pb2
from edgefleet_testing.bundles import SignedBundle
from edgefleet_testing.fleet import Controller, start_controller, start_edge
from edgefleet_testing.waiting import wait_until
from tests.integration.precision_variants_bundle import build_variant_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def chosen(ctl: Controller, device: str) -> str | None:
    value = ctl.device(device).reported.details.fields.get("precision")
    if value is None or not value.HasField("struct_value"):
        return None
    name = MessageToDict(value.struct_value).get("chosen")
    return str(name) if name else None


def rows(ctl: Controller, *, by_precision: bool) -> list[fleet_pb2.TelemetryRow]:
    request = fleet_pb2.QueryTelemetryRequest(group_by="device", device="dev1", by_precision=by_precision)
    return list(ctl.fleet.QueryTelemetry(request, metadata=ctl.md, timeout=10).rows)


def test_the_variant_a_device_serves_is_in_its_stored_telemetry(tmp_path: Path) -> None:
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        directory, manifest = build_variant_bundle(tmp_path / "bundle", size=64, extra_matmuls=2)
        sign_bundle(directory, key)
        archive = pack_bundle(directory, tmp_path / "variants.efb")
        ctl.push(SignedBundle(archive, directory, manifest.digest, manifest.version, {}))
        ctl.apply_config(watch_window_s=0.5, extra="    telemetry: {window_s: 1}\n")
        token = ctl.enrollment_token("lab")
        dev = start_edge(ctl.address, tmp_path / "dev1", token, name="dev1")
        try:
            ctl.set_desired("dev1", manifest.digest)
            dev.committed(manifest.digest, timeout=120)
            served = wait_until(lambda: chosen(ctl, "dev1"), 30, "details.precision reported")

            def named() -> list[fleet_pb2.TelemetryRow] | None:
                found = rows(ctl, by_precision=True)
                return found if any(r.precision == served and r.frames > 0 for r in found) else None

            split = wait_until(named, 60, f"a stored window naming {served}")
            assert {r.key for r in split} == {ctl.device("dev1").id}
            # every variant the windows name is the one the device chose (windows before the choice name none)
            assert {r.precision for r in split} <= {served, ""}, [(r.precision, r.frames) for r in split]
            mine = next(r for r in split if r.precision == served)
            assert list(mine.precisions) == [served] and mine.latency_e2e.count > 0
            (whole,) = rows(ctl, by_precision=False)
            assert list(whole.precisions) == [served]

            top = ctl.fleetctl("telemetry", "top")
            cells = next(
                [c.strip() for c in ln.strip().strip("│┃").split("│")] for ln in top.splitlines() if "dev1" in ln
            )
            assert cells[:2] == ["dev1", served], top
            queried: list[dict[str, Any]] = json.loads(
                ctl.fleetctl("telemetry", "query", "--by-precision", "-o", "json")
            )
            assert served in {r.get("precision", "") for r in queried}
        finally:
            assert dev.terminate() == 0
