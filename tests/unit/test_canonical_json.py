"""The contract's one canonical JSON reproduces, byte for byte, each of the four spellings it replaced.

The references below are the four former implementations copied verbatim (bundle.py, layering.py,
store/schema.py, telemetry/review.py): bundle and config digests, signatures and stored rows depend on them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract.canonical import canonical_json, canonical_json_text


def _old_bundle(value: object) -> bytes:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8") + b"\n"


def _old_canonical_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _old_canonical_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_old_canonical_value(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"canonical JSON cannot hold the non-finite number {value!r}")
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    return value


def _old_layering(value: Any) -> bytes:
    return json.dumps(
        _old_canonical_value(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _old_store(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _review_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"review results: {type(obj).__name__} is not JSON-serialisable, got {obj!r}")


def _old_review(results: Any) -> str:
    return json.dumps(results, sort_keys=True, separators=(",", ":"), default=_review_default, allow_nan=False)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1.0, -0.0, 2.0**53, 2.0**53 + 2, 1e300, 3.0, 0.5])
    | st.text()
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2)
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
    ),
    max_leaves=20,
)


def _same(old: Any, new: Any, value: Any) -> None:
    try:
        expected = old(value)
    except (ValueError, TypeError, UnicodeError) as exc:
        with pytest.raises(type(exc)) as caught:
            new(value)
        assert str(caught.value) == str(exc)
        return
    assert new(value) == expected


@settings(max_examples=400, deadline=None)
@given(_values)
def test_bundle_spelling_is_unchanged(value: Any) -> None:
    _same(_old_bundle, lambda v: canonical_json(v, trailing_newline=True), value)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_config_spelling_is_unchanged(value: Any) -> None:
    _same(_old_layering, lambda v: canonical_json(v, integral_floats=True), value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _values, max_size=4))
def test_config_spelling_is_unchanged_for_frozen_mappings(value: dict[str, Any]) -> None:
    frozen = MappingProxyType(value)
    _same(_old_layering, lambda v: canonical_json(v, integral_floats=True), frozen)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_store_spelling_is_unchanged(value: Any) -> None:
    _same(_old_store, canonical_json_text, value)


@dataclasses.dataclass
class _Box:
    label: str
    score: float


_review_values = st.recursive(
    _scalars
    | st.builds(_Box, st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False))
    | st.floats(allow_nan=False, allow_infinity=False, width=32).map(np.float32)
    | st.integers(min_value=-(2**31), max_value=2**31).map(np.int64),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)


@settings(max_examples=400, deadline=None)
@given(_review_values)
def test_review_spelling_is_unchanged(value: Any) -> None:
    _same(_old_review, lambda v: canonical_json_text(v, ensure_ascii=True, default=_review_default), value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"a": [float("-inf")]}])
def test_non_finite_numbers_are_refused_in_every_spelling(bad: Any) -> None:
    for old, new in (
        (_old_bundle, lambda v: canonical_json(v, trailing_newline=True)),
        (_old_layering, lambda v: canonical_json(v, integral_floats=True)),
        (_old_store, canonical_json_text),
        (_old_review, lambda v: canonical_json_text(v, ensure_ascii=True, default=_review_default)),
    ):
        _same(old, new, bad)
