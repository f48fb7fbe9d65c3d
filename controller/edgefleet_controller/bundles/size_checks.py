"""The content checks PushBundle applies to a staged artifact (ceilings: ``edgefleet.contract.bundle_limits``):
the golden set's zip entries and .npy headers, once its bytes are staged (digest matched) and before it is
published. (bundle.json's declared sizes are checked with ``check_declared_sizes`` before any chunk is read.)
A refusal is ``InvalidArgument`` with the same reason ``fleetctl bundle verify`` gives.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.contract.bundle_layout import GOLDEN_ROLE
from edgefleet.contract.bundle_sections import ArtifactRef
from edgefleet.contract.errors import ContractError
from edgefleet.contract.golden import check_golden
from edgefleet.contract.shown import shown
from edgefleet_controller import errors as cerr

_FIX = "nothing was stored; rebuild the bundle with 'fleetctl bundle build' and check it with 'fleetctl bundle verify'"


def check_staged_artifact(ref: ArtifactRef, path: Path) -> None:
    """Check what the staged file of artifact ``ref`` holds (synchronous: reads headers only, run it in a
    worker thread); the golden set's declared sizes against each other and the golden ceiling."""
    if ref.role != GOLDEN_ROLE:
        return
    try:
        check_golden(path, source=f"artifact {shown(ref.role)} ({ref.path})")
    except ContractError as exc:
        raise cerr.InvalidArgument(f"bundle refused: {exc}; {_FIX}") from None
