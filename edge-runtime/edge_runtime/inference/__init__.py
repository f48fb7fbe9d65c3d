"""The edge runtime's inference: bundle specs, pre/post-processing, session factory, engine and hot swap.

Import the public names from here; the submodules own one concern each (see their docstrings).
"""

from __future__ import annotations

from edge_runtime.inference.engine import InferenceEngine
from edge_runtime.inference.errors import (
    FrameError,
    FrameSourceError,
    InferenceError,
    ModelLoadError,
    ProviderError,
    SpecError,
    SwapError,
)
from edge_runtime.inference.hotswap import EngineSlot
from edge_runtime.inference.postprocess import (
    Classification,
    Detection,
    FrameResult,
    PostprocessSpec,
    Timings,
)
from edge_runtime.inference.preprocess import FrameTransform, PreprocessSpec, preprocess
from edge_runtime.inference.providers import SessionInfo, create_session, select_providers

__all__ = [
    "Classification",
    "Detection",
    "EngineSlot",
    "FrameError",
    "FrameResult",
    "FrameSourceError",
    "FrameTransform",
    "InferenceEngine",
    "InferenceError",
    "ModelLoadError",
    "PostprocessSpec",
    "PreprocessSpec",
    "ProviderError",
    "SessionInfo",
    "SpecError",
    "SwapError",
    "Timings",
    "create_session",
    "preprocess",
    "select_providers",
]
