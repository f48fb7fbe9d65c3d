"""Errors of the model pipeline (calibration sets, INT8 quantization, calibration tables, accuracy gate, export).

They subclass the contract's ``ContractError`` so ``fleetctl bundle build`` reports them like any other
bundle error (one line, exit code 2). Messages carry the offending value and what to do.

    ContractError                         (edgefleet.contract.errors)
    └── PipelineError                     base of everything below
        ├── CalibrationSetError           image directory missing, unreadable, or too few images
        ├── QuantizationError             onnxruntime calibration or quantization failed
        ├── CalibrationTableError         a TensorRT calibration table is malformed
        ├── AccuracyLossError             a lower-precision variant lost more than the allowed accuracy
        ├── PrecisionUnavailableError     a requested precision cannot be produced here (e.g. fp16)
        └── ExportError                   PyTorch → ONNX export failed, or torch is not installed
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.contract.errors import ContractError

if TYPE_CHECKING:
    from edgefleet_pipeline.accuracy import AccuracyReport


class PipelineError(ContractError):
    """Base of every error raised by the model pipeline."""


class CalibrationSetError(PipelineError):
    """A calibration or evaluation image directory is missing, unreadable or holds too few images."""


class QuantizationError(PipelineError):
    """onnxruntime's calibration or static quantization failed on a model."""


class CalibrationTableError(PipelineError):
    """A TensorRT INT8 calibration table does not follow the ``TRT-<ver>-<Algo>`` + ``name: hex`` format."""


class AccuracyLossError(PipelineError):
    """A lower-precision variant lost more accuracy against FP32 than ``--max-accuracy-loss`` allows.

    ``report`` holds the measured figures, ``max_loss`` the bound.
    """

    def __init__(self, message: str, *, report: AccuracyReport, max_loss: float) -> None:
        self.report = report
        self.max_loss = max_loss
        super().__init__(message)


class PrecisionUnavailableError(PipelineError):
    """A requested precision cannot be produced with what is installed or given (e.g. no calibration set)."""


class ExportError(PipelineError):
    """Exporting a PyTorch module to ONNX failed, or torch is not installed."""
