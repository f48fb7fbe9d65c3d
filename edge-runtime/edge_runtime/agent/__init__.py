"""The edge runtime's agent: the asyncio shell that runs one device (``edge-runtime run``), by room.

- ``agent`` — ``EdgeAgent``: start-up order, desired state → update events, status; it takes its parts
  (``AgentParts``) from the composition root ``edge_runtime.bootstrap`` and builds none of them.
- ``client``, ``retry``, ``enroll``, ``hardware``, ``runner``, ``errors`` — shared by the rooms: the gRPC
  link, the one retry policy, enrollment and the credential, host facts, the frame loop.
- ``sync/`` — the Sync long-poll. ``download/`` — resumable, content-addressed artifact fetches.
- ``update/`` — the ports the update machine (``edge_runtime.update``) drives: engine switch, signature
  verification, configs by digest, the reader of every config key.
- ``canary/`` — shadow runs and the canary/watch evaluator over the pure verdict (``edge_runtime.canary``).
- ``telemetry/`` — the telemetry pipeline, its uploader, the event reporter. ``health/`` — local health.

Rooms import the shared modules and the pure cores, never the agent module; only ``bootstrap`` wires them.
"""
