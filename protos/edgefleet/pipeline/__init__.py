"""The model pipeline: calibration sets, INT8 quantization, TensorRT calibration tables, the accuracy gate,
precision chosen by measurement, and PyTorch export.

``fleetctl bundle build --calibration DIR`` drives it through ``precision_bundle.build_precision_bundle``.
Everything here runs on the publisher's machine with onnxruntime's CPU provider; nothing is imported by the
edge runtime.
"""
