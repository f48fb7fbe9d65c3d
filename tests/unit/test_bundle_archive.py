"""The .efb archive: pack/unpack round trip and refusal of hostile archives, leaving nothing behind."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.contract.bundle_archive import (
    pack_bundle,
    read_archive_manifest,
    unpack_bundle,
    unpack_unverified_bundle,
)
from edgefleet.contract.errors import (
    BundleError,
    ContractError,
    DigestMismatchError,
    MissingArtifactError,
    SignatureError,
    UnlistedFileError,
    UnsafeArchiveError,
    UnsupportedSchemaError,
)
from edgefleet.contract.signing import SigningKey, TrustedKeys, generate_keypair, sign_bundle
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_testing.modelgen import make_classifier

Member = tuple[tarfile.TarInfo, bytes]


def _make_bundle(root: Path, key: SigningKey | None) -> Path:
    model = make_classifier(root / "c.onnx", num_classes=3, size=16)
    spec = {
        "name": "tiny",
        "version": "1.0.0",
        "model": model.name,
        "preprocess": {"size": [16, 16]},
        "postprocess": {"kind": "classification"},
        "labels": ["a", "b", "c"],
        "latency": {"sla_ms": 10},
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = root / "bundle"
    build_bundle(root / "spec.yaml", out, golden_count=1, created_at=datetime(2025, 1, 1, tzinfo=UTC))
    if key is not None:
        sign_bundle(out, key)
    return out


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_keypair("publisher-1")


@pytest.fixture(scope="module")
def trusted(key: SigningKey) -> TrustedKeys:
    return TrustedKeys({key.key_id: key.public_key})


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, key: SigningKey) -> Path:
    root = tmp_path_factory.mktemp("src")
    return pack_bundle(_make_bundle(root, key), root / "tiny.efb")


def _members(archive: Path) -> list[Member]:
    with tarfile.open(archive) as tar:
        out = []
        for m in tar.getmembers():
            fh = tar.extractfile(m)
            out.append((m, fh.read() if fh else b""))
        return out


def _write(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _info(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info


def _assert_nothing_left(parent: Path, before: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} == before


def test_pack_unpack_round_trip(archive: Path, trusted: TrustedKeys, tmp_path: Path) -> None:
    verified = unpack_bundle(archive, tmp_path / "dest", trusted)
    assert verified.key_id == "publisher-1"
    assert verified.path == tmp_path / "dest"
    assert verified.artifact_path("model").is_file()
    names = [m.name for m, _ in _members(archive)]
    assert names[:2] == ["bundle.json", "bundle.sig"]
    assert names[2:] == sorted(names[2:])
    assert {p.name for p in tmp_path.iterdir()} == {"dest"}


def test_pack_is_deterministic(archive: Path, tmp_path: Path, trusted: TrustedKeys) -> None:
    unpack_bundle(archive, tmp_path / "dest", trusted)
    again = pack_bundle(tmp_path / "dest", tmp_path / "again.efb")
    assert again.read_bytes() == archive.read_bytes()


def test_read_archive_manifest_and_unverified_unpack(tmp_path: Path) -> None:
    unsigned = pack_bundle(_make_bundle(tmp_path, None), tmp_path / "u.efb")
    manifest, sig = read_archive_manifest(unsigned)
    assert manifest.name == "tiny" and sig is None
    with pytest.raises(SignatureError, match="unsigned"):
        unpack_bundle(unsigned, tmp_path / "dest", TrustedKeys())
    assert not (tmp_path / "dest").exists()
    assert unpack_unverified_bundle(unsigned, tmp_path / "dest").digest == manifest.digest


def _flip_artifact(members: list[Member]) -> list[Member]:
    info, data = members[-1]
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    return [*members[:-1], (info, bytes(flipped))]


def _replace_manifest(members: list[Member]) -> list[Member]:
    info, data = members[0]
    edited = data.replace(b'"sla_ms":10.0', b'"sla_ms":99.0')
    assert edited != data
    return [(info, edited), *members[1:]]


def _add(member: Member) -> Callable[[list[Member]], list[Member]]:
    return lambda members: [*members, member]


def _schema_2(members: list[Member]) -> list[Member]:
    info, data = members[0]
    return [(info, data.replace(b'"schema_version":1', b'"schema_version":2')), *members[1:]]


def _truncate_last(members: list[Member]) -> list[Member]:
    return members[:-1]


def _duplicate(members: list[Member]) -> list[Member]:
    return [*members, members[-1]]


def _first_not_manifest(members: list[Member]) -> list[Member]:
    return [members[1], members[0], *members[2:]]


def _oversize(members: list[Member]) -> list[Member]:
    info, data = members[-1]
    return [*members[:-1], (_info(info.name, data + b"\0" * 10), data + b"\0" * 10)]


HOSTILE: list[tuple[str, Callable[[list[Member]], list[Member]], type[ContractError], str]] = [
    ("flipped byte", _flip_artifact, DigestMismatchError, "artifact 'model'"),
    ("edited bundle.json", _replace_manifest, SignatureError, "does not match bundle.json"),
    (
        "traversal",
        _add((_info("artifacts/../../evil", b"x"), b"x")),
        UnsafeArchiveError,
        "'artifacts/../../evil'",
    ),
    ("absolute", _add((_info("/etc/evil", b"x"), b"x")), UnsafeArchiveError, "absolute path"),
    (
        "symlink",
        _add((_info("artifacts/link", kind=tarfile.SYMTYPE, link="/etc/passwd"), b"")),
        UnsafeArchiveError,
        "is a link",
    ),
    (
        "hardlink",
        _add((_info("artifacts/hard", kind=tarfile.LNKTYPE, link="bundle.json"), b"")),
        UnsafeArchiveError,
        "is a link",
    ),
    (
        "fifo",
        _add((_info("artifacts/fifo", kind=tarfile.FIFOTYPE), b"")),
        UnsafeArchiveError,
        "device or fifo",
    ),
    (
        "device",
        _add((_info("artifacts/dev", kind=tarfile.CHRTYPE), b"")),
        UnsafeArchiveError,
        "device or fifo",
    ),
    ("unlisted", _add((_info("artifacts/extra.bin", b"x"), b"x")), UnlistedFileError, "not listed"),
    ("oversize", _oversize, UnsafeArchiveError, "bytes, bundle.json says"),
    ("duplicate", _duplicate, UnsafeArchiveError, "appears twice"),
    ("missing", _truncate_last, MissingArtifactError, "missing from the archive"),
    ("schema 2", _schema_2, UnsupportedSchemaError, "schema_version 2 is not supported"),
    ("order", _first_not_manifest, BundleError, "expected bundle.json"),
]


@pytest.mark.parametrize(("case", "mutate", "error", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_archives_are_refused_and_leave_nothing(
    archive: Path,
    trusted: TrustedKeys,
    tmp_path: Path,
    case: str,
    mutate: Callable[[list[Member]], list[Member]],
    error: type[ContractError],
    message: str,
) -> None:
    (tmp_path / "in").mkdir()
    bad = _write(tmp_path / "in" / "bad.efb", mutate(_members(archive)))
    parent = tmp_path / "out"
    parent.mkdir()
    with pytest.raises(error, match=re.escape(message)):
        unpack_bundle(bad, parent / "dest", trusted)
    _assert_nothing_left(parent, set())


def test_wrong_and_unknown_keys(archive: Path, tmp_path: Path) -> None:
    other = generate_keypair("publisher-1")
    with pytest.raises(SignatureError, match="signature by key 'publisher-1' does not match"):
        unpack_bundle(archive, tmp_path / "a", TrustedKeys({other.key_id: other.public_key}))
    stranger = generate_keypair()
    with pytest.raises(SignatureError, match="signed by key 'publisher-1', which is not trusted"):
        unpack_bundle(archive, tmp_path / "b", TrustedKeys({stranger.key_id: stranger.public_key}))
    assert list(tmp_path.iterdir()) == []


def test_limits(archive: Path, trusted: TrustedKeys, tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError, match="over the 100-byte ceiling"):
        unpack_bundle(archive, tmp_path / "a", trusted, max_member_bytes=100)
    with pytest.raises(UnsafeArchiveError, match="over the 1000-byte ceiling"):
        unpack_bundle(archive, tmp_path / "b", trusted, max_total_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_is_refused(archive: Path, trusted: TrustedKeys, tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    with pytest.raises(BundleError, match="already exists"):
        unpack_bundle(archive, tmp_path / "dest", trusted)


def test_not_a_tar(tmp_path: Path, trusted: TrustedKeys) -> None:
    (tmp_path / "x.efb").write_bytes(b"hello")
    with pytest.raises(UnsafeArchiveError, match="not an uncompressed tar"):
        unpack_bundle(tmp_path / "x.efb", tmp_path / "dest", trusted)
    assert {p.name for p in tmp_path.iterdir()} == {"x.efb"}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_unpack_only_contract_errors(
    archive: Path, trusted: TrustedKeys, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    work = tmp_path_factory.mktemp("fuzz")
    raw = bytearray(archive.read_bytes())
    mode = data.draw(st.sampled_from(["flip", "truncate", "random", "members"]))
    if mode == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] = data.draw(st.integers(0, 255))
    elif mode == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif mode == "random":
        raw = bytearray(data.draw(st.binary(max_size=3000)))
    else:
        names = st.sampled_from(["bundle.json", "bundle.sig", "artifacts/model.onnx", "../x", "/abs", "a/b"])
        kinds = st.sampled_from([tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE])
        members = []
        for _ in range(data.draw(st.integers(0, 4))):
            payload = data.draw(st.binary(max_size=64))
            members.append((_info(data.draw(names), payload, data.draw(kinds), "x"), payload))
        _write(work / "m.efb", members)
        raw = bytearray((work / "m.efb").read_bytes())
    (work / "in.efb").write_bytes(bytes(raw))
    out = work / "out"
    out.mkdir()
    try:
        unpack_bundle(work / "in.efb", out / "dest", trusted)
    except ContractError:
        assert list(out.iterdir()) == []
