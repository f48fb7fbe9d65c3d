"""The controller's persistent state: the database (``Store``) and the content-addressed blob directory
(``BlobStore``), both rooted in one ``--data-dir`` by default (``controller.db`` and ``blobs/``)."""

from __future__ import annotations

from edgefleet_controller.store.blobs import BlobStore, BlobWriter, check_digest, digest_of
from edgefleet_controller.store.store import UNSET, EventInput, Store, head_revision, migrate

__all__ = [
    "UNSET",
    "BlobStore",
    "BlobWriter",
    "EventInput",
    "Store",
    "check_digest",
    "digest_of",
    "head_revision",
    "migrate",
]
