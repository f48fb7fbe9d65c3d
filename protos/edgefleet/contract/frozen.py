"""Deep-frozen JSON-like values: ``freeze`` makes a read-only deep copy, ``thaw`` a plain, mutable one.

Config layers and effective configs are held frozen (``MappingProxyType`` and tuples), so no caller can
change a value another holds; code that hands them to a library wanting plain ``dict``/``list`` (JSON
Schema, JSON encoding) thaws them first. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any


def freeze(value: Any) -> Any:
    """A read-only deep copy: mappings become ``MappingProxyType``, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy (dicts and lists) of a possibly frozen value."""
    if isinstance(value, Mapping):
        return {str(k): thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value
