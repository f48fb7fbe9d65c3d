"""Golden zip bombs and oversized members, signed by a trusted publisher, refused at both ends with bounded
memory: by a real ``edgefleet-controller serve`` process over gRPC PushBundle (its VmHWM measured before and
after), and by the device's verification and golden preflight (run in a child process, peak RSS measured);
after each refusal a good bundle from the same publisher still pushes, verifies and passes its golden
preflight on a real onnxruntime engine."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from edge_runtime.agent.canary.evaluator import golden_check
from edge_runtime.agent.update.switcher import load_engine
from edge_runtime.agent.update.verifier import SignatureVerifier
from edgefleet.contract.bundle_layout import MANIFEST_NAME
from edgefleet.contract.bundle_limits import MAX_GOLDEN_BYTES
from edgefleet.contract.bundle_sections import ArtifactRef
from edgefleet.contract.bundle_upload import read_archive_for_upload
from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.signing import SigningKey, generate_keypair, signature_document
from edgefleet.v1 import fleet_pb2
from edgefleet_testing.bombs import NpyMember, measure_peak_rss, npy_header, with_golden, write_zero_npz
from edgefleet_testing.bundles import SignedBundle, make_bundle
from edgefleet_testing.controller import ControllerProcess, Fleet, connected

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 1 << 20
#: The brief's bound: the refusing process's peak RSS stays below its baseline + 200 MB.
RSS_BOUND = 200 * 1000 * 1000
FLOATS_2GIB = (2 << 30) // 4
OUTPUT = NpyMember("output.probs.npy", npy_header((1, 4)), 16, method="stored")

#: file name → (members, what the refusal names)
BOMBS: dict[str, tuple[list[NpyMember], str]] = {
    "honest.npz": (
        [NpyMember("input.input.npy", npy_header((1, FLOATS_2GIB)), 4 * FLOATS_2GIB), OUTPUT],
        f"member 'input.input.npy' declares {4 * FLOATS_2GIB + 128} bytes uncompressed",
    ),
    "zip-lie.npz": (
        [
            NpyMember("input.input.npy", npy_header((1, 218)), 4 * FLOATS_2GIB, file_size=1000, crc_of="declared"),
            OUTPUT,
        ],
        "member 'input.input.npy' declares 1000 bytes uncompressed but holds",
    ),
    "header-lie.npz": (
        [NpyMember("input.input.npy", npy_header((1, FLOATS_2GIB)), 1024, method="stored"), OUTPUT],
        f"member 'input.input.npy': its .npy header declares shape (1, {FLOATS_2GIB})",
    ),
}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_keypair("publisher")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, key: SigningKey) -> SignedBundle:
    return make_bundle(tmp_path_factory.mktemp("good"), key, version="1.0.0", seed=5, size=8)


@pytest.fixture(scope="module")
def signed_bombs(
    tmp_path_factory: pytest.TempPathFactory, good: SignedBundle, key: SigningKey
) -> dict[str, tuple[Path, Path, str]]:
    """Each bomb as the golden set of a copy of ``good``, signed by the trusted key: (dir, archive, reason)."""
    root = tmp_path_factory.mktemp("bombs")
    out = {}
    for i, (name, (members, reason)) in enumerate(BOMBS.items()):
        golden = write_zero_npz(root / name, members)
        directory, archive = with_golden(good.directory, golden, key, root, version=f"6.6.{i}")
        out[name] = (directory, archive, reason)
    return out


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


async def _refused(c: Fleet, requests: list[fleet_pb2.PushBundleRequest]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.fleet.PushBundle(iter(requests), metadata=c.admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    return " ".join((err.value.details() or "").split())


def _lying_manifest(good: SignedBundle, key: SigningKey, golden_size: int) -> fleet_pb2.PushBundleRequest:
    """A header whose bundle.json, signed by ``key``, declares the golden set ``golden_size`` bytes."""
    doc = json.loads((good.directory / MANIFEST_NAME).read_bytes())
    doc["artifacts"]["golden"]["size"] = golden_size
    doc["version"] = "6.7.0"
    manifest = canonical_json(doc, trailing_newline=True)
    return fleet_pb2.PushBundleRequest(
        header=fleet_pb2.BundleHeader(manifest=manifest, signature=signature_document(manifest, key))
    )


async def test_pushbundle_refuses_signed_bombs_with_bounded_memory_then_takes_a_good_bundle(
    tmp_path: Path, good: SignedBundle, key: SigningKey, signed_bombs: dict[str, tuple[Path, Path, str]]
) -> None:
    ctrl = ControllerProcess(tmp_path / "data")
    ctrl.start()
    try:
        async with connected(ctrl) as c:
            await c.trust(key)
            baseline = _vm_hwm(ctrl.pid)
            for name, (_, archive, reason) in signed_bombs.items():
                upload = read_archive_for_upload(archive)
                requests = [
                    fleet_pb2.PushBundleRequest(
                        header=fleet_pb2.BundleHeader(manifest=upload.manifest, signature=upload.signature)
                    ),
                    *(
                        fleet_pb2.PushBundleRequest(chunk=fleet_pb2.ArtifactChunk(digest=d, data=data))
                        for d, data in upload.chunks()
                    ),
                ]
                details = await _refused(c, requests)
                assert f"bundle refused: artifact 'golden' (artifacts/golden.npz): {reason}" in details, name
                assert "fleetctl bundle verify" in details

            # bundle.json (signed) declares a golden set over the ceiling: refused before any chunk is read.
            details = await _refused(c, [_lying_manifest(good, key, MAX_GOLDEN_BYTES + 1)])
            assert (
                f"artifact 'golden' (artifacts/golden.npz) declares {MAX_GOLDEN_BYTES + 1} bytes, over the "
                f"{MAX_GOLDEN_BYTES}-byte ceiling for golden data" in details
            )
            # A member with more bytes than bundle.json declares: refused once the excess arrives.
            upload = read_archive_for_upload(good.archive)
            header = fleet_pb2.PushBundleRequest(
                header=fleet_pb2.BundleHeader(manifest=upload.manifest, signature=upload.signature)
            )
            golden_digest = good.artifact_digests["golden"]
            grown = [data + bytes(4096) if d == golden_digest else data for d, data in upload.chunks()]
            digests = [d for d, _ in upload.chunks()]
            chunks = [
                fleet_pb2.PushBundleRequest(chunk=fleet_pb2.ArtifactChunk(digest=d, data=data))
                for d, data in zip(digests, grown, strict=True)
            ]
            details = await _refused(c, [header, *chunks])
            assert "artifact 'golden' (artifacts/golden.npz) holds more data than bundle.json declares" in details

            grew = _vm_hwm(ctrl.pid) - baseline
            assert grew < RSS_BOUND, f"the controller's peak RSS grew by {grew / MiB:.0f} MiB refusing the bombs"
            assert list((await c.fleet.ListBundles(fleet_pb2.ListBundlesRequest(), metadata=c.admin)).bundles) == []
            bomb_hexes = {a.sha256 for _, arch, _ in signed_bombs.values() for a in _artifacts(arch)}
            stored = {p.name for p in (ctrl.data_dir / "blobs" / "sha256").rglob("*") if p.is_file()}
            assert not stored & bomb_hexes  # no blob of a refused push, shared or not
            assert [p for p in (ctrl.data_dir / "blobs" / "tmp").iterdir()] == []

            # The same publisher's good bundle, next: stored.
            reply = await c.push(good.archive)
            assert reply.created and reply.bundle.digest == good.digest
    finally:
        ctrl.terminate()


def _artifacts(archive: Path) -> list[ArtifactRef]:
    return list(read_archive_for_upload(archive).manifest_obj.artifacts.values())


def test_device_refuses_a_trusted_signed_bomb_with_bounded_memory_then_canaries_a_good_bundle(
    tmp_path: Path, good: SignedBundle, key: SigningKey, signed_bombs: dict[str, tuple[Path, Path, str]]
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    key.save(keys / "publisher.pem", keys / "publisher.pub.pem")
    (keys / "publisher.pem").unlink()
    setup = (
        "from pathlib import Path\n"
        "from edgefleet.contract.errors import ContractError\n"
        "from edge_runtime.agent.update.verifier import SignatureVerifier\n"
        "from edge_runtime.agent.canary.evaluator import golden_check\n"
        f"verifier = SignatureVerifier(key_dir=Path({str(keys)!r}))\n"
    )
    for name, (directory, _, reason) in signed_bombs.items():
        # The device's verification (before staging) and, as a second line, its golden preflight.
        for call in (
            f"verifier.verify(Path({str(directory)!r}))",
            f"golden_check(lambda x: [], 'input', ['probs'], Path({str(directory)!r}))",
        ):
            rss = measure_peak_rss(
                setup,
                f"try:\n    {call}\n    print('ACCEPTED')\nexcept ContractError as exc:\n    print('REFUSED', exc)\n",
            )
            assert rss.output.startswith("REFUSED") and reason in rss.output, (name, call, rss.output)
            assert rss.grew < RSS_BOUND, f"{call} on {name} grew the peak RSS by {rss.grew / MiB:.0f} MiB"

    # Next, the publisher's good bundle: verified, loaded into a real engine, golden preflight passes.
    SignatureVerifier(key_dir=keys).verify(good.directory)
    engine = load_engine(good.directory, good.digest, cache_root=tmp_path / "cache", intra_op_threads=1)
    names = [o.name for o in engine.session.get_outputs()]
    passed, summary = golden_check(engine.run_tensor, engine.input_name, names, good.directory)
    assert passed, summary
    assert summary.startswith("golden preflight passed: 2 cases")
