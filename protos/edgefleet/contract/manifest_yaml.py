"""Safe reading of manifest YAML into plain JSON-like values that remember their line numbers.

Owns the YAML layer of config manifests: ``yaml.compose_all`` (SafeLoader) keeps node marks, and this
module turns each document's node tree into dicts/lists/scalars plus a map from every path to the
line it came from, so schema errors can point at ``file:line``.

Untrusted text must not hurt the reader, so it refuses:
- text over ``MAX_TEXT_BYTES`` and documents over ``MAX_DOCUMENT_BYTES``;
- alias bombs: aliases are expanded while reading, so the expanded size is bounded by
  ``MAX_NODES`` and the nesting by ``MAX_DEPTH`` (which also stops recursive anchors);
- non-string keys (``1:``, ``yes:``, ``null:``), duplicate keys, merge keys (``<<``);
- tags other than the core JSON-like ones, timestamps, binary, and non-finite floats, because the
  result must round-trip through canonical JSON unchanged.
Every problem is a ``ManifestError``; nothing else escapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edgefleet.contract.errors import ManifestError
from edgefleet.contract.shown import shown

MAX_TEXT_BYTES = 8 * 1024 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64

PathKey = str | int
Path = tuple[PathKey, ...]

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_SCALAR_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL})


@dataclass(frozen=True)
class YamlDocument:
    """One document: its value, the line of each path in it (1-based) and where it starts."""

    value: Any
    lines: dict[Path, int]
    line: int


@dataclass(frozen=True)
class YamlDocumentError:
    """A document that could not be read; the stream carries on with the next one."""

    error: ManifestError
    line: int


def format_path(path: Path) -> str:
    """``("spec", "strategy", "waves", 2)`` → ``spec.strategy.waves[2]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def line_of(lines: dict[Path, int], path: Path, default: int) -> int:
    """Line of ``path``, or of its nearest ancestor that exists in the document."""
    for cut in range(len(path), -1, -1):
        found = lines.get(path[:cut])
        if found is not None:
            return found
    return default


def describe_value(value: Any) -> str:
    """A short rendering of a value for error messages (``10``, ``'fast'``, ``true``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return shown(value)


def read_documents(text: str, *, source: str) -> Iterator[YamlDocument | YamlDocumentError]:
    """Yield each non-empty document of ``text``; a stream-level syntax error raises ``ManifestError``.

    A document-level problem (duplicate key, bad tag, too large…) is yielded as a ``YamlDocumentError``
    so callers can report one error per document.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise ManifestError(
            f"manifest text is {size} bytes; the limit is {MAX_TEXT_BYTES} bytes; split it into files",
            location=source,
        )
    nodes = yaml.compose_all(text, Loader=yaml.SafeLoader)
    while True:
        try:
            root = next(nodes)
        except StopIteration:
            return
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{source}:{mark.line + 1}" if mark is not None else source
            problem = exc.problem or exc.context or "invalid YAML"
            raise ManifestError(f"invalid YAML: {problem}; fix the syntax", location=where) from None
        except yaml.YAMLError as exc:
            raise ManifestError(f"invalid YAML: {exc}; fix the text", location=source) from None
        except RecursionError:
            raise ManifestError(
                f"YAML nesting is deeper than {MAX_DEPTH} levels; flatten the document", location=source
            ) from None
        if root is None:
            continue
        if isinstance(root, ScalarNode) and root.tag == _NULL and root.value in ("", "~", "null"):
            # An empty document (a trailing or doubled '---') carries nothing; skipping it matches kubectl.
            continue
        line = root.start_mark.line + 1
        try:
            yield _read_document(text, root, source=source, line=line)
        except ManifestError as exc:
            yield YamlDocumentError(exc, line)


def _read_document(text: str, root: Node, *, source: str, line: int) -> YamlDocument:
    size = len(text[root.start_mark.index : root.end_mark.index].encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise ManifestError(
            f"document is {size} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes; split it",
            location=f"{source}:{line}",
        )
    if not isinstance(root, MappingNode):
        raise ManifestError(
            f"document must be a mapping with apiVersion, kind, metadata and spec, got {_node_kind(root)}",
            location=f"{source}:{line}",
        )
    reader = _NodeReader(source)
    value = reader.read(root, (), 0)
    reader.lines[()] = line
    return YamlDocument(value=value, lines=reader.lines, line=line)


def _node_kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    return f"the scalar {describe_value(node.value)}"


class _NodeReader:
    """Walks one document's node graph; counts expanded nodes so shared (aliased) subtrees are bounded."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Path, int] = {}
        self.count = 0
        self.constructor = SafeConstructor()

    def fail(self, message: str, node: Node, path: Path) -> ManifestError:
        return ManifestError(message, location=f"{self.source}:{node.start_mark.line + 1}", path=format_path(path))

    def read(self, node: Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(
                f"document expands to more than {MAX_NODES} values (YAML alias bomb?); "
                "remove the aliases or split the document",
                node,
                path[:1],
            )
        if depth > MAX_DEPTH:
            raise self.fail(
                f"nesting is deeper than {MAX_DEPTH} levels (recursive alias?); flatten the document",
                node,
                path[:1],
            )
        if isinstance(node, MappingNode):
            return self.read_mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                raise self.fail(f"unsupported YAML tag {shown(node.tag)}; use a plain list", node, path)
            items = []
            for index, item in enumerate(node.value):
                self.lines.setdefault((*path, index), item.start_mark.line + 1)
                items.append(self.read(item, (*path, index), depth + 1))
            return items
        return self.read_scalar(node, path)

    def read_mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        if node.tag != _MAP:
            raise self.fail(f"unsupported YAML tag {shown(node.tag)}; use a plain mapping", node, path)
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                raise self.fail(
                    "YAML merge keys ('<<') are not supported; "
                    "share settings by layering FleetConfig, SiteConfig and DeviceConfig instead",
                    key_node,
                    path,
                )
            if not isinstance(key_node, ScalarNode) or key_node.tag != _STR:
                got = (
                    f"the {key_node.tag.rsplit(':', 1)[-1]} key {describe_value(key_node.value)}"
                    if isinstance(key_node, ScalarNode)
                    else "a collection as a key"
                )
                raise self.fail(f"keys must be strings, got {got}; quote the key", key_node, path)
            key = str(key_node.value)
            key_line = key_node.start_mark.line + 1
            if key in out:
                raise self.fail(
                    f"duplicate key {shown(key)} (first at line {first_line[key]}); keep only one",
                    key_node,
                    (*path, key),
                )
            first_line[key] = key_line
            self.lines.setdefault((*path, key), key_line)
            out[key] = self.read(value_node, (*path, key), depth + 1)
        return out

    def read_scalar(self, node: Node, path: Path) -> Any:
        if node.tag == _TIMESTAMP:
            raise self.fail(
                f"dates and times are not supported, got {shown(node.value)}; quote the value to keep it as text",
                node,
                path,
            )
        if node.tag not in _SCALAR_TAGS:
            raise self.fail(f"unsupported YAML tag {shown(node.tag)}; remove the tag", node, path)
        try:
            value = self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            raise self.fail(f"cannot read value {shown(node.value)}: {exc}; quote it or fix it", node, path) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(f"numbers must be finite, got {shown(node.value)}", node, path)
        return value
