"""Ed25519 signing keys, trusted key sets, and the bundle signature (``bundle.sig``).

``bundle.sig`` is canonical JSON ``{"algorithm": "ed25519", "key_id": ..., "signature": <base64>}``; the
signature covers the exact bytes of bundle.json, which in turn pin every artifact by sha256.

Key ids: ``key_id_for(public_key)`` (first 16 hex digits of the sha256 of the raw 32-byte public key) is the
default; a trusted key file named ``<key_id>.pub.pem`` carries its id in its name, and a signing key file
named ``<key_id>.key.pem`` likewise. Several keys can be trusted at once so publishers can rotate keys:
bundles signed by the old key keep verifying until its public key is removed from the trusted set.

Bundles are signed by the publisher, not the controller: devices verify against their own trusted set.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.contract.bundle import read_manifest
from edgefleet.contract.bundle_layout import MANIFEST_NAME, SIGNATURE_NAME
from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.errors import SignatureError, SigningKeyError
from edgefleet.contract.shown import shown

ALGORITHM = "ed25519"
PRIVATE_SUFFIX = ".key.pem"
PUBLIC_SUFFIX = ".pub.pem"
MAX_SIGNATURE_BYTES = 4096
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """The default key id: first 16 hex digits of sha256 over the raw public key."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def check_key_id(key_id: str) -> str:
    if not _KEY_ID_RE.match(key_id):
        raise SigningKeyError(
            f"key id {shown(key_id)} is invalid: use letters, digits, '.', '_' or '-' (at most 64 characters)"
        )
    return key_id


def _key_id_from_name(path: Path, suffix: str) -> str | None:
    name = path.name
    return check_key_id(name[: -len(suffix)]) if name.endswith(suffix) and len(name) > len(suffix) else None


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key and the id its signatures carry."""

    key_id: str
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def public_pem(self) -> bytes:
        return public_key_pem(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def save(self, private_path: Path | str, public_path: Path | str) -> None:
        """Write the private key (PKCS8 PEM, mode 0600) and public key (SubjectPublicKeyInfo PEM).

        Refuses to overwrite an existing private key: losing one would orphan every bundle it signed.
        """
        private_path, public_path = Path(private_path), Path(public_path)
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise SigningKeyError(f"{private_path}: already exists; choose another directory or key id") from None
        except OSError as exc:
            raise SigningKeyError(f"{private_path}: cannot be created: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        # O_CREAT's mode is filtered by the umask; make 0600 explicit.
        os.chmod(private_path, 0o600)
        try:
            public_path.write_bytes(self.public_pem())
        except OSError as exc:
            raise SigningKeyError(f"{public_path}: cannot be written: {exc.strerror}") from None

    @staticmethod
    def load(path: Path | str, *, key_id: str | None = None) -> SigningKey:
        """Load a PKCS8 PEM private key; the id is explicit, from ``<key_id>.key.pem``, or derived."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SigningKeyError(f"{path}: cannot read signing key: {exc.strerror}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{path}: is not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{path}: is a {type(key).__name__}, an Ed25519 private key is required")
        kid = key_id or _key_id_from_name(path, PRIVATE_SUFFIX) or key_id_for(key.public_key())
        return SigningKey(check_key_id(kid), key)


def generate_keypair(key_id: str | None = None) -> SigningKey:
    """A fresh Ed25519 key; its id defaults to ``key_id_for`` its public key."""
    private = Ed25519PrivateKey.generate()
    return SigningKey(check_key_id(key_id or key_id_for(private.public_key())), private)


def _load_public_pem(data: bytes, origin: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{origin}: is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{origin}: is a {type(key).__name__}, an Ed25519 public key is required")
    return key


class TrustedKeys(Mapping[str, Ed25519PublicKey]):
    """The public keys a verifier trusts, by key id. Immutable; several at once for rotation."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key_id, key in (keys or {}).items():
            self._add(check_key_id(key_id), key, key_id)

    def _add(self, key_id: str, key: Ed25519PublicKey, origin: str) -> None:
        known = self._keys.get(key_id)
        if known is not None and _raw_public(known) != _raw_public(key):
            raise SigningKeyError(f"{origin}: key id {shown(key_id)} is already trusted with a different public key")
        self._keys[key_id] = key

    def __getitem__(self, key_id: str) -> Ed25519PublicKey:
        return self._keys[key_id]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"TrustedKeys({', '.join(self)})"

    def without(self, key_id: str) -> TrustedKeys:
        return TrustedKeys({k: v for k, v in self._keys.items() if k != key_id})

    def merged(self, other: Mapping[str, Ed25519PublicKey]) -> TrustedKeys:
        merged = TrustedKeys(self._keys)
        for key_id, key in other.items():
            merged._add(key_id, key, key_id)
        return merged

    @staticmethod
    def from_pem_map(pems: Mapping[str, bytes | str]) -> TrustedKeys:
        keys = TrustedKeys()
        for key_id, pem in pems.items():
            data = pem.encode("ascii") if isinstance(pem, str) else pem
            keys._add(check_key_id(key_id), _load_public_pem(data, f"trusted key {shown(key_id)}"), key_id)
        return keys

    @staticmethod
    def from_paths(paths: Iterable[Path | str]) -> TrustedKeys:
        """Trust PEM public keys from files (id from ``<key_id>.pub.pem`` or derived) or directories."""
        keys = TrustedKeys()
        for raw in paths:
            path = Path(raw)
            if path.is_dir():
                keys = keys.merged(TrustedKeys.from_dir(path))
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise SigningKeyError(f"{path}: cannot read trusted key: {exc.strerror}") from None
            key = _load_public_pem(data, str(path))
            keys._add(_key_id_from_name(path, PUBLIC_SUFFIX) or key_id_for(key), key, str(path))
        return keys

    @staticmethod
    def from_dir(directory: Path | str) -> TrustedKeys:
        """Trust every ``<key_id>.pub.pem`` in a directory."""
        directory = Path(directory)
        if not directory.is_dir():
            raise SigningKeyError(f"{directory}: is not a directory of <key_id>{PUBLIC_SUFFIX} files")
        return TrustedKeys.from_paths(sorted(directory.glob(f"*{PUBLIC_SUFFIX}")))


def signature_document(manifest_bytes: bytes, key: SigningKey) -> bytes:
    """The bundle.sig bytes for ``manifest_bytes`` signed by ``key``."""
    signature = base64.b64encode(key.sign(manifest_bytes)).decode("ascii")
    return canonical_json({"algorithm": ALGORITHM, "key_id": key.key_id, "signature": signature}, trailing_newline=True)


def sign_bundle(bundle_dir: Path | str, key: SigningKey) -> str:
    """Sign ``bundle_dir/bundle.json`` (validated first), writing bundle.sig; returns the key id."""
    root = Path(bundle_dir)
    read_manifest(root)
    manifest_bytes = (root / MANIFEST_NAME).read_bytes()
    tmp = root / f".{SIGNATURE_NAME}.tmp"
    tmp.write_bytes(signature_document(manifest_bytes, key))
    os.replace(tmp, root / SIGNATURE_NAME)
    return key.key_id


def verify_signature(manifest_bytes: bytes, sig_bytes: bytes, trusted: TrustedKeys) -> str:
    """Check bundle.sig against bundle.json bytes; returns the signing key id or raises SignatureError."""
    if len(sig_bytes) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{SIGNATURE_NAME}: {len(sig_bytes)} bytes, larger than {MAX_SIGNATURE_BYTES}")
    try:
        doc = json.loads(sig_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SignatureError(f"{SIGNATURE_NAME}: is not JSON; re-sign the bundle") from None
    if not isinstance(doc, dict):
        raise SignatureError(f"{SIGNATURE_NAME}: must be a JSON object, got {type(doc).__name__}")
    algorithm, key_id, signature = doc.get("algorithm"), doc.get("key_id"), doc.get("signature")
    if algorithm != ALGORITHM:
        raise SignatureError(f"{SIGNATURE_NAME}: field 'algorithm' must be {ALGORITHM!r}, got {shown(algorithm)}")
    if not isinstance(key_id, str) or not isinstance(signature, str):
        raise SignatureError(
            f"{SIGNATURE_NAME}: fields 'key_id' and 'signature' must be strings, "
            f"got {shown(key_id)}, {shown(signature)}"
        )
    public_key = trusted.get(key_id)
    if public_key is None:
        raise SignatureError(
            f"{SIGNATURE_NAME}: signed by key {shown(key_id)}, which is not trusted "
            f"(trusted: {', '.join(trusted) or 'none'}); add its public key to the trusted keys"
        )
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{SIGNATURE_NAME}: field 'signature' is not base64") from None
    try:
        public_key.verify(raw, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            f"{SIGNATURE_NAME}: signature by key {shown(key_id)} does not match {MANIFEST_NAME}; it was edited "
            "after signing or signed by another key with the same id"
        ) from None
    return key_id
