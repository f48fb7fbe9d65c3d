"""Hardware latency profiles as admission reads them. Pure: measurements come in as values.

A measurement is one latency figure (pre + model + post, p95 and p50 in ms) of a bundle on a hardware
class, from an explicit profile run or a canary's candidate latency, by a device or by none. Per (bundle,
class) only the newest measurement of each (source, device) counts, and the class's figure is the WORST of
those: admission protects the slowest box of a class, not the average one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

PROFILE_SOURCES = frozenset({"canary", "profile"})


@dataclass(frozen=True, slots=True)
class ProfileMeasurement:
    bundle_digest: str
    hardware_class: str
    source: str
    device_id: str | None
    p95_ms: float
    p50_ms: float | None
    measured_at: datetime


def _newest_per_source(
    measurements: Iterable[ProfileMeasurement],
) -> dict[tuple[str, str], dict[tuple[str, str | None], ProfileMeasurement]]:
    """(bundle, class) → (source, device) → its newest measurement (``measurements`` oldest first)."""
    newest: dict[tuple[str, str], dict[tuple[str, str | None], ProfileMeasurement]] = {}
    for m in measurements:
        newest.setdefault((m.bundle_digest, m.hardware_class), {})[(m.source, m.device_id)] = m
    return newest


def class_p95(measurements: Iterable[ProfileMeasurement]) -> dict[str, float]:
    """Hardware class → the p95 (ms) admission uses: the worst newest figure of the class (one bundle's
    measurements, oldest first)."""
    out: dict[str, float] = {}
    for (_, hardware_class), by_source in _newest_per_source(measurements).items():
        for m in by_source.values():
            out[hardware_class] = max(m.p95_ms, out.get(hardware_class, 0.0))
    return out


def profile_summaries(measurements: Iterable[ProfileMeasurement]) -> list[Mapping[str, Any]]:
    """Per (bundle, hardware class), sorted: the worst newest p95 and its p50, how many measurements exist,
    and the newest measurement's source, device and time (``measurements`` oldest first)."""
    listed = list(measurements)
    counts: dict[tuple[str, str], int] = {}
    latest: dict[tuple[str, str], ProfileMeasurement] = {}
    for m in listed:
        key = (m.bundle_digest, m.hardware_class)
        counts[key] = counts.get(key, 0) + 1
        latest[key] = m
    out: list[Mapping[str, Any]] = []
    for key, by_source in sorted(_newest_per_source(listed).items()):
        worst = max(by_source.values(), key=lambda m: m.p95_ms)
        out.append(
            {
                "bundle_digest": key[0],
                "hardware_class": key[1],
                "p95_ms": worst.p95_ms,
                "p50_ms": worst.p50_ms if worst.p50_ms is not None else 0.0,
                "samples": counts[key],
                "source": latest[key].source,
                "device_id": latest[key].device_id or "",
                "measured_at": latest[key].measured_at,
            }
        )
    return out
