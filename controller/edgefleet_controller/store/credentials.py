"""Minting, hashing and parsing the secrets the store hands out.

A secret reads ``<prefix>_<id>.<random>``: ``eft_`` enrollment tokens, ``eot_`` operator tokens, ``edc_``
device credentials (whose id is the device id, itself ``dev_<random>``). The id lets the store find the row
without an index on the hash; only ``sha256(secret)`` is stored and compared in constant time. 32 random
bytes make the hash safe without a slow KDF: nothing about the secret is guessable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ENROLLMENT_PREFIX = "eft"
OPERATOR_PREFIX = "eot"
DEVICE_CREDENTIAL_PREFIX = "edc"
DEVICE_ID_PREFIX = "dev"

_MAX_SECRET_LENGTH = 256


def new_token_id() -> str:
    """A short random id for a token row (hex: no ``.`` or ``_``, so the secret parses unambiguously)."""
    return secrets.token_hex(8)


def new_device_id() -> str:
    return f"{DEVICE_ID_PREFIX}_{secrets.token_hex(8)}"


def mint_secret(prefix: str, row_id: str) -> str:
    """A fresh secret naming ``row_id``; ``token_urlsafe`` never produces ``.``."""
    return f"{prefix}_{row_id}.{secrets.token_urlsafe(32)}"


def new_token(prefix: str) -> tuple[str, str]:
    """A fresh token row id and the ``prefix`` secret naming it."""
    token_id = new_token_id()
    return token_id, mint_secret(prefix, token_id)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_secret(prefix: str, secret: str) -> str | None:
    """The row id named by ``secret``, or None when it is not a well-formed ``prefix`` secret."""
    if not isinstance(secret, str) or len(secret) > _MAX_SECRET_LENGTH:
        return None
    head = f"{prefix}_"
    if not secret.startswith(head):
        return None
    row_id, dot, random_part = secret[len(head) :].rpartition(".")
    if not dot or not row_id or not random_part:
        return None
    return row_id


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), stored_hash)
