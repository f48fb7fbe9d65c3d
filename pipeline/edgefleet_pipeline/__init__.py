"""The model pipeline: calibration sets, INT8 quantization, TensorRT calibration tables, the accuracy gate,
precision chosen by measurement, PyTorch export, and synthetic calibration images for tests and demos.

``fleetctl bundle build --calibration DIR`` drives it through ``precision_bundle.build_precision_bundle``.
Everything here runs on the publisher's machine with onnxruntime's CPU provider; it is its own distribution
(``edgefleet-pipeline``), which the controller and the edge runtime never install. What a device shares with
it lives in the contract: the precision rule (``edgefleet.contract.precision``), the golden set format
(``edgefleet.contract.golden``) and the bundle processing a device runs.
"""
