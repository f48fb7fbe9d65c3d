"""Errors of the device's update machinery (state record, journal, bundle slots, ports).

The pure state machine never raises for an unexpected event (it ignores it with a reason); errors here are
for malformed records, disk trouble and failures reported by the ports the driver calls. Bundle
verification failures are the contract's own ``edgefleet.contract.errors.BundleError`` family.

    UpdateError
    ├── RecordFormatError           a persisted update record cannot be parsed (wrong version, bad field)
    ├── JournalError                the journal directory cannot be written
    ├── SlotError                   a bundle slot operation failed
    │   ├── InvalidDigestError      a digest is not ``sha256:<64 lowercase hex>``
    │   ├── UnsafeArtifactNameError an artifact name would escape its slot directory
    │   ├── SlotNotFoundError       no verified slot holds the requested bundle
    │   └── DiskSpaceError          not enough free bytes for a download (carries the numbers)
    ├── FetchError                  an artifact could not be fetched: a refusal, a size disagreement (counted as a
    │                               failed download attempt; link trouble is retried inside the fetcher, never raised)
    ├── FetchInterrupted            a fetch gave up because it was cancelled (new desired bundle, stop); counts nothing
    └── EngineSwitchError           an EngineSwitcher could not load or swap to a bundle
"""

from __future__ import annotations


class UpdateError(Exception):
    """Base of every error raised by ``edge_runtime.update``."""


class RecordFormatError(UpdateError):
    """A persisted update record cannot be parsed."""


class JournalError(UpdateError):
    """The journal directory cannot be written."""


class SlotError(UpdateError):
    """A bundle slot operation failed."""


class InvalidDigestError(SlotError):
    """A digest is not of the form ``sha256:<64 lowercase hex>``."""


class UnsafeArtifactNameError(SlotError):
    """An artifact name is absolute, contains ``..`` or otherwise escapes its slot directory."""


class SlotNotFoundError(SlotError):
    """No verified slot holds the requested bundle."""


class DiskSpaceError(SlotError):
    """Not enough free space for a download; carries the numbers that were compared."""

    def __init__(self, message: str, *, needed: int, margin: int, free: int, path: str) -> None:
        self.needed = needed
        self.margin = margin
        self.free = free
        self.path = path
        super().__init__(message)


class FetchError(UpdateError):
    """An artifact could not be fetched for a reason retrying the link will not fix (the controller refused it,
    or disagrees with the bundle about its size); the update machine counts a failed download attempt."""


class FetchInterrupted(UpdateError):
    """A fetch gave up because it was cancelled (a new desired bundle, a stop); the bytes kept stay on disk and
    no download attempt is counted."""


class EngineSwitchError(UpdateError):
    """A bundle could not be loaded into an inference engine or swapped in."""
