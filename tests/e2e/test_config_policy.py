"""Policy precedence end to end (issue 10, sequence c): a real controller, one ``edge-runtime`` process, real
onnxruntime. The bundle's own ``canary:`` section takes effect on the device (the controller no longer
sends built-in defaults as explicit values), and a manifest overrides only the keys it sets.

Every bundle here is the same model (so every canary passes) with its own declared policy; the fleet config
sets no canary frame or second counts, only a short watch window. At 30 FPS:

- v2 declares ``min_frames: 40`` → its canary verdict comes at ~40 frames, not the default 300;
- a SiteConfig then sets ``min_frames: 60``; v3 declares ``min_frames: 40`` → its verdict comes at ~60;
- v4 declares ``min_seconds: 3`` and the site still sets only ``min_frames`` → its verdict comes after 3 s
  (not the default 30 s): the bundle's key the site did not set still applies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgefleet.contract.bundle_archive import pack_bundle
from edgefleet.contract.bundle_spec import BundleSpec
from edgefleet.contract.signing import SigningKey, sign_bundle
from edgefleet.v1 import common_pb2, fleet_pb2, telemetry_pb2
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_testing.bundles import SignedBundle
from edgefleet_testing.fleet import Controller, running_edge, start_controller
from edgefleet_testing.modelgen import make_classifier
from edgefleet_testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SIZE = 32
FLEET = """apiVersion: edgefleet.io/v1
kind: FleetConfig
metadata: {name: default}
spec:
  config:
    canary: {watch_window_s: 0.5, max_p95_ratio: 5}
"""
SITE = """apiVersion: edgefleet.io/v1
kind: SiteConfig
metadata: {name: lab, site: lab}
spec:
  config:
    canary: {min_frames: 60}
"""


def policy_bundle(workdir: Path, key: SigningKey, *, version: str, canary: dict[str, Any]) -> SignedBundle:
    """The same classifier every time, with ``canary`` as the bundle's declared policy."""
    workdir.mkdir(parents=True)
    model = make_classifier(workdir / "model.onnx", size=SIZE, seed=1, num_classes=4)
    spec = BundleSpec.from_dict(
        {
            "name": "classifier",
            "version": version,
            "model": str(model),
            "preprocess": {"size": [SIZE, SIZE], "layout": "nchw", "dtype": "float32", "scale": 1 / 255},
            "postprocess": {"kind": "classification", "top_k": 1},
            "labels": ["a", "b", "c", "d"],
            "latency": {"sla_ms": 500},
            "canary": canary,
            "providers": ["cpu"],
        },
        source=f"classifier-{version}.yaml",
        base_dir=workdir,
    )
    manifest = build_bundle(spec, workdir / "bundle", golden_count=1)
    sign_bundle(workdir / "bundle", key)
    archive = pack_bundle(workdir / "bundle", workdir / f"classifier-{version}.efb")
    return SignedBundle(archive, workdir / "bundle", manifest.digest, version, {})


def apply(ctl: Controller, text: str) -> None:
    ctl.apply("m.yaml", text, timeout=10)


def canary_verdict(ctl: Controller, device: str, digest: str) -> common_pb2.CanaryVerdict:
    """The device's passed canary-phase verdict for ``digest``, as the controller stored it."""

    def find() -> common_pb2.CanaryVerdict | None:
        events = ctl.fleet.ListDeviceEvents(
            fleet_pb2.ListDeviceEventsRequest(device=device, limit=500), metadata=ctl.md, timeout=10
        ).events
        for event in events:
            verdict = event.verdict
            if (
                event.kind == telemetry_pb2.DeviceEvent.KIND_CANARY_VERDICT
                and verdict.candidate_digest == digest
                and verdict.phase == "canary"
            ):
                return verdict
        return None

    found: common_pb2.CanaryVerdict = wait_until(find, 15, f"canary verdict of {digest[:19]} at the controller")
    assert found.outcome == common_pb2.CanaryVerdict.OUTCOME_PASS, list(found.reasons)
    return found


def layers(ctl: Controller, device: str) -> dict[str, tuple[Any, str]]:
    reply = ctl.fleet.GetEffectiveConfig(
        fleet_pb2.GetEffectiveConfigRequest(device=device), metadata=ctl.md, timeout=10
    )
    return {v.path: (json.loads(v.value_json), v.layer) for v in reply.values}


def test_the_bundle_canary_policy_applies_and_config_overrides_only_the_keys_it_sets(tmp_path: Path) -> None:
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        v1 = policy_bundle(tmp_path / "v1", key, version="1.0.0", canary={"min_frames": 30, "min_seconds": 0.2})
        v2 = policy_bundle(tmp_path / "v2", key, version="2.0.0", canary={"min_frames": 40, "min_seconds": 0.2})
        v3 = policy_bundle(tmp_path / "v3", key, version="3.0.0", canary={"min_frames": 40, "min_seconds": 0.2})
        v4 = policy_bundle(tmp_path / "v4", key, version="4.0.0", canary={"min_frames": 40, "min_seconds": 3})
        for bundle in (v1, v2, v3, v4):
            ctl.push(bundle)
        apply(ctl, FLEET)
        with running_edge(
            ctl.address, tmp_path / "dev", ctl.enrollment_token("lab"), name="dev", source="synthetic:30"
        ) as dev:
            ctl.set_desired("dev", v1.digest)
            dev.committed(v1.digest, timeout=30)

            # The bundle's declared min_frames (40), not the built-in 300: the verdict comes at ~40 frames.
            ctl.set_desired("dev", v2.digest)
            assert layers(ctl, "dev")["canary.min_frames"] == (40, "bundle classifier@2.0.0")
            dev.committed(v2.digest, timeout=30)
            two = canary_verdict(ctl, "dev", v2.digest)
            assert 40 <= two.frames < 100, two.frames
            assert two.baseline_digest == v1.digest

            # A SiteConfig sets min_frames 60: it wins over the bundle's 40 ...
            apply(ctl, SITE)
            ctl.set_desired("dev", v3.digest)
            assert layers(ctl, "dev")["canary.min_frames"] == (60, "SiteConfig/lab")
            dev.committed(v3.digest, timeout=30)
            three = canary_verdict(ctl, "dev", v3.digest)
            assert 60 <= three.frames < 100, three.frames

            # ... and only that key: v4's own min_seconds (3 s, not the default 30 s) still applies.
            ctl.set_desired("dev", v4.digest)
            got = layers(ctl, "dev")
            assert got["canary.min_seconds"] == (3, "bundle classifier@4.0.0")
            assert got["canary.min_frames"] == (60, "SiteConfig/lab")
            assert got["canary.deadline_s"] == (900, "defaults")
            dev.committed(v4.digest, timeout=40)
            four = canary_verdict(ctl, "dev", v4.digest)
            assert 3.0 <= four.seconds < 10.0, four.seconds
            assert four.frames >= 60
