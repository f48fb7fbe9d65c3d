"""edgefleet's contract (the ``edgefleet-contract`` distribution): what the controller, the edge runtime,
fleetctl and the publisher pipeline all agree on.

- ``edgefleet.v1``: the gRPC protos and their generated code (``make proto``).
- ``edgefleet.contract``: the bundle format, signing, config manifests and layering, policy precedence,
  the precision and latency-budget rules, and ``edgefleet.contract.processing``, what a bundle computes.
- ``edgefleet.logging``: structlog configuration for entry points; ``edgefleet.grpc_server``: the health
  and reflection services every edgefleet gRPC server registers.

It imports none of its users (``.importlinter``).
"""
