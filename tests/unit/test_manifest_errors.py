"""Manifest error messages: file:line and field path, one error per document, YAML hazards refused."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.contract.errors import LOCATION_CHARS, ManifestError, ManifestSetError
from edgefleet.contract.manifest import parse_manifests
from edgefleet.contract.manifest_yaml import MAX_DOCUMENT_BYTES
from tests.unit.manifest_cases import HEAD


def _error(text: str, source: str = "m.yaml") -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifests(text, source=source)
    return info.value


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


def test_a_long_file_name_or_path_is_cut_in_the_location_keeping_the_line() -> None:
    name = "n" * 5000 + ".yaml"
    err = _error(f"{HEAD}kind: Nope\nmetadata:\n  name: x\nspec: {{}}\n", source=name)
    assert err.location == f"{'n' * LOCATION_CHARS}… (5005 chars):2"
    assert len(str(err)) < 600 and "Nope" in str(err)
    # a short location is kept whole
    assert ManifestError("bad", location="m.yaml:3", path="spec.x").location == "m.yaml:3"
    long_path = ManifestError("bad", path="spec." + "k" * 1000)
    assert long_path.path == f"spec.{'k' * (LOCATION_CHARS - 5)}… (1005 chars)"
