"""Errors of the edge runtime's inference package (sessions, providers, hot swap, frame sources).

Every error raised here is a subclass of ``InferenceError``. What a bundle's processing cannot compute
(a frame that is not BGR uint8 HxWx3, a model output its ``postprocess.kind`` cannot decode) is a contract
``ProcessingError`` (``edgefleet.contract.errors``), and a malformed ``preprocess`` / ``postprocess``
section a ``BundleFormatError`` raised when bundle.json is parsed: code guarding untrusted bundles with
``except (ContractError, InferenceError)`` catches all of them. Messages say what was wrong, with the
offending value, and what to do.

    InferenceError
    ├── ProviderError        unknown execution-provider name in a preference list
    ├── ModelLoadError       the ONNX file cannot be opened, or does not fit the declared specs
    ├── SwapError            hot-swap misuse: swap with nothing prepared, rollback with nothing kept
    └── FrameSourceError     a frame source spec is malformed or its images / video cannot be read
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error raised by ``edge_runtime.inference`` and ``edge_runtime.sources``."""


class ProviderError(InferenceError):
    """A provider preference names an execution provider this runtime does not know."""


class ModelLoadError(InferenceError):
    """The model cannot be loaded, or its inputs/outputs do not fit the bundle's specs."""


class SwapError(InferenceError):
    """A hot-swap operation was called in a state where it cannot act."""


class FrameSourceError(InferenceError):
    """A frame source spec is malformed, or the images / video it names cannot be read."""
