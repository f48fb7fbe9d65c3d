"""Every config key of the manifest schema is read by the runtime, or removed: the reader table
(``edge_runtime.agent.update.config_readers``) against the published schema, both ways, and each reader exists
and reads its key. The behaviour per key class is checked in ``tests/integration/test_config_keys.py``."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

from edge_runtime.agent.update.config_readers import CONFIG_READERS
from edgefleet.contract.layering import DEFAULT_CONFIG
from edgefleet.contract.manifest_schema import config_keys
from edgefleet.contract.precedence import leaf_paths

# Keys with no built-in default, and why: the bundle's own SLA applies / the device's --source applies.
NO_DEFAULT = {"sla.latency_ms", "source"}


SCHEMA_KEYS = list(config_keys())


def test_config_keys_walks_sections_and_free_keyed_mappings() -> None:
    assert {"canary.min_frames", "inference.providers", "source", "trusted_keys"} <= set(SCHEMA_KEYS)
    assert "canary" not in SCHEMA_KEYS and not any(k.startswith("trusted_keys.") for k in SCHEMA_KEYS)


def test_every_schema_key_has_a_reader_and_every_reader_a_schema_key() -> None:
    assert set(SCHEMA_KEYS) - set(CONFIG_READERS) == set(), "schema keys nothing reads: read them or remove them"
    assert set(CONFIG_READERS) - set(SCHEMA_KEYS) == set(), "readers of keys the schema no longer has"


def test_every_key_has_a_built_in_default_except_those_documented() -> None:
    defaults = {".".join(p) for p, _ in leaf_paths(DEFAULT_CONFIG)}
    assert defaults == set(SCHEMA_KEYS) - NO_DEFAULT


def _resolve(target: str) -> Any:
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("key", SCHEMA_KEYS)
def test_the_reader_exists_and_names_its_key(key: str) -> None:
    target = CONFIG_READERS[key]
    reader = _resolve(target)
    if isinstance(reader, property):
        reader = reader.fget
    code = inspect.getsource(reader)
    module = inspect.getsource(importlib.import_module(target.partition(":")[0]))
    leaf = key.rpartition(".")[2]
    # The reader's own code reads the key, or its module's key table names it (CanaryPolicy's _RULES).
    assert f'"{leaf}"' in code or f'"{key}"' in module, f"{target} does not read {key!r}"
