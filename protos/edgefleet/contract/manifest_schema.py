"""The manifest JSON Schema and the translation of its violations into edgefleet error messages.

Owns ``schema/manifest-v1.schema.json`` at run time (the same file is published under
``manifests/schema/`` for editors), the checks JSON Schema cannot express (Ed25519 trusted keys,
rising percent waves, cross-field bounds of a merged config, telemetry bounds that can never hold a record:
``telemetry_bounds``) and the wording of every violation:
``must be >= 50, got 10``, ``unknown field; did you mean 'min_frames'?``. Pure: no I/O beyond
reading the packaged schema once. ``config_keys`` lists the config's leaf keys, the list the runtime's
reader table and the classification of keys are held equal to.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from edgefleet.contract.errors import ManifestError
from edgefleet.contract.frozen import thaw
from edgefleet.contract.manifest_yaml import Path, describe_value, format_path
from edgefleet.contract.shown import shown
from edgefleet.contract.telemetry_bounds import review_quota_problem

API_VERSION = "edgefleet.io/v1"
SCHEMA_FILE = "manifest-v1.schema.json"


@dataclass(frozen=True)
class Violation:
    """One problem found in a value: where (path inside the value) and what, in words."""

    path: Path
    message: str


@functools.cache
def manifest_schema() -> Mapping[str, Any]:
    """The packaged JSON Schema (Draft 2020-12) of one manifest document."""
    text = resources.files("edgefleet.contract.schema").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _document_validator() -> Any:
    return jsonschema.Draft202012Validator(manifest_schema())


@functools.cache
def _config_validator() -> Any:
    schema = manifest_schema()
    # The config definition is validated on its own with the root's $defs in scope, for merged results.
    return jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/config"})


@functools.cache
def config_keys() -> tuple[str, ...]:
    """Every dotted leaf key of the config schema, sorted: a section with ``properties`` is walked; anything
    else (a scalar, a list, a free-keyed mapping such as ``trusted_keys``) is a key of its own. What the
    runtime's reader table and the inference/non-inference classification of keys are checked against."""

    def walk(properties: Mapping[str, Any], prefix: str) -> Iterator[str]:
        for name, node in properties.items():
            if isinstance(node, Mapping) and "properties" in node:
                yield from walk(node["properties"], f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    return tuple(sorted(walk(manifest_schema()["$defs"]["config"]["properties"], "")))


def document_violations(document: Any) -> list[Violation]:
    """Every violation of one parsed document, schema first, then the semantic checks."""
    found = [_violation(err) for err in _document_validator().iter_errors(document)]
    if found or not isinstance(document, dict):
        return found
    spec = document.get("spec", {})
    kind = document.get("kind")
    if kind == "Rollout":
        found.extend(_wave_violations(spec.get("strategy", {}).get("waves", [])))
    elif isinstance(spec.get("config"), dict):
        found.extend(_key_violations(spec["config"], ("spec", "config")))
    return found


def config_violations(values: Any) -> list[Violation]:
    """Every violation of a merged (effective) config: schema, no nulls left, cross-field bounds."""
    found = [_violation(err) for err in _config_validator().iter_errors(values)]
    if found or not isinstance(values, dict):
        return found
    found.extend(_null_violations(values, ()))
    found.extend(_key_violations(values, ()))
    found.extend(_cross_field_violations(values))
    return found


def validate_config_values(values: Mapping[str, Any]) -> None:
    """Re-check a merged config; raise ``ManifestError`` (``effective config``) on the first problem."""
    found = config_violations(thaw(values))
    if found:
        first = found[0]
        raise ManifestError(first.message, location="effective config", path=format_path(first.path))


_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "null": "null",
}


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "mapping"


def _got(value: Any) -> str:
    kind = _type_of(value)
    if kind == "mapping":
        return f"got fields {', '.join(map(str, value))}" if value else "got an empty mapping"
    if kind in ("list", "null"):
        return f"got {describe_value(value)}"
    return f"got {kind} {describe_value(value)}"


def _suggest(word: Any, choices: list[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {shown(close[0])}?" if close else ""


def _violation(err: Any) -> Violation:
    path: Path = tuple(err.absolute_path)
    schema: Mapping[str, Any] = err.schema if isinstance(err.schema, Mapping) else {}
    value = err.instance
    validator = err.validator
    expected = schema.get("x-expected")
    if "propertyNames" in err.absolute_schema_path:
        return Violation((*path, str(value)), f"invalid key: must be {expected or 'a valid key'}, got {shown(value)}")
    if validator == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in value if k not in allowed]
        key = extra[0] if extra else "?"
        hint = _suggest(key, allowed) or (f"; allowed fields: {', '.join(allowed)}" if allowed else "")
        return Violation((*path, key), f"unknown field{hint}")
    if validator == "required" and isinstance(value, dict):
        missing = [k for k in schema.get("required", []) if k not in value]
        key = missing[0] if missing else "?"
        return Violation((*path, key), "required field is missing")
    return Violation(path, _message(validator, err.validator_value, value, schema, expected, err))


def _message(validator: str, bound: Any, value: Any, schema: Mapping[str, Any], expected: Any, err: Any) -> str:
    if expected and validator in ("pattern", "anyOf", "oneOf", "minProperties", "maxProperties", "type"):
        return f"must be {expected}, {_got(value)}"
    bound_text = describe_value(bound)
    match validator:
        case "type":
            wanted = [bound] if isinstance(bound, str) else [t for t in bound if t != "null"]
            words = " or ".join(_TYPE_WORDS.get(t, t) for t in wanted)
            return f"must be {words}, {_got(value)}"
        case "const":
            return f"must be {shown(bound)}, got {describe_value(value)}"
        case "enum":
            choices = [c for c in bound if c is not None]
            listed = ", ".join(str(c) for c in choices)
            return f"must be one of {listed}, got {describe_value(value)}{_suggest(value, choices)}"
        case "minimum":
            return f"must be >= {bound_text}, got {describe_value(value)}"
        case "exclusiveMinimum":
            return f"must be > {bound_text}, got {describe_value(value)}"
        case "maximum":
            return f"must be <= {bound_text}, got {describe_value(value)}"
        case "exclusiveMaximum":
            return f"must be < {bound_text}, got {describe_value(value)}"
        case "minItems":
            return f"must have at least {bound} item(s), got {len(value)}"
        case "maxItems":
            return f"must have at most {bound} items, got {len(value)}"
        case "uniqueItems":
            return "must not repeat items; remove the duplicates"
        case "minLength":
            return "must not be empty" if bound == 1 else f"must be at least {bound} characters long"
        case "minProperties":
            return f"must have at least {bound} field(s)"
        case "maxProperties":
            return f"must have at most {bound} field(s)"
        case "pattern":
            return f"must match {shown(bound)}, {_got(value)}"
        case _:
            return str(err.message)


def _wave_violations(waves: Any) -> Iterator[Violation]:
    last_percent = 0
    for index, wave in enumerate(waves if isinstance(waves, list) else []):
        if isinstance(wave, str) and wave.endswith("%"):
            percent = int(wave[:-1])
            if percent <= last_percent:
                yield Violation(
                    ("spec", "strategy", "waves", index),
                    f"percent waves must grow, got {shown(wave)} after '{last_percent}%'",
                )
                return
            last_percent = percent


def _key_violations(config: Mapping[str, Any], prefix: Path) -> Iterator[Violation]:
    keys = config.get("trusted_keys")
    if not isinstance(keys, dict):
        return
    for key_id, pem in keys.items():
        if pem is None:
            continue
        try:
            key = load_pem_public_key(pem.encode("utf-8"))
        except (ValueError, TypeError):
            yield Violation(
                (*prefix, "trusted_keys", key_id),
                "cannot read the public key PEM; paste the whole '-----BEGIN PUBLIC KEY-----' block",
            )
            continue
        if not isinstance(key, Ed25519PublicKey):
            yield Violation(
                (*prefix, "trusted_keys", key_id),
                f"must be an Ed25519 public key, got {type(key).__name__}; bundles are signed with Ed25519",
            )


def _null_violations(value: Any, path: Path) -> Iterator[Violation]:
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None:
                yield Violation((*path, key), "null is only allowed in manifest layers (it removes a key)")
            else:
                yield from _null_violations(item, (*path, key))


def _cross_field_violations(values: Mapping[str, Any]) -> Iterator[Violation]:
    canary = values.get("canary") or {}
    if "deadline_s" in canary and "min_seconds" in canary and canary["deadline_s"] < canary["min_seconds"]:
        yield Violation(
            ("canary", "deadline_s"),
            f"must be >= canary.min_seconds ({describe_value(canary['min_seconds'])}), "
            f"got {describe_value(canary['deadline_s'])}; a canary could never finish",
        )
    telemetry = values.get("telemetry") or {}
    quota = telemetry.get("review_quota_bytes")
    if isinstance(quota, int) and (problem := review_quota_problem(quota)) is not None:
        yield Violation(("telemetry", "review_quota_bytes"), problem)
    buffer = telemetry.get("buffer_max_bytes")
    if buffer is not None:
        for field in ("batch_max_bytes", "review_quota_bytes"):
            if field in telemetry and telemetry[field] > buffer:
                yield Violation(
                    ("telemetry", field),
                    f"must be <= telemetry.buffer_max_bytes ({buffer}), got {telemetry[field]}",
                )
