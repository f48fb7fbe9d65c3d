"""fleetctl's token command helpers: ``--expires`` parsing (the note about 0 only for 0), and names rendered
with every non-printable character escaped."""

from __future__ import annotations

import pytest
import typer

from fleetctl.output import printable
from fleetctl.revocation_cmds import operator_ttl, own_token_id


@pytest.mark.parametrize(("expires", "note"), [("0", True), ("0d", True), ("-1d", False), ("-90s", False)])
def test_a_non_positive_expiry_is_refused_and_only_zero_mentions_the_old_meaning(expires: str, note: bool) -> None:
    with pytest.raises(typer.BadParameter) as info:
        operator_ttl(expires)
    assert "'never'" in str(info.value)
    assert ("0 no longer means no expiry" in str(info.value)) is note


def test_a_lifetime_and_never_are_accepted() -> None:
    assert operator_ttl("90d") == (90 * 86400, False)
    assert operator_ttl("never") == (0, True)


@pytest.mark.parametrize(
    ("name", "rendered"),
    [
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("a\nb", "a\\nb"),
        ("nul\x00", "nul\\x00"),
        ("[bold]x[/bold]", "\\[bold]x\\[/bold]"),
        ("ci deploy@host", "ci deploy@host"),
    ],
)
def test_names_render_with_non_printables_escaped(name: str, rendered: str) -> None:
    assert printable(name) == rendered
    assert printable(name).isprintable()


def test_own_token_id_is_read_from_an_operator_secret_only() -> None:
    assert own_token_id("eot_0123abcd.s3cret") == "0123abcd"
    assert own_token_id("eft_0123abcd.s3cret") == own_token_id("eot_0123abcd") == own_token_id("") == ""
