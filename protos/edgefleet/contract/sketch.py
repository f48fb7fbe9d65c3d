"""Latency sketches on the wire: DDSketch ⇄ ``edgefleet.v1.LatencySketch``, and merging them.

Devices summarise each metric window's latencies in a DDSketch (relative accuracy 1 %, logarithmic
mapping, dense unbounded store) and ship it as a ``LatencySketch``; the controller merges the sketches of
many windows and devices and reads P50/P95/P99 off the merge. Both sides use these functions, so the layout
is decided once, here:

- only positive values are indexed (latencies are never negative; a negative value is refused, not folded);
  values too small to index go to ``zero_count``;
- ``contiguous_bin_counts`` covers exactly the keys from the lowest to the highest non-empty bin, starting
  at ``contiguous_bin_index_offset`` — no leading or trailing empty bins travel;
- ``count``, ``sum``, ``min`` and ``max`` are carried exactly (DataDog's own proto drops them); an empty
  sketch has ``count == 0`` and ``min == max == 0``.

``sketch_to_proto(sketch_from_proto(p)) == p`` for every valid ``p``, and a sketch survives the trip with
the same bins, count, sum, min and max.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ddsketch import DDSketch
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

from edgefleet.contract.errors import SketchError
from edgefleet.contract.shown import shown
from edgefleet.v1.telemetry_pb2 import LatencySketch

RELATIVE_ACCURACY = 0.01
"""Relative accuracy of every latency sketch edgefleet builds (gamma = 1.01 / 0.99)."""


def new_sketch() -> DDSketch:
    """An empty latency sketch with edgefleet's relative accuracy."""
    return DDSketch(RELATIVE_ACCURACY)


FLEET_GAMMA: float = new_sketch()._mapping.gamma
"""The gamma of every sketch a device of this fleet builds; a stored or uploaded sketch must carry exactly it."""
FLEET_INDEX_OFFSET = 0.0
"""The index offset of the fleet's logarithmic mapping (DDSketch's default)."""
MIN_LATENCY_MS = 1e-6
"""Smallest latency the fleet indexes in a bin: 1 ns (smaller values belong in ``zero_count``)."""
MAX_LATENCY_MS = 24 * 3600 * 1000.0
"""Largest latency a bin may hold: 24 h. With the fleet's gamma the keys of 1 ns..24 h are -690..914."""
BIN_KEY_MIN: int = int(new_sketch()._mapping.key(MIN_LATENCY_MS))
BIN_KEY_MAX: int = int(new_sketch()._mapping.key(MAX_LATENCY_MS))


def check_fleet_sketch(proto: LatencySketch, field: str) -> None:
    """Refuse a sketch this fleet did not build: another gamma or mapping offset, bins outside the keys of
    ``MIN_LATENCY_MS..MAX_LATENCY_MS``, non-finite or negative values, counts that do not add up. Merging
    sketches that pass costs at most ``BIN_KEY_MAX - BIN_KEY_MIN + 1`` bins each. ``field`` names the sketch
    in the ``SketchError`` message (with the offending value, truncated, and the bound)."""
    if proto.gamma != FLEET_GAMMA:
        raise SketchError(
            f"{field}.gamma must be the fleet's {FLEET_GAMMA!r} (relative accuracy {RELATIVE_ACCURACY}), "
            f"got {shown(proto.gamma)}; build sketches with edgefleet.contract.sketch.new_sketch()"
        )
    if proto.index_offset != FLEET_INDEX_OFFSET:
        raise SketchError(
            f"{field}.index_offset must be the fleet's {FLEET_INDEX_OFFSET!r}, got {shown(proto.index_offset)}"
        )
    n = len(proto.contiguous_bin_counts)
    if n > BIN_KEY_MAX - BIN_KEY_MIN + 1:
        raise SketchError(
            f"{field}.contiguous_bin_counts has {n} bins, at most {BIN_KEY_MAX - BIN_KEY_MIN + 1} "
            f"(keys {BIN_KEY_MIN}..{BIN_KEY_MAX}: latencies {MIN_LATENCY_MS:g}..{MAX_LATENCY_MS:g} ms)"
        )
    lo = proto.contiguous_bin_index_offset
    if n and not (lo >= BIN_KEY_MIN and lo + n - 1 <= BIN_KEY_MAX):
        raise SketchError(
            f"{field}: bins {lo}..{lo + n - 1} (contiguous_bin_index_offset={lo}, {n} bins) must lie within keys "
            f"{BIN_KEY_MIN}..{BIN_KEY_MAX} (latencies {MIN_LATENCY_MS:g}..{MAX_LATENCY_MS:g} ms)"
        )
    for name in ("sum", "min", "max"):
        value = getattr(proto, name)
        if not (math.isfinite(value) and value >= 0.0):
            raise SketchError(f"{field}.{name} must be a finite number >= 0, got {shown(value)}")
    try:
        _validate(proto)
    except SketchError as exc:
        raise SketchError(f"{field}: {exc}") from None


def _dense(store: object, what: str) -> DenseStore:
    if not isinstance(store, DenseStore):
        raise SketchError(f"{what}: expected a DDSketch with a dense store, got {type(store).__name__}")
    return store


def sketch_to_proto(sketch: BaseDDSketch) -> LatencySketch:
    """Serialise a DDSketch of non-negative values (milliseconds) into the wire layout."""
    negative = _dense(sketch._negative_store, "sketch_to_proto")
    if negative.count > 0:
        raise SketchError(
            f"sketch_to_proto: latency sketches hold no negative values, got {negative.count:g} of them; "
            "clamp or reject negative durations before adding them"
        )
    mapping = sketch._mapping
    if not isinstance(mapping, LogarithmicMapping):
        raise SketchError(
            f"sketch_to_proto: the wire layout assumes a logarithmic mapping, got {type(mapping).__name__}"
        )
    store = _dense(sketch._store, "sketch_to_proto")
    out = LatencySketch(
        gamma=mapping.gamma,
        index_offset=mapping._offset,
        zero_count=sketch._zero_count,
        count=sketch._count,
        sum=sketch._sum if sketch._count > 0 else 0.0,
        min=sketch._min if sketch._count > 0 else 0.0,
        max=sketch._max if sketch._count > 0 else 0.0,
    )
    if store.count > 0:
        bins = store.bins
        lo = store.min_key - store.offset
        hi = store.max_key - store.offset
        # min_key/max_key bound the keys ever added; trim defensively so no empty edge bin travels.
        while lo <= hi and bins[lo] == 0:
            lo += 1
        while hi >= lo and bins[hi] == 0:
            hi -= 1
        out.contiguous_bin_counts.extend(bins[lo : hi + 1])
        out.contiguous_bin_index_offset = lo + store.offset
    return out


def _validate(proto: LatencySketch) -> None:
    if not (math.isfinite(proto.gamma) and proto.gamma > 1.0):
        raise SketchError(f"LatencySketch: field 'gamma' must be a finite number > 1, got {shown(proto.gamma)}")
    for i, c in enumerate(proto.contiguous_bin_counts):
        if not (math.isfinite(c) and c >= 0):
            raise SketchError(
                f"LatencySketch: field 'contiguous_bin_counts[{i}]' must be finite and >= 0, got {shown(c)}"
            )
    for field in ("zero_count", "count", "sum", "min", "max", "index_offset"):
        value = getattr(proto, field)
        if not math.isfinite(value):
            raise SketchError(f"LatencySketch: field '{field}' must be finite, got {shown(value)}")
    if proto.zero_count < 0 or proto.count < 0:
        raise SketchError(
            f"LatencySketch: 'zero_count' and 'count' must be >= 0, got {shown(proto.zero_count)}, {shown(proto.count)}"
        )
    binned = math.fsum(proto.contiguous_bin_counts) + proto.zero_count
    if not math.isclose(binned, proto.count, rel_tol=1e-9, abs_tol=1e-9):
        raise SketchError(
            f"LatencySketch: field 'count' ({shown(proto.count)}) must equal zero_count plus the bin counts "
            f"({shown(binned)}); the sketch was corrupted or built by a different layout"
        )
    if proto.count > 0 and proto.min > proto.max:
        raise SketchError(f"LatencySketch: 'min' ({shown(proto.min)}) must be <= 'max' ({shown(proto.max)})")


def _sketch_for_gamma(gamma: float, index_offset: float) -> DDSketch:
    accuracy = (gamma - 1.0) / (gamma + 1.0)
    # (g-1)/(g+1) lands a few ulps off the accuracy the sender chose (0.01 -> 0.010000000000000009);
    # snapping back rebuilds the sender's exact mapping, so decoded sketches merge with native ones.
    for candidate in (float(f"{accuracy:.12g}"), accuracy):
        sketch = DDSketch(candidate)
        if sketch._mapping.gamma == gamma:
            break
    else:
        sketch = DDSketch(accuracy)
    if index_offset != 0.0 or sketch._mapping.gamma != gamma:
        mapping = LogarithmicMapping(accuracy, offset=index_offset)
        # Keys are carried on the wire; only gamma equality gates merging, so keep the sender's gamma.
        mapping.gamma = gamma
        sketch._mapping = mapping
    return sketch


def sketch_from_proto(proto: LatencySketch) -> DDSketch:
    """Rebuild the DDSketch a ``LatencySketch`` describes; raises ``SketchError`` when it is malformed."""
    _validate(proto)
    sketch = _sketch_for_gamma(proto.gamma, proto.index_offset)
    store = _dense(sketch._store, "sketch_from_proto")
    key = proto.contiguous_bin_index_offset
    for c in proto.contiguous_bin_counts:
        if c > 0:
            store.add(key, c)
        key += 1
    sketch._zero_count = proto.zero_count
    sketch._count = proto.count
    if proto.count > 0:
        sketch._sum = proto.sum
        sketch._min = proto.min
        sketch._max = proto.max
    return sketch


def merge_sketches(protos: Iterable[LatencySketch]) -> DDSketch:
    """Merge wire sketches (windows, devices) into one DDSketch; empty input gives an empty sketch."""
    merged: DDSketch | None = None
    for i, proto in enumerate(protos):
        sketch = sketch_from_proto(proto)
        if merged is None:
            merged = sketch
            continue
        if merged._mapping.gamma != sketch._mapping.gamma:
            raise SketchError(
                f"merge_sketches: sketch {i} has gamma {shown(sketch._mapping.gamma)} but the first has "
                f"{shown(merged._mapping.gamma)}; only sketches of the same relative accuracy merge"
            )
        merged.merge(sketch)
    return merged if merged is not None else new_sketch()
