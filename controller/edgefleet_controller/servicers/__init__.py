"""gRPC servicers: convert the request (``convert``), call one service, convert the answer back. Nothing else."""
