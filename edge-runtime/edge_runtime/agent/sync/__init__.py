"""Sync: the device's long-poll with the controller (``loop.SyncLoop``): report state, receive desired state."""
