"""What a bundle computes: its ``preprocess`` (frame → model input) and ``postprocess`` (output → results).

One implementation, called by the edge runtime on every frame and by the publisher pipeline when it
calibrates and judges a lower-precision variant, so INT8 is calibrated on exactly the tensors a device
produces. The sections it follows are the contract's ``Preprocess`` / ``Postprocess``
(``edgefleet.contract.bundle_sections``), validated once when bundle.json is parsed.

These modules need OpenCV: install the contract with its ``processing`` extra
(``edgefleet-contract[processing]``). The controller installs it without, and never imports this package
(an import contract in ``.importlinter`` says so); no other contract module imports it either.

- ``preprocess``: letterbox / stretch, colour order, normalisation, layout, dtype; ``FrameTransform``.
- ``postprocess``: classification top-k, YOLO v5/v8 decode, class-wise NMS; ``Classification``, ``Detection``.
"""
