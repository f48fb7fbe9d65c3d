"""An import-linter contract type for the standard library: ``lint-imports`` builds its graph from the
project and its installed packages, not from the standard library, so "a pure core reads no clock and does
no I/O" (no ``time``, ``socket``, ``subprocess``…) cannot be said with the built-in ``forbidden`` type.

``stdlib_forbidden`` reads each source module's own file(s) and reports every ``import`` of a forbidden
module, with its line; imports under ``if TYPE_CHECKING:`` are ignored (they do not run). It checks direct
imports only: the project modules a pure core imports are covered by the ``forbidden`` contract beside it.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any, cast

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _module_files(name: str) -> list[tuple[str, Path]]:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ValueError(f"source module {name!r} cannot be found: check the name in .importlinter")
    origin = Path(spec.origin)
    if origin.name != "__init__.py":
        return [(name, origin)]
    return [
        (".".join([name, *path.relative_to(origin.parent).with_suffix("").parts]).removesuffix(".__init__"), path)
        for path in sorted(origin.parent.rglob("*.py"))
    ]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


class StdlibForbiddenContract(Contract):
    """Source modules must not import the listed standard-library (or any) modules directly."""

    type_name = "stdlib_forbidden"

    source_modules = fields.ListField(subfield=fields.StringField())
    forbidden_modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        forbidden = set(cast(list[str], self.forbidden_modules))
        violations: list[dict[str, Any]] = []
        for source in cast(list[str], self.source_modules):
            for module, path in _module_files(str(source)):
                tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
                for imported, line in _imports(tree):
                    top = imported.split(".")[0]
                    if imported in forbidden or top in forbidden:
                        violations.append({"importer": module, "imported": imported, "line": line})
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for v in check.metadata["violations"]:
            output.print_error(f"{v['importer']} is not allowed to import {v['imported']}:")
            output.new_line()
            output.print_error(f"-   {v['importer']} -> {v['imported']} (l.{v['line']})", bold=False)
            output.new_line()
