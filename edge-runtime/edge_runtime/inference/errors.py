"""Errors of the edge runtime's inference package (specs, sessions, frames, hot swap, frame sources).

Every error raised here is a subclass of ``InferenceError``. ``SpecError`` is also a contract
``BundleFormatError``: a bad ``preprocess`` / ``postprocess`` section is a malformed bundle, so code that
guards untrusted bundles with ``except ContractError`` catches it too. Messages say what was wrong, with
the offending value, and what to do.

    InferenceError
    ├── SpecError            bundle.json preprocess/postprocess/providers section is invalid
    │                        (also edgefleet.contract.errors.BundleFormatError)
    ├── ProviderError        unknown execution-provider name in a preference list
    ├── ModelLoadError       the ONNX file cannot be opened, or does not fit the declared specs
    ├── FrameError           a frame is not a BGR uint8 HxWx3 image
    ├── SwapError            hot-swap misuse: swap with nothing prepared, rollback with nothing kept
    └── FrameSourceError     a frame source spec is malformed or its images / video cannot be read
"""

from __future__ import annotations

from edgefleet.contract.errors import BundleFormatError


class InferenceError(Exception):
    """Base of every error raised by ``edge_runtime.inference`` and ``edge_runtime.sources``."""


class SpecError(InferenceError, BundleFormatError):
    """A bundle's preprocess / postprocess / providers section does not follow the schema."""


class ProviderError(InferenceError):
    """A provider preference names an execution provider this runtime does not know."""


class ModelLoadError(InferenceError):
    """The model cannot be loaded, or its inputs/outputs do not fit the bundle's specs."""


class FrameError(InferenceError):
    """A frame handed to the engine is not a BGR uint8 image of shape HxWx3."""


class SwapError(InferenceError):
    """A hot-swap operation was called in a state where it cannot act."""


class FrameSourceError(InferenceError):
    """A frame source spec is malformed, or the images / video it names cannot be read."""
