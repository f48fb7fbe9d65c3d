"""The shadow canary end to end: a real controller, one ``edge-runtime`` process, real onnxruntime.

v1 is committed (a first-ever bundle: canary alone, then the watch window); v2, whose confidences are
shifted by construction, is pushed next. Its shadow canary on live frames must FAIL with the drift reason,
the device must stay on v1 without a dropped frame, and the controller must see ``ROLLED_BACK`` with the
verdict's numbers and reasons, both in ``ReportedState.last_verdict`` and as a canary verdict event.
"""

from __future__ import annotations

import itertools
from pathlib import Path

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
# Small numbers keep the test short: at 30 FPS a canary needs ~2 s, the watch window 1 s.
CONFIG = """apiVersion: edgefleet.io/v1
kind: FleetConfig
metadata: {name: default}
spec:
  config:
    canary: {min_frames: 60, min_seconds: 1, watch_window_s: 1, max_p95_ratio: 5}
"""


def shifted_bundle(workdir: Path, key: SigningKey, *, version: str, logit_shift: float) -> SignedBundle:
    workdir.mkdir(parents=True)
    model = make_classifier(workdir / "model.onnx", size=SIZE, seed=1, num_classes=4, logit_shift=logit_shift)
    spec = BundleSpec.from_dict(
        {
            "name": "classifier",
            "version": version,
            "model": str(model),
            "preprocess": {"size": [SIZE, SIZE], "layout": "nchw", "dtype": "float32", "scale": 1 / 255},
            "postprocess": {"kind": "classification", "top_k": 1},
            "labels": ["a", "b", "c", "d"],
            "latency": {"sla_ms": 500},
            "providers": ["cpu"],
        },
        source=f"classifier-{version}.yaml",
        base_dir=workdir,
    )
    manifest = build_bundle(spec, workdir / "bundle", golden_count=2)
    sign_bundle(workdir / "bundle", key)
    archive = pack_bundle(workdir / "bundle", workdir / f"classifier-{version}.efb")
    return SignedBundle(
        archive=archive,
        directory=workdir / "bundle",
        digest=manifest.digest,
        version=version,
        artifact_digests={role: a.digest for role, a in manifest.artifacts.items()},
    )


def apply(ctl: Controller) -> None:
    ctl.apply("fleet.yaml", CONFIG, timeout=10)


def test_a_regressed_bundle_fails_its_canary_and_the_device_stays_on_v1(tmp_path: Path) -> None:
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        v1 = shifted_bundle(tmp_path / "v1", key, version="1.0.0", logit_shift=0.0)
        v2 = shifted_bundle(tmp_path / "v2", key, version="2.0.0-regressed", logit_shift=1.0)
        ctl.push(v1)
        ctl.push(v2)
        apply(ctl)
        with running_edge(ctl.address, tmp_path / "dev", ctl.enrollment_token("lab"), name="dev") as dev:
            ctl.set_desired("dev", v1.digest)
            dev.committed(v1.digest, timeout=30)
            first = wait_until(
                lambda: (r := ctl.device("dev").reported).update_state == common_pb2.UPDATE_STATE_COMMITTED and r,
                15,
                "controller sees v1 committed",
            )
            # v1 was a first-ever bundle: judged alone, and its last verdict is the passed watch window.
            assert first.last_verdict.candidate_digest == v1.digest
            assert first.last_verdict.outcome == common_pb2.CanaryVerdict.OUTCOME_PASS

            ctl.set_desired("dev", v2.digest)
            reported = wait_until(
                lambda: (r := ctl.device("dev").reported).update_state == common_pb2.UPDATE_STATE_ROLLED_BACK and r,
                30,
                "controller sees v2 rolled back",
            )
            verdict = reported.last_verdict
            assert verdict.outcome == common_pb2.CanaryVerdict.OUTCOME_FAIL
            assert verdict.phase == "canary"
            assert verdict.candidate_digest == v2.digest and verdict.baseline_digest == v1.digest
            assert verdict.frames >= 60 and verdict.candidate_latency.count == verdict.frames
            assert verdict.ks_p_value < 0.01
            assert any(r.startswith("confidence drift") for r in verdict.reasons), verdict.reasons
            assert "canary failed: confidence drift" in reported.update_reason
            assert reported.running_bundle_digest == v1.digest

            status = dev.wait_for(lambda s: s["serving"] == v1.digest, 5, "v1 serving")
            frames = status["frames_inferred"]
            status = dev.wait_for(lambda s: s["frames_inferred"] > frames + 15, 10, "frames keep coming")
            assert status["update"]["rejected"] == v2.digest

            events = ctl.fleet.ListDeviceEvents(
                fleet_pb2.ListDeviceEventsRequest(device="dev", limit=200), metadata=ctl.md, timeout=10
            ).events
            verdicts = [e for e in events if e.kind == telemetry_pb2.DeviceEvent.KIND_CANARY_VERDICT]
            failed = [e for e in verdicts if e.verdict.candidate_digest == v2.digest]
            assert [e.verdict.outcome for e in failed] == [common_pb2.CanaryVerdict.OUTCOME_FAIL]
            assert failed[0].verdict.reasons == verdict.reasons
            states = [
                e.to_state
                for e in events
                if e.bundle_digest == v2.digest and e.kind == telemetry_pb2.DeviceEvent.KIND_UPDATE_STATE
            ]
            assert common_pb2.UPDATE_STATE_TRIAL not in states and common_pb2.UPDATE_STATE_COMMITTED not in states

    served = dev.frames()
    ids = [frame_id for frame_id, _ in served]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a frame id is missing or repeated"
    digests = [digest for _, digest in served]
    assert v2.digest not in digests, "the candidate served a frame during its canary"
    assert [k for k, _ in itertools.groupby(digests)] == [v1.digest]
