"""Config manifests: parsing YAML documents into ``ManifestDoc`` values, document-set rules, layering.

The public face of the manifest contract. A manifest file holds one or more ``---``-separated YAML
documents, each ``apiVersion: edgefleet.io/v1`` with ``kind`` one of ``FleetConfig``, ``SiteConfig``,
``DeviceConfig`` or ``Rollout`` (schema: ``schema/manifest-v1.schema.json``). This module owns:

- ``parse_manifests`` / ``load_manifests``: text or files → validated, immutable ``ManifestDoc``s.
  Every error carries ``file:line`` and the dotted path (``fleet.yaml:12 spec.config.canary.min_frames:
  must be >= 50, got 10``). One error is reported per invalid document; when several documents are
  invalid a ``ManifestSetError`` lists them all, so an operator fixes a whole file in one round.
- ``check_document_set``: rules across documents (one FleetConfig, one SiteConfig per site, unique
  kind + name).
- ``effective_config``: which documents apply to a device and in what order — FleetConfig < the device's
  SiteConfig < tag-selector DeviceConfigs < device-specific DeviceConfigs, DeviceConfigs in ascending
  ``priority`` then name. The result holds only what those documents set; the built-in defaults and the
  bundle's declared policy sit below it and are resolved with it by
  ``edgefleet.contract.precedence.resolve_policy``. The merge rule itself lives in
  ``edgefleet.contract.layering``.

Pure except ``load_manifests``, which reads files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path as FsPath
from types import MappingProxyType
from typing import Any

from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.digests import sha256_digest
from edgefleet.contract.errors import ManifestError, ManifestSetError
from edgefleet.contract.frozen import freeze, thaw
from edgefleet.contract.layering import (
    DEFAULT_CONFIG,
    DeviceFacts,
    EffectiveConfig,
    merge_config_layers,
    validate_config_values,
)
from edgefleet.contract.manifest_schema import API_VERSION, document_violations
from edgefleet.contract.manifest_yaml import (
    MAX_TEXT_BYTES,
    YamlDocumentError,
    format_path,
    line_of,
    read_documents,
)
from edgefleet.contract.shown import shown

__all__ = [
    "API_VERSION",
    "DEFAULT_CONFIG",
    "DeviceFacts",
    "EffectiveConfig",
    "ManifestDoc",
    "ManifestKind",
    "check_document_set",
    "config_layers",
    "effective_config",
    "load_manifests",
    "parse_manifests",
    "select_layers",
    "validate_config_values",
]

MANIFEST_SUFFIXES = (".yaml", ".yml")


class ManifestKind(StrEnum):
    """Document kinds; the stored names never change."""

    FLEET_CONFIG = "FleetConfig"
    SITE_CONFIG = "SiteConfig"
    DEVICE_CONFIG = "DeviceConfig"
    ROLLOUT = "Rollout"


CONFIG_KINDS = frozenset({ManifestKind.FLEET_CONFIG, ManifestKind.SITE_CONFIG, ManifestKind.DEVICE_CONFIG})

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class ManifestDoc:
    """One validated manifest document. Mappings are read-only; ``to_dict`` gives a plain copy.

    ``selector`` is ``spec.selector`` for DeviceConfig and Rollout (empty otherwise), ``priority`` is
    ``spec.priority`` for DeviceConfig (0 otherwise), ``site`` is ``metadata.site`` for SiteConfig.
    ``source`` and ``line`` say where the document came from; they are not part of its content.
    """

    kind: ManifestKind
    name: str
    site: str | None
    selector: Mapping[str, Any]
    priority: int
    spec: Mapping[str, Any]
    source: str
    line: int
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def ref(self) -> str:
        """``Kind/name``, how results, sources and errors name a document."""
        return f"{self.kind.value}/{self.name}"

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def config(self) -> Mapping[str, Any]:
        """``spec.config`` of a config kind; empty for a Rollout."""
        found = self.spec.get("config")
        return found if isinstance(found, Mapping) else _EMPTY

    def to_dict(self) -> dict[str, Any]:
        """The document as plain data (apiVersion, kind, metadata, spec), ready for YAML or JSON."""
        metadata = thaw(self.metadata) if self.metadata else {"name": self.name}
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind.value,
            "metadata": metadata,
            "spec": thaw(self.spec),
        }

    @property
    def content_digest(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of ``to_dict()``; equal content hashes the same."""
        return sha256_digest(canonical_json(self.to_dict(), integral_floats=True))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>", line: int = 1) -> ManifestDoc:
        """Validate a plain document (e.g. read back from a store) and build a ``ManifestDoc``."""
        plain = thaw(data)
        violations = document_violations(plain)
        if violations:
            first = violations[0]
            raise ManifestError(first.message, location=f"{source}:{line}", path=format_path(first.path))
        return _build(plain, source=source, line=line)


def _build(value: dict[str, Any], *, source: str, line: int) -> ManifestDoc:
    kind = ManifestKind(value["kind"])
    metadata = value["metadata"]
    spec = value["spec"]
    has_selector = kind in (ManifestKind.DEVICE_CONFIG, ManifestKind.ROLLOUT)
    return ManifestDoc(
        kind=kind,
        name=metadata["name"],
        site=metadata.get("site"),
        selector=freeze(spec.get("selector", {}) if has_selector else {}),
        priority=int(spec.get("priority", 0)) if kind is ManifestKind.DEVICE_CONFIG else 0,
        spec=freeze(spec),
        source=source,
        line=line,
        metadata=freeze(metadata),
    )


def _raise_collected(errors: Sequence[ManifestError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ManifestSetError(tuple(errors))


def _parse(text: str, source: str, errors: list[ManifestError]) -> list[ManifestDoc]:
    docs: list[ManifestDoc] = []
    try:
        for item in read_documents(text, source=source):
            if isinstance(item, YamlDocumentError):
                errors.append(item.error)
                continue
            violations = document_violations(item.value)
            if violations:
                # The earliest line in the document is what a reader fixes first; ties keep schema order.
                first = min(enumerate(violations), key=lambda iv: (line_of(item.lines, iv[1].path, item.line), iv[0]))[
                    1
                ]
                where = line_of(item.lines, first.path, item.line)
                errors.append(ManifestError(first.message, location=f"{source}:{where}", path=format_path(first.path)))
                continue
            docs.append(_build(item.value, source=source, line=item.line))
    except ManifestError as exc:
        errors.append(exc)
    return docs


def parse_manifests(text: str, *, source: str = "<string>") -> list[ManifestDoc]:
    """Parse and validate every document of ``text``; raise ``ManifestError`` naming ``source:line``.

    Only ``ManifestError`` (possibly the ``ManifestSetError`` subclass) escapes, whatever the text.
    """
    errors: list[ManifestError] = []
    docs = _parse(text, source, errors)
    _raise_collected(errors)
    return docs


def _manifest_files(root: FsPath) -> list[FsPath]:
    found = [
        path
        for path in root.rglob("*")
        if path.suffix in MANIFEST_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def load_manifests(path: str | FsPath) -> list[ManifestDoc]:
    """Parse a manifest file, or every ``*.yaml``/``*.yml`` under a directory (recursive, sorted by path).

    Hidden files and directories are skipped. Errors from all files are collected before raising.
    """
    root = FsPath(path)
    if root.is_dir():
        files = _manifest_files(root)
    elif root.is_file():
        files = [root]
    else:
        raise ManifestError(
            "no such file or directory; pass a manifest file or a directory of *.yaml", location=str(root)
        )
    docs: list[ManifestDoc] = []
    errors: list[ManifestError] = []
    for file in files:
        source = str(file)
        try:
            size = file.stat().st_size
            if size > MAX_TEXT_BYTES:
                raise ManifestError(
                    f"file is {size} bytes; the limit is {MAX_TEXT_BYTES} bytes; split it", location=source
                )
            text = file.read_text(encoding="utf-8")
        except ManifestError as exc:
            errors.append(exc)
            continue
        except UnicodeDecodeError as exc:
            errors.append(ManifestError(f"file is not UTF-8 ({exc.reason} at byte {exc.start})", location=source))
            continue
        except OSError as exc:
            errors.append(ManifestError(f"cannot read file: {exc.strerror}", location=source))
            continue
        docs.extend(_parse(text, source, errors))
    _raise_collected(errors)
    return docs


def check_document_set(docs: Iterable[ManifestDoc]) -> None:
    """Rules across documents: at most one FleetConfig, one SiteConfig per site, unique kind + name.

    Raises ``ManifestError`` (or ``ManifestSetError`` listing every conflict) at the later document.
    """
    errors: list[ManifestError] = []
    fleet: ManifestDoc | None = None
    sites: dict[str, ManifestDoc] = {}
    names: dict[tuple[ManifestKind, str], ManifestDoc] = {}
    for doc in docs:
        first = names.get((doc.kind, doc.name))
        if first is not None:
            errors.append(
                ManifestError(
                    f"duplicate {doc.ref} (first at {first.location}); names must be unique per kind, "
                    "rename or merge one",
                    location=doc.location,
                    path="metadata.name",
                )
            )
            continue
        names[(doc.kind, doc.name)] = doc
        if doc.kind is ManifestKind.FLEET_CONFIG:
            if fleet is not None:
                errors.append(
                    ManifestError(
                        f"second FleetConfig {shown(doc.name)} (first is {shown(fleet.name)} at {fleet.location}); "
                        "a fleet has exactly one FleetConfig, merge them",
                        location=doc.location,
                        path="metadata.name",
                    )
                )
            else:
                fleet = doc
        elif doc.kind is ManifestKind.SITE_CONFIG and doc.site is not None:
            other = sites.get(doc.site)
            if other is not None:
                errors.append(
                    ManifestError(
                        f"second SiteConfig for site {shown(doc.site)}: {shown(doc.name)} "
                        f"(first is {shown(other.name)} at "
                        f"{other.location}); a site has one SiteConfig, merge them",
                        location=doc.location,
                        path="metadata.site",
                    )
                )
            else:
                sites[doc.site] = doc
    _raise_collected(errors)


def _tags_match(selector: Mapping[str, Any], device: DeviceFacts) -> bool:
    tags = selector.get("tags")
    if not isinstance(tags, Mapping) or not tags:
        return False
    return all(device.tags.get(key) == value for key, value in tags.items())


def _names_device(selector: Mapping[str, Any], device: DeviceFacts) -> bool:
    target = selector.get("device")
    return isinstance(target, str) and target != "" and target in (device.device_id, device.name)


def select_layers(docs: Iterable[ManifestDoc], device: DeviceFacts) -> list[ManifestDoc]:
    """The config documents that apply to ``device``, lowest layer first. Rollouts are ignored."""
    fleet: list[ManifestDoc] = []
    site: list[ManifestDoc] = []
    tagged: list[ManifestDoc] = []
    specific: list[ManifestDoc] = []
    for doc in docs:
        if doc.kind is ManifestKind.FLEET_CONFIG:
            fleet.append(doc)
        elif doc.kind is ManifestKind.SITE_CONFIG and doc.site == device.site:
            site.append(doc)
        elif doc.kind is ManifestKind.DEVICE_CONFIG:
            if _names_device(doc.selector, device):
                specific.append(doc)
            elif _tags_match(doc.selector, device):
                tagged.append(doc)

    def order(doc: ManifestDoc) -> tuple[int, str]:
        return (doc.priority, doc.name)

    return [*fleet, *site, *sorted(tagged, key=order), *sorted(specific, key=order)]


def config_layers(docs: Sequence[ManifestDoc], device: DeviceFacts) -> list[tuple[str, Mapping[str, Any]]]:
    """The operator layers that apply to ``device`` as ``(Kind/name, config)``, lowest first, for
    ``precedence.resolve_policy``. Checks the document set (raises ``ManifestError``)."""
    check_document_set(docs)
    return [(doc.ref, doc.config) for doc in select_layers(docs, device)]


def effective_config(docs: Sequence[ManifestDoc], device: DeviceFacts) -> EffectiveConfig:
    """Merge the documents that apply to ``device`` (operator layers only: no defaults, no bundle policy).

    Checks the document set first, and validates the merged values; both raise ``ManifestError``.
    ``sources`` is ``("FleetConfig/…", "SiteConfig/…", …)``, lowest first.
    """
    return merge_config_layers(config_layers(docs, device))
