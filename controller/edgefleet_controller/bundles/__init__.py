"""Bundles: publishing (verified against the trusted keys, artifacts streamed into the blob store), listing,
details with canary failures, deletion, and the artifact downloads devices make (``service``)."""
