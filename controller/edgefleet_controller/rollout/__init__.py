"""The controller's rollout room. Import from the submodules; this package imports nothing.

Pure cores: ``model`` (specs, state, facts, steps, commands), ``planner`` (``plan``: the wave planner),
``admission`` (latency admission), ``facts`` (a device's ``DeviceFact`` under a rollout), ``failures``
(what a device report says about a bundle), ``profiles`` (how admission reads latency measurements),
``convert`` (model ⇄ stored JSON and wire). Shells: ``reconciler`` (gathers facts, plans, persists, wakes
devices), ``intake`` (the create checks), ``service`` (``RolloutService``, what the servicers call),
``configs`` (config targets of config rollouts). Errors: ``errors``.
"""
