"""Latency budgeting: the pure ranking rule (``edgefleet.contract.budget``) and ``fleetctl budget`` offline,
on latency-profile JSON files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgefleet.contract.budget import (
    PROFILE_FORMAT,
    SIZE_BUNDLE,
    BudgetCandidate,
    candidate_from_profile,
    merge_candidates,
    parse_latency_ms,
    rank_candidates,
    select_candidates,
)
from edgefleet.contract.errors import BudgetError
from fleetctl.budget_cmds import budget


def cand(ref: str, p95: float | None, size: int, hw: str = "x86-avx2") -> BudgetCandidate:
    return BudgetCandidate(
        ref=ref,
        digest="sha256:" + ref.encode().hex().ljust(64, "0")[:64],
        hardware_class=hw,
        p95_ms=p95,
        size_bytes=size,
    )


@pytest.mark.parametrize(
    ("text", "ms"), [("40ms", 40.0), ("40 ms", 40.0), ("40", 40.0), ("0.04s", 40.0), ("500us", 0.5), ("12.5MS", 12.5)]
)
def test_parse_latency(text: str, ms: float) -> None:
    assert parse_latency_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "fast", "-5ms", "0ms", "40 min"])
def test_parse_latency_refuses(text: str) -> None:
    with pytest.raises(BudgetError, match=repr(text).replace("(", r"\(")):
        parse_latency_ms(text)


def test_largest_fitting_candidate_is_chosen_with_its_arithmetic() -> None:
    result = rank_candidates(
        [cand("small@1.0.0", 5.0, 1_000), cand("huge@1.0.0", 55.0, 90_000), cand("big@2.0.0", 31.2, 40_000)],
        40.0,
        0.2,
        0.0,
    )
    assert [c.candidate.ref for c in result.lines] == ["huge@1.0.0", "big@2.0.0", "small@1.0.0"]
    assert result.budget_ms == pytest.approx(32.0)
    assert result.chosen is not None and result.chosen.ref == "big@2.0.0"
    assert result.summary == "chosen: big@2.0.0 (p95 31.2 ms <= 32.0 ms)"
    huge, big, small = result.lines
    assert not huge.fits and "p95 55.0 ms > 40 ms × (1 − 0.20) = 32.0 ms: too slow" in huge.line
    assert big.fits and big.line.endswith("p95 31.2 ms <= 40 ms × (1 − 0.20) = 32.0 ms: fits: chosen")
    assert small.fits and small.line.endswith(": fits")
    assert big.margin_ms == pytest.approx(0.8)


def test_thermal_buffer_shrinks_the_budget() -> None:
    result = rank_candidates([cand("big@2.0.0", 31.2, 40_000), cand("small@1.0.0", 5.0, 1)], 40.0, 0.2, 0.1)
    assert result.budget_ms == pytest.approx(28.0)
    assert "40 ms × (1 − 0.20 − 0.10) = 28.0 ms" in result.lines[0].line
    assert result.chosen is not None and result.chosen.ref == "small@1.0.0"


def test_none_fits_names_the_fastest_and_unmeasured_never_fits() -> None:
    result = rank_candidates(
        [cand("a@1.0.0", 50.0, 10), cand("b@1.0.0", 45.0, 5), cand("c@1.0.0", None, 99)], 40, 0.2, 0
    )
    assert result.chosen is None
    assert result.lines[0].candidate.ref == "c@1.0.0" and "unmeasured" in result.lines[0].line
    assert result.summary.startswith("none fits: the fastest, b@1.0.0, has p95 45.0 ms > 40 ms × (1 − 0.20) = 32.0 ms")
    empty = rank_candidates([], 40, 0.2, 0)
    assert empty.chosen is None and "no candidate has a profile" in empty.summary


def test_values_that_round_alike_show_more_digits() -> None:
    result = rank_candidates([cand("edge@1.0.0", 32.04, 1)], 40.0, 0.2, 0.0)
    assert "p95 32.040 ms > 40 ms × (1 − 0.20) = 32.000 ms" in result.lines[0].line


@pytest.mark.parametrize(
    ("sla", "headroom", "thermal", "match"),
    [
        (0.0, 0.2, 0.0, "SLA must be > 0 ms, got 0.0"),
        (40.0, 1.2, 0.0, "headroom must be a fraction >= 0 and < 1"),
        (40.0, 0.2, -0.1, "thermal buffer must be a fraction"),
        (40.0, 0.6, 0.5, r"headroom \+ thermal buffer must be < 1, got 0.6 \+ 0.5"),
    ],
)
def test_bad_budget_inputs_are_refused(sla: float, headroom: float, thermal: float, match: str) -> None:
    with pytest.raises(BudgetError, match=match):
        rank_candidates([], sla, headroom, thermal)


def test_negative_p95_is_refused() -> None:
    with pytest.raises(BudgetError, match=r"bad@1\.0\.0: p95 must be a finite number >= 0 ms, got -1.0"):
        rank_candidates([cand("bad@1.0.0", -1.0, 1)], 40, 0.2, 0)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.floats(0, 100)), st.integers(0, 10_000)),
        min_size=0,
        max_size=8,
        unique_by=lambda t: t[1],
    ),
    st.floats(1, 100),
    st.floats(0, 0.5),
    st.floats(0, 0.4),
)
def test_chosen_is_the_largest_that_fits(
    items: list[tuple[float | None, int]], sla: float, headroom: float, thermal: float
) -> None:
    cands = [cand(f"m{i}@1.0.0", p95, size) for i, (p95, size) in enumerate(items)]
    result = rank_candidates(cands, sla, headroom, thermal)
    budget = sla * (1 - headroom - thermal)
    fitting = [c for c in cands if c.p95_ms is not None and c.p95_ms <= budget]
    if not fitting:
        assert result.chosen is None
    else:
        assert result.chosen is not None
        assert result.chosen.size_bytes == max(c.size_bytes for c in fitting)
    for line in result.lines:
        assert line.fits == (line.candidate.p95_ms is not None and line.candidate.p95_ms <= result.budget_ms)
    assert [c.candidate.size_bytes for c in result.lines] == sorted((c.size_bytes for c in cands), reverse=True)


def test_merge_keeps_the_slowest_profile_of_a_bundle_on_a_class() -> None:
    a1, a2, other = cand("a@1.0.0", 10.0, 5), cand("a@1.0.0", 14.0, 5), cand("a@1.0.0", 30.0, 5, hw="jetson")
    merged = merge_candidates([a1, a2, other])
    assert [(c.hardware_class, c.p95_ms, c.samples) for c in merged] == [("x86-avx2", 14.0, 0), ("jetson", 30.0, 0)]


def test_select_adds_requested_bundles_without_profiles() -> None:
    picked = select_candidates(
        [cand("a@1.0.0", 10.0, 5), cand("b@1.0.0", 9.0, 5, hw="jetson")], ["a@1.0.0", "z@9.0.0"], "x86-avx2"
    )
    assert [(c.ref, c.p95_ms) for c in picked] == [("a@1.0.0", 10.0), ("z@9.0.0", None)]


def profile_doc(ref: str, p95: float, model_bytes: int, hw: str = "x86-avx2") -> dict[str, object]:
    return {
        "format": PROFILE_FORMAT,
        "bundle": {
            "ref": ref,
            "digest": "sha256:" + ref.encode().hex().ljust(64, "0")[:64],
            "model_bytes": model_bytes,
            "bundle_bytes": model_bytes * 3,
        },
        "hardware_class": hw,
        "stages": {"total": {"p50_ms": p95 / 2, "p95_ms": p95, "p99_ms": p95 * 1.1, "count": 100}},
    }


def test_candidate_from_profile_document() -> None:
    c = candidate_from_profile(profile_doc("a@1.0.0", 12.5, 4_000), source="a.json")
    assert (c.ref, c.p95_ms, c.p50_ms, c.size_bytes, c.hardware_class) == ("a@1.0.0", 12.5, 6.25, 4_000, "x86-avx2")
    doc = profile_doc("a@1.0.0", 12.5, 0)
    assert candidate_from_profile(doc, source="a.json").size_basis == SIZE_BUNDLE
    with pytest.raises(BudgetError, match=r"a\.json: field 'format' must be 'edgefleet\.latency-profile/v1', got 'x'"):
        candidate_from_profile({**doc, "format": "x"}, source="a.json")
    del doc["stages"]
    with pytest.raises(BudgetError, match=r"a\.json: field 'stages\.total\.p95_ms' is required"):
        candidate_from_profile(doc, source="a.json")


# ----------------------------------------------------------------------------------- fleetctl budget offline

app = typer.Typer()
app.command("budget")(budget)
app.command("noop")(lambda: None)  # a second command keeps 'budget' a sub-command, as when mounted
runner = CliRunner()


def write_profiles(tmp_path: Path, *docs: dict[str, object]) -> list[str]:
    args = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"p{i}.json"
        path.write_text(json.dumps(doc))
        args += ["--profile", str(path)]
    return args


def test_fleetctl_budget_from_profile_files(tmp_path: Path) -> None:
    files = write_profiles(
        tmp_path,
        profile_doc("big@2.0.0", 31.2, 40_000),
        profile_doc("huge@1.0.0", 80.0, 90_000),
        profile_doc("small@1.0.0", 4.0, 1_000),
    )
    result = runner.invoke(app, ["budget", "--sla", "40ms", "--hardware-class", "x86-avx2", *files])
    assert result.exit_code == 0, result.output
    assert "huge@1.0.0" in result.output and "80.0 > 32.0 ms" in result.output
    assert "31.2 <= 32.0 ms" in result.output
    assert result.output.strip().splitlines()[-1] == "chosen: big@2.0.0 (p95 31.2 ms <= 32.0 ms)"

    as_json = runner.invoke(app, ["budget", "--sla", "40ms", "-o", "json", *files])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["chosen"] == "big@2.0.0" and data["budget_ms"] == 32.0
    assert [c["ref"] for c in data["candidates"]] == ["huge@1.0.0", "big@2.0.0", "small@1.0.0"]


def test_fleetctl_budget_none_fits_exits_1_with_the_arithmetic(tmp_path: Path) -> None:
    files = write_profiles(tmp_path, profile_doc("big@2.0.0", 31.2, 40_000))
    result = runner.invoke(app, ["budget", "--sla", "40ms", "--thermal-buffer", "0.1", *files])
    assert result.exit_code == 1
    assert "none fits: the fastest, big@2.0.0, has p95 31.2 ms > 40 ms × (1 − 0.20 − 0.10) = 28.0 ms" in result.output


def test_fleetctl_budget_bad_input_exits_2(tmp_path: Path) -> None:
    files = write_profiles(tmp_path, profile_doc("a@1.0.0", 3.0, 1), profile_doc("b@1.0.0", 3.0, 1, hw="jetson"))
    bad_sla = runner.invoke(app, ["budget", "--sla", "fast", *files])
    assert bad_sla.exit_code == 2 and "latency must look like 40ms" in bad_sla.output
    mixed = runner.invoke(app, ["budget", "--sla", "40ms", *files])
    assert mixed.exit_code == 2 and "several hardware classes (jetson, x86-avx2)" in mixed.output
    (tmp_path / "junk.json").write_text("{nope")
    junk = runner.invoke(app, ["budget", "--sla", "40ms", "--profile", str(tmp_path / "junk.json")])
    assert junk.exit_code == 2 and "is not JSON" in junk.output


def test_a_bundle_that_failed_its_canary_is_never_chosen_and_says_why() -> None:
    failed = replace(cand("big@2.0.0", 20.0, 40_000), failed_canary="lab-1 in rollout ro_1: canary FAIL: drift")
    result = rank_candidates([failed, cand("small@1.0.0", 5.0, 1_000)], 40.0, 0.2, 0.0)
    assert result.chosen is not None and result.chosen.ref == "small@1.0.0"
    line = result.lines[0]
    assert not line.fits and "excluded: failed its canary (lab-1 in rollout ro_1: canary FAIL: drift)" in line.line
    assert result.to_dict()["candidates"][0]["failed_canary"].startswith("lab-1")  # type: ignore[index]
    alone = rank_candidates([failed], 40.0, 0.2, 0.0)
    assert alone.chosen is None and "every candidate failed its canary (big@2.0.0)" in alone.summary
    # merging profiles of one bundle keeps the mark
    (merged,) = merge_candidates([cand("big@2.0.0", 10.0, 40_000), failed])
    assert merged.failed_canary
