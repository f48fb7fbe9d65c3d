"""The size ceilings of one bundle, and the check of its declared sizes against them.

Every byte a bundle makes someone read or allocate is declared before it is read: bundle.json lists each
artifact's size, a tar member's header its size, a golden.npz zip member its uncompressed ``file_size`` and
compressed size, a .npy header its shape and dtype. Readers compare the declaration with these ceilings
(and with each other) first, then read through readers that stop at the declared size, so a decompression
bomb or a lying header is refused before any memory or disk is spent on it. ``golden`` applies the golden
ceilings, ``bundle_archive`` and ``bundle_upload`` the archive ones; the controller (PushBundle) and the
device (verification, golden preflight) both call these.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_layout import GOLDEN_ROLE
from edgefleet.contract.errors import UnsafeArchiveError
from edgefleet.contract.shown import shown

MiB = 1024 * 1024
GiB = 1024 * MiB

#: All artifacts of one bundle together, as bundle.json declares them.
MAX_BUNDLE_BYTES = 8 * GiB
#: One artifact (one tar member of an ``.efb``).
MAX_ARTIFACT_BYTES = 4 * GiB
#: golden.npz: its file size, and the sum of its arrays' uncompressed sizes (what the device allocates).
MAX_GOLDEN_BYTES = 256 * MiB
#: A deflated golden member may expand at most this much (``file_size / compress_size``).
MAX_GOLDEN_RATIO = 200
#: Arrays in one golden.npz.
MAX_GOLDEN_ARRAYS = 256
#: One .npy header (numpy writes < 1 KiB; numpy's own reader allows 10,000 characters).
MAX_NPY_HEADER_BYTES = 64 * 1024
#: The extended headers (pax, GNU long names) in front of one tar member.
MAX_TAR_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class BundleLimits:
    """The ceilings applied to one bundle (the module's constants unless a caller asks for tighter ones)."""

    max_total_bytes: int = MAX_BUNDLE_BYTES
    max_artifact_bytes: int = MAX_ARTIFACT_BYTES
    max_golden_bytes: int = MAX_GOLDEN_BYTES
    max_golden_ratio: int = MAX_GOLDEN_RATIO
    max_golden_arrays: int = MAX_GOLDEN_ARRAYS


DEFAULT_LIMITS = BundleLimits()


def check_declared_sizes(manifest: BundleManifest, limits: BundleLimits = DEFAULT_LIMITS, *, source: str) -> None:
    """Refuse a manifest whose artifacts declare more than the ceilings, before any artifact is read."""
    total = sum(ref.size for ref in manifest.artifacts.values())
    if total > limits.max_total_bytes:
        raise UnsafeArchiveError(
            f"{source}: artifacts declare {total} bytes in total, over the {limits.max_total_bytes}-byte "
            "ceiling per bundle; ship a smaller bundle"
        )
    for role, ref in sorted(manifest.artifacts.items()):
        ceiling = limits.max_golden_bytes if role == GOLDEN_ROLE else limits.max_artifact_bytes
        if ref.size > ceiling:
            what = "golden data" if role == GOLDEN_ROLE else "an artifact"
            raise UnsafeArchiveError(
                f"{source}: artifact {shown(role)} ({ref.path}) declares {ref.size} bytes, over the {ceiling}-byte "
                f"ceiling for {what}"
            )
