"""fleetctl: the operator's command line, a gRPC client of the controller (never its database).

``main`` mounts the command groups (``*_cmds``); ``client`` and ``settings`` say how the controller is reached;
``output`` renders tables, JSON and YAML; ``errors`` turns every failure into one line and an exit code;
``durations`` reads the operator's time input.
"""
