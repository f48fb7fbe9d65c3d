"""Signing keys on disk, trusted key sets and key rotation."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edgefleet.contract.errors import SignatureError, SigningKeyError
from edgefleet.contract.signing import (
    SigningKey,
    TrustedKeys,
    generate_keypair,
    key_id_for,
    signature_document,
    verify_signature,
)

MANIFEST = b'{"name":"x"}\n'


def test_default_key_id_is_derived_from_public_key() -> None:
    key = generate_keypair()
    assert key.key_id == key_id_for(key.public_key)
    assert len(key.key_id) == 16


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    key = generate_keypair("release-2025")
    key.save(tmp_path / "release-2025.key.pem", tmp_path / "release-2025.pub.pem")
    assert stat.S_IMODE((tmp_path / "release-2025.key.pem").stat().st_mode) == 0o600
    assert (tmp_path / "release-2025.key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "release-2025.pub.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    loaded = SigningKey.load(tmp_path / "release-2025.key.pem")
    assert loaded.key_id == "release-2025"
    trusted = TrustedKeys.from_dir(tmp_path)
    assert list(trusted) == ["release-2025"]
    assert verify_signature(MANIFEST, signature_document(MANIFEST, loaded), trusted) == "release-2025"
    with pytest.raises(SigningKeyError, match="already exists"):
        key.save(tmp_path / "release-2025.key.pem", tmp_path / "other.pub.pem")


def test_bad_key_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(SigningKeyError, match=r"junk\.pem: is not a PEM public key"):
        TrustedKeys.from_paths([tmp_path / "junk.pem"])
    with pytest.raises(SigningKeyError, match=r"junk\.pem: is not an unencrypted PEM private key"):
        SigningKey.load(tmp_path / "junk.pem")
    with pytest.raises(SigningKeyError, match="cannot read"):
        SigningKey.load(tmp_path / "absent.pem")


def test_key_rotation() -> None:
    old, new = generate_keypair("old"), generate_keypair("new")
    both = TrustedKeys.from_pem_map({"old": old.public_pem(), "new": new.public_pem().decode()})
    sig_old, sig_new = signature_document(MANIFEST, old), signature_document(MANIFEST, new)
    assert verify_signature(MANIFEST, sig_old, both) == "old"
    assert verify_signature(MANIFEST, sig_new, both) == "new"
    retired = both.without("old")
    assert verify_signature(MANIFEST, sig_new, retired) == "new"
    with pytest.raises(SignatureError, match=r"signed by key 'old', which is not trusted \(trusted: new\)"):
        verify_signature(MANIFEST, sig_old, retired)


def test_conflicting_key_ids_are_refused() -> None:
    a, b = generate_keypair("same"), generate_keypair("same")
    with pytest.raises(SigningKeyError, match="already trusted with a different public key"):
        TrustedKeys({"same": a.public_key}).merged({"same": b.public_key})


@pytest.mark.parametrize(
    ("sig", "message"),
    [
        (b"not json", "is not JSON"),
        (
            b'{"algorithm":"rsa","key_id":"k","signature":"AA=="}',
            "field 'algorithm' must be 'ed25519', got 'rsa'",
        ),
        (b'{"algorithm":"ed25519","key_id":"k","signature":"!!"}', "not base64"),
        (b'{"algorithm":"ed25519","key_id":5,"signature":"AA=="}', "must be strings"),
        (b"[]", "must be a JSON object"),
    ],
)
def test_malformed_signature_documents(sig: bytes, message: str) -> None:
    key = generate_keypair("k")
    with pytest.raises(SignatureError, match=message):
        verify_signature(MANIFEST, sig, TrustedKeys({"k": key.public_key}))


def test_tampered_manifest_fails() -> None:
    key = generate_keypair("k")
    sig = signature_document(MANIFEST, key)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(MANIFEST + b" ", sig, TrustedKeys({"k": key.public_key}))
