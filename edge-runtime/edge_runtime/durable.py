"""Crash-safe small-file writes for the device's state (update journal, credential, last config).

The implementation is the contract's (``edgefleet.contract.durable``), shared with the controller's blob store;
this module keeps the runtime's import path.
"""

from __future__ import annotations

from edgefleet.contract.durable import fsync_dir, write_durably

__all__ = ["fsync_dir", "write_durably"]
