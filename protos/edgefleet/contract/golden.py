"""A bundle's golden set (``artifacts/golden.npz``): K inputs and the reference outputs the publisher's CPU
computed for them. The builder writes it (``edgefleet_pipeline.bundle_builder``); a device reads it to check that
its execution provider computes what the publisher computed, within ``canary.golden_tolerance``.

Format: an uncompressed .npz, ``input.<name>`` arrays ``[K, *shape with batch 1]`` and ``output.<name>``
arrays ``[K, ...]`` stacked over cases (case ``i`` is run as ``{name: arr[i]}``), fixed zip timestamps (so the
same spec, model and ``created_at`` build a byte-identical bundle), read without pickle.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edgefleet.contract.errors import BundleFormatError

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class GoldenCase:
    """One golden input set and the reference outputs the publisher's CPU computed for it."""

    inputs: Mapping[str, NDArray[np.generic]]
    outputs: Mapping[str, NDArray[np.generic]]


def write_golden(path: Path, cases: Sequence[GoldenCase]) -> None:
    """Write golden.npz (``input.<name>``/``output.<name>`` stacked over cases) with fixed zip timestamps."""
    arrays: dict[str, NDArray[np.generic]] = {}
    for name in cases[0].inputs:
        arrays[f"input.{name}"] = np.stack([c.inputs[name] for c in cases])
    for name in cases[0].outputs:
        arrays[f"output.{name}"] = np.stack([c.outputs[name] for c in cases])
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def load_golden(path: Path | str) -> list[GoldenCase]:
    """Read golden.npz back into cases (no pickle)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleFormatError(f"{path}: is not a golden .npz file ({exc})") from None
    inputs = {k.removeprefix("input."): v for k, v in arrays.items() if k.startswith("input.")}
    outputs = {k.removeprefix("output."): v for k, v in arrays.items() if k.startswith("output.")}
    counts = {len(v) for v in [*inputs.values(), *outputs.values()]}
    if not inputs or not outputs or len(counts) != 1:
        raise BundleFormatError(f"{path}: needs input.* and output.* arrays with the same number of cases")
    (count,) = counts
    return [
        GoldenCase({k: v[i] for k, v in inputs.items()}, {k: v[i] for k, v in outputs.items()}) for i in range(count)
    ]
