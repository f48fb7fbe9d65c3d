"""gRPC servicers: convert requests, delegate to ``ControllerApp``, convert back. Nothing else."""
