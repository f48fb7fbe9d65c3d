"""Bounded decompression of a bundle's golden set and archive: every declared size (zip entry, .npy header,
tar header, bundle.json) is checked against the others and the ceilings of ``bundle_limits`` before anything
is read, and the refusing code's peak RSS (measured in a child process) stays small even for a 2 GiB bomb."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_archive import pack_bundle, unpack_bundle, verify_bundle
from edgefleet.contract.bundle_layout import MANIFEST_NAME
from edgefleet.contract.bundle_limits import MAX_GOLDEN_BYTES, BundleLimits, check_declared_sizes
from edgefleet.contract.bundle_upload import read_archive_for_upload
from edgefleet.contract.errors import BundleFormatError, UnsafeArchiveError
from edgefleet.contract.golden import GoldenCase, check_golden, load_golden, write_golden
from edgefleet.contract.signing import SigningKey, TrustedKeys, generate_keypair
from edgefleet_testing.bombs import NpyMember, measure_peak_rss, npy_header, with_golden, write_zero_npz
from edgefleet_testing.bundles import SignedBundle, make_bundle
from fleetctl.main import app

GiB = 1 << 30
MiB = 1 << 20
#: What the refusing code may add to its peak RSS (the brief's bound is 200 MB; the checks need ~nothing).
RSS_SLACK = 64 * MiB
BOMB_FLOATS = 2 * GiB // 4


@pytest.fixture(scope="session")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Golden zip bombs, written once per session (streamed: a few MiB of memory, ~2 MB each on disk)."""
    root = tmp_path_factory.mktemp("bombs")
    small_output = NpyMember("output.probs.npy", npy_header((1, 4)), 16, method="stored")
    # 2 GiB of zeros, declared honestly in the zip and the .npy header: what np.load would allocate.
    write_zero_npz(
        root / "honest.npz", [NpyMember("input.input.npy", npy_header((BOMB_FLOATS,)), 4 * BOMB_FLOATS), small_output]
    )
    # The zip header lies: file_size 1,000 (and the CRC of those 1,000 bytes) while the stream inflates to 2 GiB.
    write_zero_npz(
        root / "zip-lie.npz",
        [
            NpyMember("input.input.npy", npy_header((218,)), 4 * BOMB_FLOATS, file_size=1000, crc_of="declared"),
            small_output,
        ],
    )
    # A subtler zip lie: file_size 10 MiB + header (plausible for its 2 MB of compressed data), stream 512 MiB.
    ten = 10 * MiB // 4
    for crc_of in ("data", "declared"):
        write_zero_npz(
            root / f"zip-lie-{crc_of}.npz",
            [
                NpyMember(
                    "input.input.npy",
                    npy_header((1, ten)),
                    512 * MiB,
                    file_size=len(npy_header((1, ten))) + 4 * ten,
                    crc_of=crc_of,  # type: ignore[arg-type]
                ),
                small_output,
            ],
        )
    return root


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_keypair("publisher")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, key: SigningKey) -> SignedBundle:
    return make_bundle(tmp_path_factory.mktemp("good"), key, version="1.0.0", seed=3, size=8)


def _refused_in_child(call: str, path: Path) -> tuple[str, int]:
    """Run ``call`` on ``path`` in a child; what it refused with, and how much its peak RSS grew."""
    rss = measure_peak_rss(
        "from edgefleet.contract.errors import ContractError\n"
        "from edgefleet.contract.golden import load_golden, check_golden\n"
        "from edgefleet.contract.bundle_archive import verify_bundle, unpack_bundle\n"
        "from edgefleet.contract.signing import TrustedKeys\n",
        f"try:\n    {call}({str(path)!r})\n    print('ACCEPTED')\n"
        "except ContractError as exc:\n    print(type(exc).__name__, exc)\n",
    )
    return rss.output, rss.grew


# ------------------------------------------------------------------------------------------- good files


def test_written_golden_loads_and_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cases = [GoldenCase({"x": rng.random((1, 3, 4, 4), dtype=np.float32)}, {"y": rng.random((1, 5))}) for _ in range(3)]
    write_golden(tmp_path / "g.npz", cases)
    declared = check_golden(tmp_path / "g.npz")
    assert {(d.key, d.shape, d.dtype.str) for d in declared} == {
        ("input.x", (3, 1, 3, 4, 4), "<f4"),
        ("output.y", (3, 1, 5), "<f8"),
    }
    loaded = load_golden(tmp_path / "g.npz")
    assert len(loaded) == 3
    for want, got in zip(cases, loaded, strict=True):
        np.testing.assert_array_equal(got.inputs["x"], want.inputs["x"])
        np.testing.assert_array_equal(got.outputs["y"], want.outputs["y"])


def test_numpy_compressed_and_fortran_arrays_still_load(tmp_path: Path) -> None:
    x = np.asfortranarray(np.arange(24, dtype=">i4").reshape(2, 3, 4))
    np.savez_compressed(tmp_path / "g.npz", **{"input.x": x, "output.y": np.ones((2, 2))})
    (case0, case1) = load_golden(tmp_path / "g.npz")
    np.testing.assert_array_equal(case1.inputs["x"], x[1])
    np.testing.assert_array_equal(case0.outputs["y"], np.ones(2))


# ------------------------------------------------------------------------------------------------ bombs


def test_golden_bomb_is_refused_before_reading_with_bounded_memory(bombs: Path) -> None:
    for call in ("load_golden", "check_golden"):
        output, grew = _refused_in_child(call, bombs / "honest.npz")
        assert output.startswith("UnsafeArchiveError"), output
        assert f"member 'input.input.npy' declares {2 * GiB + 128} bytes uncompressed" in output
        assert f"over the {MAX_GOLDEN_BYTES}-byte golden ceiling" in output
        assert grew < RSS_SLACK, f"{call} grew the peak RSS by {grew / MiB:.0f} MiB"


def test_zip_header_lying_about_file_size_is_refused(bombs: Path) -> None:
    output, grew = _refused_in_child("load_golden", bombs / "zip-lie.npz")
    assert "declares 1000 bytes uncompressed but holds" in output and "lies about file_size" in output, output
    assert grew < RSS_SLACK


def test_zip_member_reader_stops_at_the_declared_file_size(bombs: Path) -> None:
    # Sizes all plausible: the member reader (zipfile's ZipExtFile) stops at file_size. With the CRC of the
    # real 512 MiB the CRC check there refuses it; with the CRC of the declared prefix it is just 10 MiB of
    # zeros. Either way the child never holds more than the declared size.
    output, grew = _refused_in_child("load_golden", bombs / "zip-lie-data.npz")
    assert output.startswith("BundleFormatError") and "Bad CRC-32" in output, output
    assert grew < 10 * MiB + RSS_SLACK
    output, grew = _refused_in_child("load_golden", bombs / "zip-lie-declared.npz")
    assert output == "ACCEPTED"
    assert grew < 10 * MiB + RSS_SLACK


def test_compression_ratio_over_the_ceiling_is_refused(tmp_path: Path) -> None:
    floats = 64 * MiB // 4
    path = write_zero_npz(tmp_path / "r.npz", [NpyMember("input.x.npy", npy_header((floats,)), 4 * floats)])
    with pytest.raises(
        UnsafeArchiveError,
        match=r"member 'input.x.npy' declares \d+ bytes from \d+ compressed, a ratio over the 200:1 ceiling",
    ):
        check_golden(path)


def test_npy_header_declaring_a_small_shape_for_a_huge_member_is_refused(tmp_path: Path) -> None:
    path = write_zero_npz(tmp_path / "h.npz", [NpyMember("input.x.npy", npy_header((4,)), 100 * MiB)])
    lenient = BundleLimits(max_golden_ratio=10_000)  # past the ratio check, to the header's own
    message = re.escape(
        f"member 'input.x.npy': its .npy header declares shape (4,) of <f4 (16 data bytes after a 128-byte "
        f"header) but the zip entry declares file_size {100 * MiB + 128}"
    )
    with pytest.raises(UnsafeArchiveError, match=message):
        load_golden(path, lenient)


def test_npy_header_declaring_a_huge_shape_for_a_small_member_is_refused(tmp_path: Path) -> None:
    # np.load would allocate the header's 2 GiB, then fail reading; this refuses before allocating.
    path = write_zero_npz(
        tmp_path / "s.npz", [NpyMember("input.x.npy", npy_header((BOMB_FLOATS,)), 1024, method="stored")]
    )
    output, grew = _refused_in_child("load_golden", path)
    assert output.startswith("UnsafeArchiveError") and f"shape ({BOMB_FLOATS},)" in output, output
    assert "file_size 1152" in output
    assert grew < RSS_SLACK


def test_npy_header_asking_for_a_huge_header_is_refused(tmp_path: Path) -> None:
    # A 2.0 header whose length field says 2 GiB: refused before numpy reads it.
    header = b"\x93NUMPY\x02\x00" + (2 * GiB).to_bytes(4, "little")
    path = write_zero_npz(tmp_path / "hh.npz", [NpyMember("input.x.npy", header, 4096, method="stored")])
    with pytest.raises(UnsafeArchiveError, match=r"its \.npy header asks to read 2147483648 more bytes"):
        check_golden(path)


def test_too_many_members_are_refused_before_zipfile_parses_them(tmp_path: Path) -> None:
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(300):
            zf.writestr(f"input.a{i}.npy", b"")
    with pytest.raises(
        UnsafeArchiveError, match=r"central directory declares 300 members in .* over the ceiling of 256 arrays"
    ):
        check_golden(path)


@pytest.mark.parametrize(
    ("name", "header", "error", "message"),
    [
        ("input.x.npy", npy_header((2,), "|O"), BundleFormatError, "has dtype '|O'; golden arrays are numeric"),
        ("input.x.npy", npy_header((2,), "<U4"), BundleFormatError, "has dtype '<U4'"),
        ("input.x.npy", b"\x93NUMPY\x03\x00" + bytes(4), BundleFormatError, r"is .npy format \(3, 0\)"),
        ("../evil.npy", npy_header((2,)), BundleFormatError, "is not an input.<name>.npy"),
        ("input.x.npy", b"not numpy at all", BundleFormatError, "is not a .npy array"),
    ],
)
def test_malformed_members_are_refused(
    tmp_path: Path, name: str, header: bytes, error: type[Exception], message: str
) -> None:
    path = write_zero_npz(tmp_path / "m.npz", [NpyMember(name, header, 8, method="stored")])
    with pytest.raises(error, match=message):
        load_golden(path)


def test_stored_member_whose_sizes_disagree_is_refused(tmp_path: Path) -> None:
    header = npy_header((1, 4))
    lie = NpyMember("input.x.npy", header, 16, method="stored", file_size=len(header) + 1600)
    path = write_zero_npz(tmp_path / "st.npz", [lie])
    with pytest.raises(UnsafeArchiveError, match="is stored uncompressed but declares 1728 bytes with 144 stored"):
        check_golden(path)


def test_other_zip_compression_methods_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bz.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr("input.x.npy", npy_header((1,)) + bytes(4))
    with pytest.raises(BundleFormatError, match="uses zip compression method 12; only stored or deflated"):
        load_golden(path)


def test_golden_file_over_the_ceiling_on_disk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    path.write_bytes(bytes(4096))
    with pytest.raises(
        UnsafeArchiveError, match="golden data is 4096 bytes on disk, over the 1000-byte golden ceiling"
    ):
        check_golden(path, BundleLimits(max_golden_bytes=1000))


# ------------------------------------------------------------------------------- bundles and archives


def test_signed_bomb_is_refused_by_verification_and_fleetctl_verify(
    bombs: Path, good: SignedBundle, key: SigningKey, tmp_path: Path
) -> None:
    bomb_dir, bomb_archive = with_golden(good.directory, bombs / "honest.npz", key, tmp_path, version="6.6.6")
    trusted = TrustedKeys({key.key_id: key.public_key})
    with pytest.raises(UnsafeArchiveError, match=r"member 'input\.input\.npy' declares 2147483776 bytes"):
        verify_bundle(bomb_dir, trusted)  # the device's verification
    with pytest.raises(UnsafeArchiveError, match=r"member 'input\.input\.npy' declares 2147483776 bytes"):
        unpack_bundle(bomb_archive, tmp_path / "out", trusted)
    assert not (tmp_path / "out").exists()
    key.save(tmp_path / "publisher.pem", tmp_path / "publisher.pub.pem")
    result = CliRunner().invoke(
        app, ["bundle", "verify", str(bomb_archive), "--trusted", str(tmp_path / "publisher.pub.pem")]
    )
    assert result.exit_code != 0
    assert (
        f"{bomb_archive}: artifacts/golden.npz: member 'input.input.npy' declares 2147483776 bytes uncompressed"
        in " ".join(result.output.split())
    )
    # 'fleetctl bundle push' refuses it with the same reason before it connects to anything.
    pushed = CliRunner().invoke(app, ["bundle", "push", str(bomb_archive)])
    assert pushed.exit_code == 2, pushed.output
    assert "golden.npz: member 'input.input.npy' declares 2147483776 bytes uncompressed" in " ".join(
        pushed.output.split()
    )
    # The same publisher's good bundle, next: verified.
    result = CliRunner().invoke(
        app, ["bundle", "verify", str(good.archive), "--trusted", str(tmp_path / "publisher.pub.pem")]
    )
    assert result.exit_code == 0, result.output
    assert f"verified: {good.digest}" in result.output


def test_declared_sizes_over_the_ceilings_are_refused(good: SignedBundle) -> None:
    manifest = BundleManifest.from_json_bytes((good.directory / MANIFEST_NAME).read_bytes())
    golden, model = manifest.artifact("golden"), manifest.artifact("model")
    with pytest.raises(
        UnsafeArchiveError,
        match=f"artifact 'golden' .* declares {golden.size} bytes, over the 100-byte ceiling for golden data",
    ):
        check_declared_sizes(manifest, BundleLimits(max_golden_bytes=100), source="b")
    with pytest.raises(
        UnsafeArchiveError,
        match=f"artifact 'model' .* declares {model.size} bytes, over the 100-byte ceiling for an artifact",
    ):
        check_declared_sizes(manifest, BundleLimits(max_artifact_bytes=100), source="b")
    with pytest.raises(UnsafeArchiveError, match="bytes in total, over the 1000-byte ceiling per bundle"):
        check_declared_sizes(manifest, BundleLimits(max_total_bytes=1000), source="b")
    check_declared_sizes(manifest, source="b")


def _retar(src: Path, dest: Path, *, grow: str | None = None, pax: dict[str, str] | None = None) -> Path:
    """Copy an archive member by member; ``grow`` gets 1 KiB more data than bundle.json declares, the first
    member ``pax`` extended header records."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tout:
        for i, member in enumerate(tin.getmembers()):
            data = tin.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == grow:
                data += bytes(1024)
                member.size = len(data)
            if i == 0 and pax:
                member.pax_headers = pax
            tout.addfile(member, io.BytesIO(data))
    return dest


def test_tar_member_larger_than_declared_is_refused_before_reading(
    good: SignedBundle, tmp_path: Path, key: SigningKey
) -> None:
    bad = _retar(good.archive, tmp_path / "grown.efb", grow="artifacts/golden.npz")
    trusted = TrustedKeys({key.key_id: key.public_key})
    declared = BundleManifest.from_json_bytes((good.directory / MANIFEST_NAME).read_bytes()).artifact("golden").size
    message = f"member 'artifacts/golden.npz' is {declared + 1024} bytes, bundle.json says {declared}"
    with pytest.raises(UnsafeArchiveError, match=message):
        unpack_bundle(bad, tmp_path / "out", trusted)
    with pytest.raises(UnsafeArchiveError, match=message):  # fleetctl bundle push's reader
        list(read_archive_for_upload(bad).chunks())


def test_huge_extended_tar_header_is_refused_before_tarfile_reads_it(
    good: SignedBundle, tmp_path: Path, key: SigningKey
) -> None:
    bad = _retar(good.archive, tmp_path / "pax.efb", pax={"comment": "x" * (200 * 1024)})
    with pytest.raises(
        UnsafeArchiveError, match=r"extended tar headers at offset 0 declare \d+ bytes, over the 65536-byte ceiling"
    ):
        unpack_bundle(bad, tmp_path / "out", TrustedKeys({key.key_id: key.public_key}))
    # Small pax records (what long names need) still pass.
    fine = _retar(good.archive, tmp_path / "pax-ok.efb", pax={"comment": "built by a test"})
    assert unpack_bundle(fine, tmp_path / "ok", TrustedKeys({key.key_id: key.public_key})).digest == good.digest


def test_pack_then_verify_good_bundle_after_refusals(good: SignedBundle, tmp_path: Path, key: SigningKey) -> None:
    repacked = pack_bundle(good.directory, tmp_path / "again.efb")
    assert unpack_bundle(repacked, tmp_path / "x", TrustedKeys({key.key_id: key.public_key})).digest == good.digest
