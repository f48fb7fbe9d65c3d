"""``shown``: values in messages and logs are cut to their first characters plus their length, and escaped."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgefleet.contract.shown import SHOWN_CHARS, shown


def test_short_values_are_their_repr() -> None:
    assert shown("lab-1") == "'lab-1'"
    assert shown(42) == "42"
    assert shown(float("nan")) == "nan"


def test_long_values_show_their_head_and_length() -> None:
    text = shown("x" * 7_000_000)
    assert text == repr("x" * SHOWN_CHARS) + "… (7000000 chars)"


def test_control_and_bidi_characters_are_escaped() -> None:
    assert shown("a\x00b\u202ec\n") == "'a\\x00b\\u202ec\\n'"


def test_bytes_are_shown_by_length_only() -> None:
    assert shown(b"\x00" * 5) == "<5 bytes>"


@given(st.text(max_size=2000) | st.binary(max_size=2000) | st.integers() | st.lists(st.text(), max_size=50))
def test_never_longer_than_the_limit_plus_the_length_note(value: object) -> None:
    text = shown(value)
    assert len(text) <= SHOWN_CHARS * 10 + 40  # repr escapes may widen a character to \\U0001xxxx
    assert "\n" not in text and "\x00" not in text
