"""What pip installs for one of our distributions, read from the installed metadata: the dependency closure
the distribution tests check and the distribution benchmark weighs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import metadata

from packaging.requirements import Requirement


def canonical_name(name: str) -> str:
    """A distribution name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str, extras: Iterable[str] = ()) -> set[str]:
    """Every distribution pip installs for ``root[extras]`` (environment markers and extras applied)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonical_name(root), frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            todo.append((canonical_name(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}
