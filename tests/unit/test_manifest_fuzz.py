"""Manifest parsing fuzzed: random text, YAML token soup, random structures; only ManifestError escapes."""

from __future__ import annotations

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract.errors import ManifestError
from edgefleet.contract.manifest import ManifestDoc, parse_manifests


def _parse_or_manifest_error(text: str) -> None:
    try:
        docs = parse_manifests(text, source="fuzz.yaml")
    except ManifestError as exc:
        assert str(exc)
        return
    for doc in docs:
        assert ManifestDoc.from_dict(doc.to_dict()).content_digest == doc.content_digest


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_random_text(text: str) -> None:
    _parse_or_manifest_error(text)


YAML_TOKENS = [
    "apiVersion: edgefleet.io/v1\n",
    "kind: FleetConfig\n",
    "kind: Rollout\n",
    "metadata: {name: f}\n",
    "spec:\n",
    "  config:\n",
    "    canary: {min_frames: 300}\n",
    "---\n",
    "&a ",
    "*a",
    "<<: ",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "? ",
    "|\n",
    ">\n",
    "!!binary ",
    "!!set ",
    "!!timestamp ",
    "!!python/name:os.system ",
    "!custom ",
    "'",
    '"',
    "#",
    "\n",
    "  ",
    "\t",
    "null",
    "~",
    "yes",
    "1e999",
    ".nan",
    "0x1F",
    "2024-13-45",
    "key",
    "%YAML 1.1\n",
    "...\n",
    "\x00",
    "\ufeff",
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join))
def test_fuzz_yaml_token_soup(text: str) -> None:
    _parse_or_manifest_error(text)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers() | st.booleans(), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(JSONISH)
def test_fuzz_random_yaml_structures(value: object) -> None:
    _parse_or_manifest_error(yaml.safe_dump(value))


SETTING_KEYS = [
    "inference",
    "sla",
    "canary",
    "telemetry",
    "review",
    "source",
    "trusted_keys",
    "extra",
    "bogus",
]


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["FleetConfig", "SiteConfig", "DeviceConfig", "Rollout", "Other"]),
    config=st.dictionaries(st.sampled_from(SETTING_KEYS), JSONISH, max_size=4),
    spec_extra=st.dictionaries(
        st.sampled_from(["selector", "priority", "target", "strategy", "gates"]), JSONISH, max_size=3
    ),
)
def test_fuzz_manifest_shaped_documents(kind: str, config: dict[str, object], spec_extra: dict[str, object]) -> None:
    document = {
        "apiVersion": "edgefleet.io/v1",
        "kind": kind,
        "metadata": {"name": "fuzz", "site": "s"},
        "spec": {"config": config, **spec_extra},
    }
    _parse_or_manifest_error(yaml.safe_dump(document))
