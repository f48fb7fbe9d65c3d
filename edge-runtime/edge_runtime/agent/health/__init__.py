"""Health: the device's local gRPC health endpoint and the judgement of serving health (``endpoint``)."""
