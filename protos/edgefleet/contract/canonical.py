"""Canonical JSON: the one implementation of the tree's JSON spellings.

Every spelling is ``json.dumps`` with sorted keys, compact separators and no NaN/Infinity; the options say how
they differ, and each caller names the options its output was always written with, because digests, signatures
and stored rows depend on the exact bytes:

- bundle.json (manifest digest, signature file): ``trailing_newline=True``.
- effective configs and their digests (layering, config classes, precedence): ``integral_floats=True``: mappings
  (frozen ones too) become objects with string keys, tuples lists, ``1.0`` is written ``1`` (below 2**53), and a
  non-finite float is refused with a ValueError naming it.
- the controller's stored JSON columns: no options (UTF-8 kept as is), text.
- review-sample results (the device's telemetry): ``ensure_ascii=True`` with the runtime's ``default`` for its
  result types, text.

``canonical_json_text`` returns the text, ``canonical_json`` its UTF-8 bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, TypedDict, Unpack

from edgefleet.contract.shown import shown

__all__ = ["CanonicalOptions", "canonical_json", "canonical_json_text"]


class CanonicalOptions(TypedDict, total=False):
    """The keyword options of ``canonical_json_text``, for ``canonical_json``."""

    integral_floats: bool
    ensure_ascii: bool
    trailing_newline: bool
    default: Callable[[Any], Any] | None


def _integral_floats(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _integral_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_integral_floats(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"canonical JSON cannot hold the non-finite number {shown(value)}")
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    return value


def canonical_json_text(
    value: Any,
    *,
    integral_floats: bool = False,
    ensure_ascii: bool = False,
    trailing_newline: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """``value`` as canonical JSON text: sorted keys, no whitespace, no NaN/Infinity; options as documented above."""
    text = json.dumps(
        _integral_floats(value) if integral_floats else value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=ensure_ascii,
        allow_nan=False,
        default=default,
    )
    return text + "\n" if trailing_newline else text


def canonical_json(value: Any, **options: Unpack[CanonicalOptions]) -> bytes:
    """The UTF-8 bytes of ``canonical_json_text`` with the same options."""
    return canonical_json_text(value, **options).encode("utf-8")
