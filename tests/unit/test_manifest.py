"""Manifest parsing: the schema, the example manifests, error messages with file:line, fuzzing."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract.errors import ManifestError, ManifestSetError
from edgefleet.contract.manifest import (
    DEFAULT_CONFIG,
    ManifestDoc,
    ManifestKind,
    check_document_set,
    load_manifests,
    parse_manifests,
    validate_config_values,
)
from edgefleet.contract.manifest_yaml import MAX_DOCUMENT_BYTES

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
PACKAGED_SCHEMA = ROOT / "protos" / "edgefleet" / "contract" / "schema" / "manifest-v1.schema.json"
PUBLISHED_SCHEMA = MANIFESTS / "schema" / "manifest-v1.schema.json"
EXAMPLE_PATHS = [
    MANIFESTS / "fleet.yaml",
    MANIFESTS / "sites",
    MANIFESTS / "devices",
    MANIFESTS / "rollouts",
]
HEAD = "apiVersion: edgefleet.io/v1\n"


def _examples() -> list[ManifestDoc]:
    return [doc for path in EXAMPLE_PATHS for doc in load_manifests(path)]


def _error(text: str, source: str = "m.yaml") -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifests(text, source=source)
    return info.value


# ---------------------------------------------------------------- schema and examples


def test_packaged_and_published_schema_are_byte_identical() -> None:
    assert PACKAGED_SCHEMA.read_bytes() == PUBLISHED_SCHEMA.read_bytes()


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json.loads(PACKAGED_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_built_in_defaults_are_a_valid_config() -> None:
    validate_config_values(DEFAULT_CONFIG)


def test_every_example_manifest_validates_and_forms_a_valid_set() -> None:
    docs = _examples()
    check_document_set(docs)
    refs = {doc.ref for doc in docs}
    assert {
        "FleetConfig/default",
        "SiteConfig/warehouse-a",
        "SiteConfig/farm-b",
        "DeviceConfig/thermal-cameras",
        "DeviceConfig/dock-door-3",
        "Rollout/classifier-v2",
    } <= refs
    kinds = {doc.kind for doc in docs}
    assert kinds == set(ManifestKind)


def test_example_rollout_fields() -> None:
    (rollout,) = load_manifests(MANIFESTS / "rollouts" / "classifier-v2.yaml")
    assert rollout.kind is ManifestKind.ROLLOUT
    assert rollout.spec["strategy"]["waves"] == (1, "10%", "50%", "100%")
    assert rollout.selector["sites"] == ("warehouse-a", "farm-b")
    assert rollout.line == 4


def test_document_fields_and_lines() -> None:
    text = (
        "# leading comment\n"
        "---\n"
        f"{HEAD}kind: SiteConfig\nmetadata: {{name: wa, site: warehouse-a}}\nspec: {{config: {{}}}}\n"
        "---\n"
        "---\n"
        f"{HEAD}kind: DeviceConfig\nmetadata: {{name: hot}}\n"
        "spec:\n  selector: {tags: {camera: thermal}}\n  priority: 7\n  config: {sla: {latency_ms: 40}}\n"
        "---\n"
    )
    site, device = parse_manifests(text, source="x.yaml")
    assert (site.kind, site.name, site.site, site.line, site.source) == (
        ManifestKind.SITE_CONFIG,
        "wa",
        "warehouse-a",
        3,
        "x.yaml",
    )
    assert site.selector == {} and site.priority == 0
    assert device.kind is ManifestKind.DEVICE_CONFIG and device.site is None
    assert device.selector == {"tags": {"camera": "thermal"}}
    assert device.priority == 7 and device.line == 9
    assert device.config == {"sla": {"latency_ms": 40}}
    assert device.location == "x.yaml:9"


def test_empty_text_and_comment_only_text_hold_no_documents() -> None:
    assert parse_manifests("") == []
    assert parse_manifests("# nothing here\n---\n") == []


def test_documents_are_read_only() -> None:
    (doc,) = parse_manifests(f"{HEAD}kind: FleetConfig\nmetadata: {{name: f}}\nspec: {{config: {{}}}}\n")
    with pytest.raises(TypeError):
        doc.spec["config"] = {}  # type: ignore[index]


def test_to_dict_round_trips_and_digest_ignores_source_and_key_order() -> None:
    spec_a = "spec: {config: {canary: {min_frames: 60, headroom: 0.1}}}\n"
    spec_b = "spec: {config: {canary: {headroom: 0.1, min_frames: 60.0}}}\n"
    a = f"{HEAD}kind: FleetConfig\nmetadata: {{name: f}}\n{spec_a}"
    b = f"kind: FleetConfig\n{spec_b}metadata: {{name: f}}\n{HEAD}"
    (doc_a,) = parse_manifests(a, source="a.yaml")
    (doc_b,) = parse_manifests(b, source="b.yaml")
    assert doc_a.content_digest == doc_b.content_digest
    assert doc_a.content_digest.startswith("sha256:") and len(doc_a.content_digest) == 71
    again = ManifestDoc.from_dict(doc_a.to_dict(), source="a.yaml", line=1)
    assert again == doc_a
    (changed,) = parse_manifests(a.replace("60", "61"))
    assert changed.content_digest != doc_a.content_digest


def test_from_dict_validates() -> None:
    with pytest.raises(ManifestError, match=r"store:1 spec\.config\.canary\.min_frames: must be >= 50, got 1"):
        ManifestDoc.from_dict(
            {
                "apiVersion": "edgefleet.io/v1",
                "kind": "FleetConfig",
                "metadata": {"name": "f"},
                "spec": {"config": {"canary": {"min_frames": 1}}},
            },
            source="store",
        )


# ---------------------------------------------------------------- error messages

FLEET = f"{HEAD}kind: FleetConfig\nmetadata:\n  name: fleet\nspec:\n  config:\n"
ROLLOUT = f"{HEAD}kind: Rollout\nmetadata:\n  name: r\nspec:\n  target:\n    bundle: cls@1.0.0\n"


def _ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


ERROR_CASES: list[tuple[str, str, str]] = [
    (
        "min_frames below 50",
        FLEET + "    canary:\n      min_frames: 10\n",
        "m.yaml:8 spec.config.canary.min_frames: must be >= 50, got 10",
    ),
    (
        "negative sla",
        FLEET + "    sla:\n      latency_ms: -5\n",
        "m.yaml:8 spec.config.sla.latency_ms: must be > 0, got -5",
    ),
    (
        "unknown field with suggestion",
        FLEET + "    canary:\n      headroom: 0.2\n      min_frame: 300\n",
        "m.yaml:9 spec.config.canary.min_frame: unknown field; did you mean 'min_frames'?",
    ),
    (
        "unknown top-level section",
        FLEET + "    telemetri: {}\n",
        "m.yaml:7 spec.config.telemetri: unknown field; did you mean 'telemetry'?",
    ),
    (
        "wrong kind",
        f"{HEAD}kind: FleetConfigs\nmetadata: {{name: f}}\nspec: {{config: {{}}}}\n",
        "m.yaml:2 kind: must be one of FleetConfig, SiteConfig, DeviceConfig, Rollout, got 'FleetConfigs'; "
        "did you mean 'FleetConfig'?",
    ),
    (
        "wrong apiVersion",
        "apiVersion: edgefleet.io/v2\nkind: FleetConfig\nmetadata: {name: f}\nspec: {config: {}}\n",
        "m.yaml:1 apiVersion: must be 'edgefleet.io/v1', got 'edgefleet.io/v2'",
    ),
    (
        "wave over 100%",
        ROLLOUT + "  strategy:\n    waves: [1, '10%', '150%']\n",
        "m.yaml:9 spec.strategy.waves[2]: must be a device count >= 1 or a percentage from '1%' to '100%', "
        "got string '150%'",
    ),
    (
        "waves shrinking",
        ROLLOUT + "  strategy:\n    waves:\n      - '50%'\n      - '10%'\n",
        "m.yaml:11 spec.strategy.waves[1]: percent waves must grow, got '10%' after '50%'",
    ),
    (
        "rollout bundle reference",
        ROLLOUT.replace("cls@1.0.0", "cls-latest"),
        "m.yaml:7 spec.target.bundle: must be a bundle digest 'sha256:<64 hex>' or 'name@<semver>', "
        "got string 'cls-latest'",
    ),
    (
        "rollout on_abort",
        ROLLOUT + "  on_abort: retry\n",
        "m.yaml:8 spec.on_abort: must be one of rollback, halt, got 'retry'",
    ),
    (
        "duplicate key",
        FLEET + "    canary:\n      min_frames: 300\n      min_frames: 400\n",
        "m.yaml:9 spec.config.canary.min_frames: duplicate key 'min_frames' (first at line 8); keep only one",
    ),
    (
        "non-string key",
        FLEET + "    trusted_keys:\n      1: one\n",
        "m.yaml:8 spec.config.trusted_keys: keys must be strings, got the int key '1'; quote the key",
    ),
    (
        "yes as a key",
        FLEET + "    trusted_keys:\n      yes: 1\n",
        "m.yaml:8 spec.config.trusted_keys: keys must be strings, got the bool key 'yes'; quote the key",
    ),
    (
        "missing name",
        f"{HEAD}kind: FleetConfig\nmetadata:\n  description: x\nspec: {{config: {{}}}}\n",
        "m.yaml:3 metadata.name: required field is missing",
    ),
    (
        "site config without site",
        f"{HEAD}kind: SiteConfig\nmetadata: {{name: a}}\nspec: {{config: {{}}}}\n",
        "m.yaml:3 metadata.site: required field is missing",
    ),
    (
        "bad name",
        f"{HEAD}kind: FleetConfig\nmetadata: {{name: My Fleet}}\nspec: {{config: {{}}}}\n",
        "m.yaml:3 metadata.name: must be a lowercase name of 1-63 characters (a-z, 0-9, '.', '_', '-'), "
        "starting and ending with a letter or digit, got string 'My Fleet'",
    ),
    (
        "wrong type",
        FLEET + "    canary:\n      min_frames: lots\n",
        "m.yaml:8 spec.config.canary.min_frames: must be an integer, got string 'lots'",
    ),
    (
        "bad provider",
        FLEET + "    inference:\n      providers: [cuda, rocm]\n",
        "m.yaml:8 spec.config.inference.providers[1]: must be one of tensorrt, cuda, cpu, got 'rocm'",
    ),
    (
        "bad source",
        FLEET + "    source: webcam\n",
        "m.yaml:7 spec.config.source: must be a frame source: 'synthetic', 'synthetic:FPS', 'images:DIR' or "
        "'video:FILE', got string 'webcam'",
    ),
    (
        "selector with both device and tags",
        f"{HEAD}kind: DeviceConfig\nmetadata: {{name: d}}\nspec:\n  selector: {{device: x, tags: {{a: b}}}}\n"
        "  config: {}\n",
        "m.yaml:5 spec.selector: must be exactly one of 'device: <id or name>' or 'tags: {key: value}', "
        "got fields device, tags",
    ),
    (
        "tag value not a string",
        f"{HEAD}kind: DeviceConfig\nmetadata: {{name: d}}\nspec:\n  selector:\n    tags:\n      floor: 2\n"
        "  config: {}\n",
        "m.yaml:7 spec.selector.tags.floor: must be a string (quote numbers and yes/no), got integer 2",
    ),
    (
        "thermal buffer out of range",
        FLEET + "    sla: {thermal_buffer: 1.5}\n",
        "m.yaml:7 spec.config.sla.thermal_buffer: must be <= 1, got 1.5",
    ),
    (
        "bad pem",
        FLEET + '    trusted_keys:\n      k1: "-----BEGIN PUBLIC KEY-----\\nnope\\n"\n',
        "m.yaml:8 spec.config.trusted_keys.k1: cannot read the public key PEM; paste the whole "
        "'-----BEGIN PUBLIC KEY-----' block",
    ),
    (
        "timestamp",
        FLEET + "    trusted_keys:\n      since: 2024-05-01\n",
        "m.yaml:8 spec.config.trusted_keys.since: dates and times are not supported, got '2024-05-01'; "
        "quote the value to keep it as text",
    ),
    (
        "infinite number",
        FLEET + "    canary: {max_p95_ratio: .inf}\n",
        "m.yaml:7 spec.config.canary.max_p95_ratio: numbers must be finite, got '.inf'",
    ),
    (
        "merge key",
        FLEET + "    canary: &c {min_frames: 300}\n    trusted_keys:\n      <<: *c\n",
        "m.yaml:9 spec.config.trusted_keys: YAML merge keys ('<<') are not supported; share settings by layering "
        "FleetConfig, SiteConfig and DeviceConfig instead",
    ),
    (
        "python tag",
        FLEET + "    trusted_keys: !!python/object:os.system {}\n",
        "m.yaml:7 spec.config.trusted_keys: unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'; "
        "use a plain mapping",
    ),
    (
        "non-mapping document",
        "- a\n- b\n",
        "m.yaml:1: document must be a mapping with apiVersion, kind, metadata and spec, got a list",
    ),
    (
        "scalar document",
        "hello\n",
        "m.yaml:1: document must be a mapping with apiVersion, kind, metadata and spec, got the scalar 'hello'",
    ),
    (
        "syntax error",
        FLEET + "    canary: {min_frames: 300\n",
        "m.yaml:8: invalid YAML: expected ',' or '}', but got '<stream end>'; fix the syntax",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_error_messages_carry_file_line_and_path(text: str, expected: str) -> None:
    err = _error(text)
    assert str(err) == expected
    assert not isinstance(err, ManifestSetError)
    assert err.location.startswith("m.yaml")


def test_error_attributes() -> None:
    err = _error(FLEET + "    canary:\n      min_frames: 10\n")
    assert (err.location, err.path, err.detail) == (
        "m.yaml:8",
        "spec.config.canary.min_frames",
        "must be >= 50, got 10",
    )


def test_non_ed25519_trusted_key_is_refused() -> None:
    pem = _ec_pem().replace("\n", "\n        ")
    err = _error(FLEET + f"    trusted_keys:\n      k1: |\n        {pem}\n")
    assert err.path == "spec.config.trusted_keys.k1"
    assert err.detail.startswith("must be an Ed25519 public key, got ")


def test_first_error_of_a_document_is_the_earliest_line() -> None:
    text = FLEET + "    sla: {latency_ms: 0}\n    canary: {min_frames: 1}\n"
    assert _error(text).location == "m.yaml:7"


def test_one_error_per_document_is_collected() -> None:
    good = f"{HEAD}kind: FleetConfig\nmetadata: {{name: f}}\nspec: {{config: {{}}}}\n"
    text = "\n---\n".join(
        [
            FLEET + "    canary: {min_frames: 1, headroom: 5}\n",
            good,
            "kind: Nope\n",
            FLEET + "    sla:\n      latency_ms: 1\n      latency_ms: 2\n",
        ]
    )
    with pytest.raises(ManifestSetError) as info:
        parse_manifests(text, source="m.yaml")
    err = info.value
    assert [str(e) for e in err.errors] == [
        "m.yaml:7 spec.config.canary.min_frames: must be >= 50, got 1",
        "m.yaml:16 apiVersion: required field is missing",
        "m.yaml:27 spec.config.sla.latency_ms: duplicate key 'latency_ms' (first at line 26); keep only one",
    ]
    assert str(err).startswith("3 invalid manifest documents:\n  m.yaml:7 spec.config.canary.min_frames")
    assert isinstance(err, ManifestError) and err.location == "m.yaml:7"


def test_alias_bomb_is_refused() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    err = _error("\n".join(lines) + "\n")
    assert "alias bomb" in str(err)
    assert err.location.startswith("m.yaml:")


def test_recursive_alias_is_refused() -> None:
    err = _error("a: &a [*a]\n")
    assert str(err) == "m.yaml:1 a: nesting is deeper than 64 levels (recursive alias?); flatten the document"


def test_small_aliases_are_allowed() -> None:
    text = (
        f"{HEAD}kind: FleetConfig\nmetadata: {{name: f}}\nspec:\n  config:\n"
        "    canary: {min_frames: &n 300}\n    review: {max_per_hour: *n}\n"
    )
    (doc,) = parse_manifests(text)
    assert doc.config["review"]["max_per_hour"] == 300


def test_document_over_one_mebibyte_is_refused() -> None:
    filler = "x" * 1000
    body = "".join(f"      k{i}: {filler}\n" for i in range(MAX_DOCUMENT_BYTES // 1000 + 10))
    err = _error(FLEET + "    trusted_keys:\n" + body)
    assert err.location == "m.yaml:1"
    assert "the limit is 1048576 bytes; split it" in str(err)


def test_deep_nesting_is_refused() -> None:
    err = _error("[" * 5000)
    assert isinstance(err, ManifestError)


# ---------------------------------------------------------------- loading files


def test_load_directory_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b" / "z.yml").write_text(
        f"{HEAD}kind: SiteConfig\nmetadata: {{name: z, site: z}}\nspec: {{config: {{}}}}\n", encoding="utf-8"
    )
    (tmp_path / "a.yaml").write_text(
        f"{HEAD}kind: FleetConfig\nmetadata: {{name: f}}\nspec: {{config: {{}}}}\n", encoding="utf-8"
    )
    (tmp_path / ".git" / "x.yaml").write_text("broken: [", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("broken: [", encoding="utf-8")
    docs = load_manifests(tmp_path)
    assert [d.ref for d in docs] == ["FleetConfig/f", "SiteConfig/z"]
    assert docs[1].source == str(tmp_path / "b" / "z.yml")


def test_load_reports_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "sites" / "a.yaml"
    bad.parent.mkdir()
    bad.write_text(
        f"{HEAD}kind: SiteConfig\nmetadata: {{name: a, site: a}}\nspec:\n  config:\n    canary:\n"
        "      min_frames: 10\n",
        encoding="utf-8",
    )
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    assert str(info.value) == f"{bad}:7 spec.config.canary.min_frames: must be >= 50, got 10"


def test_load_refuses_non_utf8_and_missing_paths(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ManifestError, match="file is not UTF-8"):
        load_manifests(bad)
    with pytest.raises(ManifestError, match="no such file or directory"):
        load_manifests(tmp_path / "missing")


# ---------------------------------------------------------------- document sets


def _doc(kind: str, name: str, extra_meta: str = "", spec: str = "{config: {}}") -> str:
    return f"{HEAD}kind: {kind}\nmetadata: {{name: {name}{extra_meta}}}\nspec: {spec}\n"


def test_two_fleet_configs_are_refused() -> None:
    docs = parse_manifests(_doc("FleetConfig", "a") + "---\n" + _doc("FleetConfig", "b"), source="f.yaml")
    with pytest.raises(ManifestError) as info:
        check_document_set(docs)
    assert str(info.value) == (
        "f.yaml:6 metadata.name: second FleetConfig 'b' (first is 'a' at f.yaml:1); "
        "a fleet has exactly one FleetConfig, merge them"
    )


def test_two_site_configs_for_one_site_are_refused() -> None:
    text = _doc("SiteConfig", "a1", ", site: a") + "---\n" + _doc("SiteConfig", "a2", ", site: a")
    with pytest.raises(ManifestError, match=r"f\.yaml:6 metadata\.site: second SiteConfig for site 'a': 'a2'"):
        check_document_set(parse_manifests(text, source="f.yaml"))


def test_duplicate_kind_and_name_is_refused_but_same_name_across_kinds_is_fine() -> None:
    device = "{selector: {device: d1}, config: {}}"
    same_kind = _doc("DeviceConfig", "x", spec=device) + "---\n" + _doc("DeviceConfig", "x", spec=device)
    with pytest.raises(ManifestError, match=r"duplicate DeviceConfig/x \(first at f\.yaml:1\)"):
        check_document_set(parse_manifests(same_kind, source="f.yaml"))
    across = _doc("FleetConfig", "x") + "---\n" + _doc("DeviceConfig", "x", spec=device)
    check_document_set(parse_manifests(across))


def test_several_set_conflicts_are_all_listed() -> None:
    text = "---\n".join([_doc("FleetConfig", "a"), _doc("FleetConfig", "b"), _doc("FleetConfig", "a")])
    with pytest.raises(ManifestSetError) as info:
        check_document_set(parse_manifests(text))
    assert len(info.value.errors) == 2


# ---------------------------------------------------------------- fuzzing: only ManifestError escapes


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


def test_the_config_rollout_example_in_the_manifests_readme_parses() -> None:
    text = (MANIFESTS / "README.md").read_text(encoding="utf-8")
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    docs = parse_manifests(block, source="manifests/README.md")
    assert [d.kind for d in docs] == ["SiteConfig", "Rollout"]
    assert docs[1].spec["target"] == {"config": "SiteConfig/farm-b"}
