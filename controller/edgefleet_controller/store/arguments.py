"""Argument checks shared by the aggregate stores: each returns the checked value or raises
``InvalidArgument`` naming the field and the offending value (a missing aware ``now`` is the caller's bug,
so it is a plain ``ValueError``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

from edgefleet.contract.canonical import canonical_json_text
from edgefleet.contract.shown import shown
from edgefleet_controller.store.blobs import check_digest
from edgefleet_controller.store.errors import InvalidArgument, InvalidDigest

MAX_TEXT: Final = 255
MAX_PAGE_SIZE: Final = 1000


def check_now(now: datetime) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValueError(f"the store needs an aware UTC datetime for 'now', got {shown(now)}")


def check_text(field: str, value: object, max_len: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise InvalidArgument(f"{field} must be a non-empty string of at most {max_len} characters, got {shown(value)}")
    return value


def check_json(field: str, value: object) -> str:
    """``value`` as canonical JSON text."""
    try:
        return canonical_json_text(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{field} must be JSON-serialisable: {exc}") from None


def check_digest_field(field: str, value: object) -> str:
    try:
        return check_digest(value)
    except InvalidDigest:
        raise InvalidArgument(
            f"{field} must be 'sha256:' followed by 64 lowercase hex characters, got {shown(value)}"
        ) from None


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(tags, Mapping):
        raise InvalidArgument(f"tags must be a mapping of key to value, got {shown(tags)}")
    checked: dict[str, str] = {}
    for key, value in tags.items():
        check_text("tag key", key)
        if "=" in key:
            raise InvalidArgument(f"tag key must not contain '=', got {shown(key)}; filters are written key=value")
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise InvalidArgument(
                f"tag {shown(key)} must have a string value of at most {MAX_TEXT} characters, got {shown(value)}"
            )
        checked[key] = value
    return checked


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, never a count to the store)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_seconds(value: object) -> bool:
    """An int or float duration above zero (no ``bool``)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and value > 0


def check_page_size(field: str, value: int) -> int:
    if not is_int(value) or not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"{field} must be between 1 and {MAX_PAGE_SIZE}, got {shown(value)}")
    return value
