"""Hardware latency profiles as admission reads them. Pure: measurements come in as values.

A measurement is one latency figure (pre + model + post, p95 and p50 in ms) of a bundle on a hardware
class, from an explicit profile run or a canary's candidate latency, by a device or by none (an operator).
The hardware class is the measuring device's enrolled class, never its claim (``telemetry.device_events``).

Per (bundle, class) each device counts once, with its newest measurement (whatever its source; the
device-less measurements count as one more voice, their newest), and the class's figure is the UPPER
MEDIAN of those voices (the ``n // 2``-th of the ascending figures). So one device cannot move the figure
past its honest neighbours: with three or more voices a single hostile device can neither block a class
(9999 ms) nor wave a too-slow bundle through (1 ms); with two voices the slower one counts (a lie can
only refuse, which ``force`` overrides and the lines show, never admit); a lone voice is the figure, which
is no weaker than an unmeasured class (admitted anyway) and still canaried on live frames.
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


def _newest_per_device(
    measurements: Iterable[ProfileMeasurement],
) -> dict[tuple[str, str], dict[str | None, ProfileMeasurement]]:
    """(bundle, class) → device (None: no device) → its newest measurement (``measurements`` oldest first)."""
    newest: dict[tuple[str, str], dict[str | None, ProfileMeasurement]] = {}
    for m in measurements:
        newest.setdefault((m.bundle_digest, m.hardware_class), {})[m.device_id] = m
    return newest


def class_figure(by_device: Iterable[ProfileMeasurement]) -> ProfileMeasurement:
    """The measurement whose p95 is the class's figure: the upper median of one voice per device."""
    ranked = sorted(by_device, key=lambda m: m.p95_ms)
    return ranked[len(ranked) // 2]


def class_p95(measurements: Iterable[ProfileMeasurement]) -> dict[str, float]:
    """Hardware class → the p95 (ms) admission uses: the upper median of the devices' newest figures (one
    bundle's measurements, oldest first)."""
    return {
        hardware_class: class_figure(by_device.values()).p95_ms
        for (_, hardware_class), by_device in _newest_per_device(measurements).items()
    }


def profile_summaries(measurements: Iterable[ProfileMeasurement]) -> list[Mapping[str, Any]]:
    """Per (bundle, hardware class), sorted: the p95 admission uses and its p50, how many measurements exist,
    and the newest measurement's source, device and time (``measurements`` oldest first)."""
    listed = list(measurements)
    counts: dict[tuple[str, str], int] = {}
    latest: dict[tuple[str, str], ProfileMeasurement] = {}
    for m in listed:
        key = (m.bundle_digest, m.hardware_class)
        counts[key] = counts.get(key, 0) + 1
        latest[key] = m
    out: list[Mapping[str, Any]] = []
    for key, by_device in sorted(_newest_per_device(listed).items()):
        figure = class_figure(by_device.values())
        out.append(
            {
                "bundle_digest": key[0],
                "hardware_class": key[1],
                "p95_ms": figure.p95_ms,
                "p50_ms": figure.p50_ms if figure.p50_ms is not None else 0.0,
                "samples": counts[key],
                "source": latest[key].source,
                "device_id": latest[key].device_id or "",
                "measured_at": latest[key].measured_at,
            }
        )
    return out
