"""After a refused golden bomb the fleet goes on: a real controller refuses a signed bundle whose golden.npz
inflates to 2 GiB (2 MB on the wire), stores nothing and cannot target it; the same publisher's good bundle,
pushed next, reaches a real ``edge-runtime`` whose golden preflight, canary and watch window pass, and it
commits."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_layout import MANIFEST_NAME
from edgefleet.v1 import fleet_pb2
from edgefleet_testing.bombs import NpyMember, npy_header, with_golden, write_zero_npz
from edgefleet_testing.bundles import SignedBundle, make_bundle
from edgefleet_testing.fleet import running_edge, start_controller

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FLOATS = (2 << 30) // 4
CONFIG = """apiVersion: edgefleet.io/v1
kind: FleetConfig
metadata: {name: default}
spec:
  config:
    canary: {min_frames: 60, min_seconds: 1, watch_window_s: 1, max_p95_ratio: 5}
"""


def test_a_refused_golden_bomb_leaves_the_fleet_able_to_take_a_good_bundle(tmp_path: Path) -> None:
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        good = make_bundle(tmp_path / "good", key, version="1.0.0", seed=1)
        golden = write_zero_npz(
            tmp_path / "bomb.npz",
            [
                NpyMember("input.input.npy", npy_header((1, FLOATS)), 4 * FLOATS),
                NpyMember("output.probs.npy", npy_header((1, 4)), 16, method="stored"),
            ],
        )
        bomb_dir, bomb_archive = with_golden(good.directory, golden, key, tmp_path / "bomb", version="6.6.6")
        bomb = SignedBundle(bomb_archive, bomb_dir, "", "6.6.6", {})
        with pytest.raises(grpc.RpcError) as refused:
            ctl.push(bomb)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "member 'input.input.npy' declares 2147483776 bytes uncompressed" in (refused.value.details() or "")
        listed = ctl.fleet.ListBundles(fleet_pb2.ListBundlesRequest(), metadata=ctl.md, timeout=10).bundles
        assert list(listed) == []
        bomb_digest = BundleManifest.from_json_bytes((bomb_dir / MANIFEST_NAME).read_bytes()).digest
        with pytest.raises(grpc.RpcError) as untargetable:
            ctl.set_desired("dev", bomb_digest)
        assert untargetable.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"bundle '{bomb_digest}' not found" in (untargetable.value.details() or "")

        assert ctl.push(good).created
        ctl.apply("fleet.yaml", CONFIG, timeout=10)
        with running_edge(ctl.address, tmp_path / "dev", ctl.enrollment_token("lab"), name="dev") as dev:
            ctl.set_desired("dev", good.digest)
            status = dev.committed(good.digest, timeout=40)
            assert status["update"]["committed"] == good.digest
