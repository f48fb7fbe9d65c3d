"""The fields of bundle.json and bundle-spec objects: strict JSON, a validating field reader, and
``section_dict``, the one writer of a section's fields.

Every error is a ``BundleFormatError`` naming the source file and the dotted field path with the offending
value (``bundle.json: field 'latency.sla_ms' must be > 0, got -5``). JSON is read strictly: duplicate keys,
``NaN``/``Infinity`` and out-of-range numbers are refused, so one manifest has one meaning.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from edgefleet.contract.errors import BundleFormatError
from edgefleet.contract.shown import shown

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_MISSING: Any = object()


class FieldReader:
    """A JSON/YAML object being validated; every error names the source file and the dotted field path."""

    def __init__(self, source: str, data: object, path: str = "") -> None:
        self.source = source
        self.path = path
        if not isinstance(data, Mapping):
            raise self._error_at(path or "<root>", "must be an object", data)
        self.data: Mapping[str, object] = data

    def _full(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _error_at(self, path: str, what: str, value: object) -> BundleFormatError:
        return BundleFormatError(f"{self.source}: field '{path}' {what}, got {shown(value)}")

    def error(self, key: str, what: str, value: object) -> BundleFormatError:
        return self._error_at(self._full(key), what, value)

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def known(self, *keys: str) -> None:
        unknown = sorted(str(k) for k in self.data if k not in keys)
        if unknown:
            raise BundleFormatError(
                f"{self.source}: unknown field '{self._full(unknown[0])}'; allowed here: {', '.join(keys)}"
            )

    def raw(self, key: str, default: object = _MISSING) -> object:
        if not self.has(key):
            if default is _MISSING:
                raise BundleFormatError(f"{self.source}: field '{self._full(key)}' is required")
            return default
        return self.data[key]

    def sub(self, key: str, *, required: bool = True) -> FieldReader:
        value = self.raw(key, _MISSING if required else {})
        return FieldReader(self.source, value, self._full(key))

    def string(
        self,
        key: str,
        default: object = _MISSING,
        *,
        choices: Sequence[str] | None = None,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
    ) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str):
            raise self.error(key, "must be a string", value)
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}", value)
        if pattern is not None and not pattern.match(value):
            raise self.error(key, f"must be {hint or 'match ' + pattern.pattern}", value)
        return value

    def integer(self, key: str, default: object = _MISSING, *, ge: int | None = None, le: int | None = None) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, "must be an integer", value)
        if ge is not None and value < ge:
            raise self.error(key, f"must be >= {ge}", value)
        if le is not None and value > le:
            raise self.error(key, f"must be <= {le}", value)
        return value

    def number(
        self,
        key: str,
        default: object = _MISSING,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
        lt: float | None = None,
    ) -> float:
        value = self.raw(key, default)
        return check_number(value, lambda what: self.error(key, what, value), gt=gt, ge=ge, le=le, lt=lt)

    def items(self, key: str, default: object = _MISSING, *, min_len: int = 0) -> list[object]:
        value = self.raw(key, default)
        if not isinstance(value, list | tuple):
            raise self.error(key, "must be a list", value)
        if len(value) < min_len:
            raise self.error(key, f"must have at least {min_len} item(s)", value)
        return list(value)

    def at(self, key: str, index: int) -> str:
        return f"{self._full(key)}[{index}]"


def section_dict(section: DataclassInstance, *, omit: Collection[str] = ()) -> dict[str, object]:
    """A section's dataclass fields as its bundle.json object, one key per field (less ``omit``): tuples become
    lists, mappings plain dicts, and a nested section its own ``to_dict()``; other values stay as they are."""
    out: dict[str, object] = {}
    for f in fields(section):
        if f.name in omit:
            continue
        value = getattr(section, f.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        elif hasattr(value, "to_dict"):
            value = value.to_dict()
        out[f.name] = value
    return out


def element_error(doc: FieldReader, key: str, index: int, value: object) -> Callable[[str], BundleFormatError]:
    def fail(what: str) -> BundleFormatError:
        return doc._error_at(doc.at(key, index), what, value)

    return fail


def check_number(
    value: object,
    fail: Callable[[str], BundleFormatError],
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail("must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise fail("must be finite")
    if gt is not None and not number > gt:
        raise fail(f"must be > {gt:g}")
    if ge is not None and not number >= ge:
        raise fail(f"must be >= {ge:g}")
    if le is not None and not number <= le:
        raise fail(f"must be <= {le:g}")
    if lt is not None and not number < lt:
        raise fail(f"must be < {lt:g}")
    return number


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {shown(key)}")
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def load_strict_json(data: bytes, source: str) -> object:
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except UnicodeDecodeError as exc:
        raise BundleFormatError(f"{source}: is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise BundleFormatError(f"{source}: is not valid JSON: {exc}") from None
