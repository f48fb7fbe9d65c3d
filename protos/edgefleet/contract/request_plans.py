"""The fast acceptance of a request against a bounds table: each message type's entry compiled once into a
plan (a checker per field descriptor, the fields whose default breaks its bound), run over
``message.ListFields()`` (only the set fields, listed in C) with the serialized size computed once at the
top and again only below an entry whose cap the enclosing size exceeds.

``accepts(table, message)`` is True only when ``request_specs.check_with`` would pass the message; when it
is False (a bound broken, a type or field without an entry, a shape the plan does not cover, or a sum of
numbers that overflows) the caller runs ``check_with``, the one definition of the bounds, which names the
first offending field. The plans never produce an error themselves, so the walk's messages do not change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any, Final, assert_never

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from edgefleet.contract.request_specs import (
    Blob,
    Bounds,
    Count,
    Enum,
    Flag,
    Json,
    Nested,
    Number,
    Scalar,
    Spec,
    Table,
    Text,
    is_map,
)

#: ``(value, size)``: True when ``value`` (whose serialized size is at most ``size``) is within its bound.
One = Callable[[Any, int], bool]
#: The same for every item of a repeated field's values.
All = Callable[[Iterable[Any], int], bool]

_FLOATS: Final = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})
_NON_NUMBERS: Final = frozenset(
    {
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BYTES,
        FieldDescriptor.TYPE_MESSAGE,
        FieldDescriptor.TYPE_GROUP,
        FieldDescriptor.TYPE_ENUM,
    }
)


class Plan:
    """One message type's compiled entry; ``ok`` is False for a type the plan cannot vouch for."""

    __slots__ = ("checks", "max_bytes", "required", "usable")

    def __init__(self) -> None:
        self.usable = False
        self.max_bytes = 0
        self.checks: dict[FieldDescriptor, One] = {}
        self.required: frozenset[FieldDescriptor] = frozenset()

    def ok(self, message: Message, size: int) -> bool:
        if not self.usable:
            return False
        if size > self.max_bytes:  # ``size`` bounds this message's own size from above
            size = message.ByteSize()
            if size > self.max_bytes:
                return False
        listed = message.ListFields()
        if self.required and not self.required.issubset([fd for fd, _ in listed]):
            return False
        checks = self.checks
        for fd, value in listed:
            check = checks.get(fd)
            if check is None or not check(value, size):
                return False
        return True


#: Per table (held, so its id is not reused): the plan of each message type, by full name.
_PLANS: dict[int, tuple[Table, dict[str, Plan]]] = {}


def accepts(table: Table, message: Message) -> bool:
    """True only when every field of ``message`` is within its bound in ``table`` (``check_with`` passes)."""
    return _plan(table, message.DESCRIPTOR).ok(message, message.ByteSize())


def _plan(table: Table, descriptor: Descriptor | Any) -> Plan:
    held = _PLANS.get(id(table))
    if held is None or held[0] is not table:
        held = _PLANS[id(table)] = (table, {})
    plans = held[1]
    plan = plans.get(descriptor.full_name)
    if plan is None:
        plan = plans[descriptor.full_name] = Plan()  # stored first: a recursive type finds itself
        bounds = table.get(descriptor.full_name)
        if bounds is not None:
            _compile(table, descriptor, bounds, plan)
    return plan


def _compile(table: Table, descriptor: Descriptor, bounds: Bounds, plan: Plan) -> None:
    checks: dict[FieldDescriptor, One] = {}
    required: set[FieldDescriptor] = set()
    for fd in descriptor.fields:
        spec = bounds.fields.get(fd.name)
        if spec is None or not _shaped(fd, spec):
            return  # the walk refuses (or trips on) it: never usable
        checks[fd] = _many(table, fd, spec) if isinstance(spec, Count) else _one(table, fd, spec)
        if not fd.is_repeated and fd.message_type is None and _default_breaks(fd, spec):
            required.add(fd)  # unset (or at its default) it breaks the bound: must be listed
    plan.checks, plan.required, plan.max_bytes, plan.usable = checks, frozenset(required), bounds.max_bytes, True


def _shaped(fd: FieldDescriptor, spec: Spec) -> bool:
    """Whether the spec fits the field the way the walk expects (a Count for a repeated field, ...)."""
    if isinstance(spec, Count):
        if not fd.is_repeated or isinstance(spec.item, Count):
            return False
        return is_map(fd) or _shaped_item(fd, spec.item)  # a map's values: in ``_many``
    return not fd.is_repeated and _shaped_item(fd, spec)


def _shaped_item(fd: FieldDescriptor, spec: Scalar) -> bool:
    if isinstance(spec, Nested | Json):
        return fd.message_type is not None
    return fd.message_type is None


def _default_breaks(fd: FieldDescriptor, spec: Spec) -> bool:
    match spec:
        case Text() | Blob() | Number():
            return spec.problem(fd.default_value)
        case Enum():
            return not spec.allows(fd, fd.default_value)
        case Flag() | Nested() | Json() | Count():
            return False
        case _:
            assert_never(spec)


def _many(table: Table, fd: FieldDescriptor, spec: Count) -> One:
    max_items = spec.max_items
    if not is_map(fd):
        each = _all(table, fd, spec.item)

        def items(values: Any, size: int) -> bool:
            return len(values) <= max_items and each(values, size)

        return items
    entry: Any = fd.message_type  # a map entry: (key, value)
    value_fd = entry.fields_by_name["value"]
    if not _shaped_item(value_fd, spec.item):
        return lambda values, size: False
    each_value = _all(table, value_fd, spec.item)
    key = spec.key

    def entries(values: Any, size: int) -> bool:
        if len(values) > max_items:
            return False
        if key is not None and any(map(key.problem, values)):
            return False
        return each_value(values.values(), size)

    return entries


def _one(table: Table, fd: FieldDescriptor, spec: Scalar) -> One:
    match spec:
        case Text() if fd.type == FieldDescriptor.TYPE_STRING and spec.pattern is None and spec.allow_empty:
            max_chars = spec.max_chars
            return lambda value, size: len(value) <= max_chars
        case Blob() if fd.type == FieldDescriptor.TYPE_BYTES:
            max_bytes = spec.max_bytes
            return lambda value, size: len(value) <= max_bytes
        case Number() if fd.type not in _NON_NUMBERS and math.isfinite(spec.lo) and math.isfinite(spec.hi):
            lo, hi, number_problem = spec.lo, spec.hi, spec.problem  # NaN, ±inf fail the range: the definition
            return lambda value, size: lo <= value <= hi or not number_problem(value)
        case Text() | Blob() | Number():
            problem = spec.problem
            return lambda value, size: not problem(value)
        case Enum():
            declared = _declared(fd, spec)
            return lambda value, size: value in declared
        case Flag():
            return lambda value, size: True
        case Json():
            cap = spec.max_bytes
            return lambda value, size: size <= cap or value.ByteSize() <= cap
        case Nested():
            return _plan(table, fd.message_type).ok  # message_type: _shaped_item saw it set
        case _:
            assert_never(spec)


def _all(table: Table, fd: FieldDescriptor, spec: Scalar) -> All:
    match spec:
        case Text() if fd.type == FieldDescriptor.TYPE_STRING and spec.pattern is None and spec.allow_empty:
            max_chars = spec.max_chars
            return lambda values, size: max(map(len, values), default=0) <= max_chars
        case Blob() if fd.type == FieldDescriptor.TYPE_BYTES:
            max_bytes = spec.max_bytes
            return lambda values, size: max(map(len, values), default=0) <= max_bytes
        case Number() if fd.type not in _NON_NUMBERS:
            return _numbers(spec, floats=fd.type in _FLOATS)
        case Text() | Blob() | Number():
            problem = spec.problem
            return lambda values, size: not any(map(problem, values))
        case Enum():
            declared = _declared(fd, spec)
            return lambda values, size: declared.issuperset(values)
        case Flag():
            return lambda values, size: True
        case Json() | Nested():
            one = _one(table, fd, spec)

            return lambda values, size: all(map(one, values, repeat(size)))
        case _:
            assert_never(spec)


def _numbers(spec: Number, *, floats: bool) -> All:
    """A repeated number field: its minimum and maximum in range (after a sum rules out NaN and ±inf), else
    each value by the spec's definition."""
    lo, hi, problem = spec.lo, spec.hi, spec.problem

    def numbers(values: Any, size: int) -> bool:
        if not values:
            return True
        values = values[:] if hasattr(values, "__getitem__") else list(values)  # three passes over one list
        if floats and not math.isfinite(sum(values)):  # a NaN or ±inf among them (or an overflow)
            return not any(map(problem, values))
        if lo <= min(values) and max(values) <= hi:
            return True
        return not any(map(problem, values))

    return numbers


def _declared(fd: FieldDescriptor, spec: Enum) -> frozenset[int]:
    """The values ``spec`` allows in ``fd``: those its enum declares, less the excluded ones."""
    return frozenset() if fd.enum_type is None else frozenset(fd.enum_type.values_by_number) - spec.excluded


__all__ = ["Plan", "accepts"]
