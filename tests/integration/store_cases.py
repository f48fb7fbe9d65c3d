"""Builders shared by the controller store tests: a fixed clock, content digests, an enrolled device, a published
bundle, a metric window, a database migrated to an older revision."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from edgefleet.contract.sketch import new_sketch, sketch_to_proto
from edgefleet.v1.telemetry_pb2 import ConfidenceHistogram, MetricWindow
from edgefleet_controller.store import Store
from edgefleet_controller.store.db import MIGRATIONS_DIR
from edgefleet_controller.store.records import ArtifactRef

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


_unnamed = itertools.count(1)


def enroll(
    store: Store, site: str = "berlin", tags: dict[str, str] | None = None, name: str | None = None
) -> tuple[str, str]:
    """A device enrolled in ``site``; ``name`` defaults to a fresh ``cam-<n>`` (names are unique per site)."""
    name = name or f"cam-{next(_unnamed)}"
    _, secret = store.enrollment_tokens.create(site, 3600, T0)
    device, credential = store.devices.enroll(secret, name, "x86-avx2", {"ram_mb": 4096}, tags or {}, T0)
    return device.id, credential


def publish(store: Store, name: str = "detector", version: str = "1.0.0", model: str = "m1") -> str:
    manifest = f'{{"name":"{name}","version":"{version}","model":"{model}"}}'.encode()
    record, _ = store.bundles.put(
        manifest,
        b"sig",
        name=name,
        version=version,
        key_id="pub-1",
        artifacts=[ArtifactRef("model", sha(model), 100), ArtifactRef("golden", sha("golden"), 7)],
        now=T0,
    )
    return record.digest


def upgrade_to(conn: sa.Connection, revision: str) -> None:
    """Migrate the database behind ``conn`` to ``revision`` (an older one, to test the next migration's upgrade)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


def metric_window(latencies_ms: Iterable[float], start: datetime, bundle: str) -> MetricWindow:
    """A sound 10 s window of ``bundle`` starting at ``start``: one frame per latency, every confidence in bin 16."""
    sketch = new_sketch()
    frames = 0
    for v in latencies_ms:
        sketch.add(v)
        frames += 1
    w = MetricWindow(
        window_s=10.0,
        bundle_digest=bundle,
        frames=frames,
        latency_e2e=sketch_to_proto(sketch),
        latency_model=sketch_to_proto(sketch),
        confidence=ConfidenceHistogram(counts=[0] * 16 + [frames] + [0] * 3),
    )
    w.window_start.FromDatetime(start)
    return w
