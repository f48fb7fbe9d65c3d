"""The model pipeline: calibration sets, INT8 quantization, TensorRT calibration tables, the accuracy gate,
precision chosen by measurement, PyTorch export, and synthetic calibration images for tests and demos.

``fleetctl bundle build --calibration DIR`` drives it through ``precision_bundle.build_precision_bundle``.
Everything here runs on the publisher's machine with onnxruntime's CPU provider, except
``precision.select_precision`` (with ``MIN_SPEEDUP`` and ``LatencyFigures``): the edge runtime imports it
(``edge_runtime.precision``) so a device picks between a bundle's variants by the rule the builder used.
The runtime imports nothing else from here.
"""
