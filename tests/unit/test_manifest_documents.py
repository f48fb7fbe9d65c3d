"""Manifest documents: the schema, the example manifests, document fields, loading files, document-set conflicts."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

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
from tests.unit.manifest_cases import HEAD

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


def _examples() -> list[ManifestDoc]:
    return [doc for path in EXAMPLE_PATHS for doc in load_manifests(path)]


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


def test_the_config_rollout_example_in_the_manifests_readme_parses() -> None:
    text = (MANIFESTS / "README.md").read_text(encoding="utf-8")
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    docs = parse_manifests(block, source="manifests/README.md")
    assert [d.kind for d in docs] == ["SiteConfig", "Rollout"]
    assert docs[1].spec["target"] == {"config": "SiteConfig/farm-b"}
