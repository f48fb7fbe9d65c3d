"""Operator configuration: applying manifests (live or staged for a config rollout), each device's effective
config and where its values come from, and assigning effective configs as desired state (``service``)."""
