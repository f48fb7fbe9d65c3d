"""The kinds of bound ``request_bounds`` declares for request fields, and the walk that checks a message
against such a table.

``Text`` (characters, optional full-match pattern), ``Blob`` (bytes), ``Number`` (range, finite, optionally
0 for "unset"), ``Enum`` (a declared value), ``Flag`` (a bool: nothing to bound), ``Count`` (items of a
repeated or map field, with the spec of each item and of each map key), ``Nested`` (a message field, checked
by its own type's entry) and ``Json`` (a ``google.protobuf.Struct``, bounded in serialized bytes). A
``Bounds`` entry holds one spec per field and caps the message's serialized size. A type without an entry,
or a field without a spec, is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, assert_never

from google.protobuf.message import Message

from edgefleet.contract.errors import ContractError
from edgefleet.contract.shown import shown

#: The largest request message the controller receives (gRPC ``max_receive_message_length``; the device's and
#: fleetctl's ``max_send_message_length``); every entry's ``max_bytes`` is at most this. gRPC parses a message
#: whole before any bound is checked, so this times the calls in flight is what hostile clients can make the
#: controller hold: 2 MiB. Everything legitimate fits: PushBundle streams artifacts in 1 MiB chunks, a review
#: JPEG is at most 1 MiB, a telemetry batch at most ``MAX_TELEMETRY_BATCH_BYTES`` (``request_bounds``).
MAX_REQUEST_BYTES: Final = 2 * 1024 * 1024


class RequestBoundsError(ContractError):
    """A request field breaks its bound; ``path`` names the field (``EnrollRequest.hardware.cpu_model``)."""

    def __init__(self, path: str, bound: str, got: str, todo: str) -> None:
        self.path = path
        self.bound = bound
        super().__init__(f"{path} must be {bound}, got {got}; {todo}; nothing was stored")


@dataclass(frozen=True)
class Text:
    max_chars: int
    pattern: re.Pattern[str] | None = None
    allow_empty: bool = True
    hint: str = ""

    def describe(self) -> str:
        shape = f"matching {self.hint or self.pattern.pattern}" if self.pattern is not None else "text"
        empty = "" if self.allow_empty else "non-empty "
        return f"{empty}{shape} of at most {self.max_chars} characters"

    def problem(self, value: object) -> bool:
        if not isinstance(value, str) or len(value) > self.max_chars:
            return True
        if not value:
            return not self.allow_empty
        return self.pattern is not None and self.pattern.fullmatch(value) is None


@dataclass(frozen=True)
class Blob:
    max_bytes: int

    def describe(self) -> str:
        return f"at most {self.max_bytes} bytes"

    def problem(self, value: object) -> bool:
        return not isinstance(value, bytes) or len(value) > self.max_bytes


@dataclass(frozen=True)
class Number:
    """A number in [lo, hi]; ``or_zero``: 0 too (proto3's unset, asking for a default)."""

    lo: float
    hi: float
    finite: bool = True
    or_zero: bool = False

    def describe(self) -> str:
        zero = "0 (the default) or " if self.or_zero else ""
        return f"{zero}a {'finite ' if self.finite else ''}number in [{self.lo}, {self.hi}]"

    def problem(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return True
        if isinstance(value, float) and math.isnan(value):
            return True
        if self.finite and isinstance(value, float) and math.isinf(value):
            return True
        if self.or_zero and value == 0:
            return False
        return not self.lo <= value <= self.hi


@dataclass(frozen=True)
class Enum:
    """A value the enum declares (proto3 lets any int through the wire), other than ``excluded`` (values only
    the controller may set, such as a device's ``HEALTH_DISABLED``)."""

    excluded: frozenset[int] = frozenset()

    def describe(self) -> str:
        return "a declared enum value" + (f" other than {sorted(self.excluded)}" if self.excluded else "")

    def allows(self, fd: Any, value: object) -> bool:
        return (
            fd.enum_type is not None
            and fd.enum_type.values_by_number.get(value) is not None
            and (value not in self.excluded)
        )


@dataclass(frozen=True)
class Flag:
    """A bool: any value is in bounds."""


@dataclass(frozen=True)
class Nested:
    """A message field, checked by its own type's entry (only when set)."""


@dataclass(frozen=True)
class Json:
    """A ``google.protobuf.Struct``, bounded in serialized bytes."""

    max_bytes: int

    def describe(self) -> str:
        return f"a JSON object of at most {self.max_bytes} bytes serialized"


Scalar = Text | Blob | Number | Enum | Flag | Nested | Json


@dataclass(frozen=True)
class Count:
    """A repeated or map field: at most ``max_items``, each ``item`` (a map's values), each ``key``."""

    max_items: int
    item: Scalar
    key: Text | None = None

    def describe(self) -> str:
        return f"at most {self.max_items} items"


Spec = Scalar | Count


@dataclass(frozen=True)
class Bounds:
    """One message type's entry: a spec per field and a cap on its serialized size."""

    fields: Mapping[str, Spec]
    max_bytes: int = MAX_REQUEST_BYTES
    todo: str = "send a value within the bound (README.md, 'Design in one page': 'Authenticate first' lists them)"
    #: what to do about one field's bad value, where it says more than ``todo`` (the others get ``todo``)
    field_todo: Mapping[str, str] = field(default_factory=dict)


Table = Mapping[str, Bounds]


# ---------------------------------------------------------------------------------------------- walk


def check_with(table: Table, message: Message) -> None:
    """Raise ``RequestBoundsError`` for the first field of ``message`` that breaks its bound in ``table`` (or
    when its type has no entry); return None when every field is within bounds."""
    _check_message(table, message, message.DESCRIPTOR.name)


def _entry(table: Table, message: Message, path: str) -> Bounds:
    full_name = message.DESCRIPTOR.full_name
    bounds = table.get(full_name)
    if bounds is None:
        raise RequestBoundsError(
            path, "a message type with declared bounds", shown(full_name), "this message type is not accepted"
        )
    return bounds


def _check_message(table: Table, message: Message, path: str) -> None:
    bounds = _entry(table, message, path)
    for fd in message.DESCRIPTOR.fields:
        spec = bounds.fields.get(fd.name)
        where = f"{path}.{fd.name}"
        todo = bounds.field_todo.get(fd.name, bounds.todo)
        if spec is None:
            raise RequestBoundsError(
                where, "a field with a declared bound", shown(fd.name), "this field is not accepted"
            )
        if isinstance(spec, Count):
            _check_many(table, fd, getattr(message, fd.name), spec, where, todo)
        elif fd.message_type is not None:
            if message.HasField(fd.name):
                _check_one(table, fd, getattr(message, fd.name), spec, where, todo)
        else:
            _check_one(table, fd, getattr(message, fd.name), spec, where, todo)
    # after the fields (each bounded, so the walk is bounded work), so a single oversized field is named
    size = message.ByteSize()
    if size > bounds.max_bytes:
        raise RequestBoundsError(path, f"at most {bounds.max_bytes} bytes serialized", f"{size} bytes", bounds.todo)


def is_map(fd: Any) -> bool:
    """Whether ``fd`` is a map field (a repeated field of map entries)."""
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _check_many(table: Table, fd: Any, values: Any, spec: Count, path: str, todo: str) -> None:
    if len(values) > spec.max_items:
        raise RequestBoundsError(path, spec.describe(), f"{len(values)} items", todo)
    if is_map(fd):
        value_fd = fd.message_type.fields_by_name["value"]
        for key, value in values.items():
            if spec.key is not None and spec.key.problem(key):
                raise RequestBoundsError(f"{path} key", spec.key.describe(), shown(key), todo)
            _check_one(table, value_fd, value, spec.item, f"{path}[{shown(key)}]", todo)
        return
    for index, value in enumerate(values):
        _check_one(table, fd, value, spec.item, f"{path}[{index}]", todo)


def _check_one(table: Table, fd: Any, value: Any, spec: Spec, path: str, todo: str) -> None:
    match spec:
        case Text() | Blob() | Number():
            if spec.problem(value):
                raise RequestBoundsError(path, spec.describe(), shown(value), todo)
        case Enum():
            if not spec.allows(fd, value):
                raise RequestBoundsError(path, spec.describe(), shown(value), todo)
        case Json():
            size = value.ByteSize()
            if size > spec.max_bytes:
                raise RequestBoundsError(path, spec.describe(), f"{size} bytes", todo)
        case Nested():
            _check_message(table, value, path)
        case Flag():
            pass
        case Count():
            raise TypeError(f"{path}: Count is a field's spec, not an item's")
        case _:
            assert_never(spec)
