"""Update, the agent's side: the ports the update machine (``edge_runtime.update``) drives on a device.

``switcher`` loads a bundle into an engine and swaps it in; ``verifier`` checks a bundle's signature
against the trusted publisher keys; ``config_keeper`` and ``config_store`` keep configs by digest and the
committed one on disk; ``config_readers`` names the code that reads each config key.
"""
