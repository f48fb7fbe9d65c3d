"""The edge runtime's inference: session factory, engine, hot swap and the engine's results.

What a bundle's pre- and post-processing compute is the contract's (``edgefleet.contract.processing``);
the engine calls it. Import the public names from here; the submodules own one concern each (see their
docstrings).
"""

from __future__ import annotations

from edge_runtime.inference.engine import InferenceEngine
from edge_runtime.inference.errors import (
    FrameSourceError,
    InferenceError,
    ModelLoadError,
    ProviderError,
    SwapError,
)
from edge_runtime.inference.hotswap import EngineSlot
from edge_runtime.inference.providers import SessionInfo, create_session, select_providers
from edge_runtime.inference.results import FrameResult, Timings

__all__ = [
    "EngineSlot",
    "FrameResult",
    "FrameSourceError",
    "InferenceEngine",
    "InferenceError",
    "ModelLoadError",
    "ProviderError",
    "SessionInfo",
    "SwapError",
    "Timings",
    "create_session",
    "select_providers",
]
