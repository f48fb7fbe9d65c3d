"""The publisher's model pipeline (the ``edgefleet-pipeline`` distribution): building bundle directories from
a spec (``bundle_builder``), calibration image sets, INT8 quantization, TensorRT calibration tables, the
accuracy gate, precision chosen by measurement, PyTorch export, and synthetic calibration images for tests
and demos.

``fleetctl bundle build`` drives it (``precision_bundle.build_precision_bundle`` with ``--calibration DIR``).
Everything here runs on the publisher's machine with onnxruntime's CPU provider; the controller and the edge
runtime never install it. What a device shares with it lives in the contract: the precision rule
(``edgefleet.contract.precision``), the golden set format (``edgefleet.contract.golden``) and what a bundle
computes (``edgefleet.contract.processing``), which calibration, golden inputs and the accuracy gate call
rather than copy, so INT8 is calibrated and judged on exactly the tensors a device produces.
"""
