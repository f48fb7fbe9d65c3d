"""Errors of the shared contract (bundle format, manifests, signing, bundle processing).

Every error the contract raises is a subclass of ``ContractError``; callers that accept untrusted
input catch that one type. Messages say what was wrong, with the offending value, and what to do.

    ContractError
    ├── BundleError                   a bundle is malformed or cannot be read
    │   ├── BundleFormatError         bundle.json / spec does not follow the schema
    │   ├── UnsupportedSchemaError    bundle.json schema_version this code does not know
    │   ├── UnsafeArchiveError        traversal, links, device files, absurd sizes in an archive
    │   ├── DigestMismatchError       an artifact's sha256 differs from the manifest
    │   ├── MissingArtifactError      an artifact bundle.json lists is absent
    │   ├── UnlistedFileError         a file in a bundle directory/archive that bundle.json does not list
    │   └── SignatureError            missing, unknown-key or invalid Ed25519 signature
    ├── SigningKeyError               a signing or trusted key file cannot be read
    ├── SketchError                   a LatencySketch is malformed, or sketches of different accuracy meet
    ├── PrecisionError                latency figures or the precision choice's input are invalid
    ├── BudgetError                   latency-budget input is invalid (SLA, headroom, a profile document)
    ├── ProcessingError               a bundle's pre/post-processing cannot compute its input or results
    │   ├── FrameError                a frame is not a BGR uint8 HxWx3 image
    │   └── ModelOutputError          a model output has a shape its ``postprocess.kind`` cannot decode
    └── ManifestError                 a config manifest is invalid (carries file, line and path)
        └── ManifestSetError          several documents are invalid; ``errors`` holds one per document
"""

from __future__ import annotations


class ContractError(Exception):
    """Base of every error raised by the shared contract code."""


class BundleError(ContractError):
    """A bundle is malformed or cannot be read."""


class BundleFormatError(BundleError):
    """bundle.json or a bundle spec does not follow the schema."""


class UnsupportedSchemaError(BundleError):
    """bundle.json declares a schema version this code does not know."""


class UnsafeArchiveError(BundleError):
    """A bundle archive holds a member that could write outside its target or exhaust the disk."""


class DigestMismatchError(BundleError):
    """An artifact's sha256 does not match the digest recorded in bundle.json."""


class MissingArtifactError(BundleError):
    """An artifact listed in bundle.json is absent from the bundle directory or archive."""


class UnlistedFileError(BundleError):
    """A bundle directory or archive holds a file that bundle.json does not list."""


class SignatureError(BundleError):
    """The bundle signature is missing, made by an untrusted key, or invalid."""


class SigningKeyError(ContractError):
    """A signing or trusted key file cannot be read or has the wrong type."""


class SketchError(ContractError):
    """A ``LatencySketch`` proto is malformed, or sketches of different relative accuracy are merged."""


class BudgetError(ContractError):
    """Latency-budget input is invalid: an SLA, headroom or thermal buffer out of range, or a malformed
    latency-profile document."""


#: How much of a manifest's file name or dotted path an error shows: a real path on an operator's disk
#: (often over 80 characters) is shown whole; a caller's megabyte "file name" is not.
LOCATION_CHARS = 255


def _short_location(location: str) -> str:
    """A caller's file name (``name`` or ``name:line``) or dotted path as an error shows it: at most the
    first ``LOCATION_CHARS`` characters, then the full length; the line number is kept."""
    head, colon, line = location.rpartition(":")
    name, suffix = (head, colon + line) if colon and line.isdigit() else (location, "")
    if len(name) <= LOCATION_CHARS:
        return location
    return f"{name[:LOCATION_CHARS]}… ({len(name)} chars){suffix}"


class ManifestError(ContractError):
    """A config manifest is invalid.

    ``location`` is ``file:line`` (or just ``file``), ``path`` the dotted path inside the document.
    """

    def __init__(self, message: str, *, location: str = "", path: str = "") -> None:
        self.location = location = _short_location(location)
        self.path = path = _short_location(path)
        self.detail = message
        prefix = " ".join(p for p in (location, path) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ManifestSetError(ManifestError):
    """Several manifest documents are invalid; ``errors`` holds the first error of each, in order.

    ``location``, ``path`` and ``detail`` are those of the first error, so code that handles a single
    ``ManifestError`` still points somewhere useful; ``str()`` lists them all, one per line.
    """

    def __init__(self, errors: tuple[ManifestError, ...]) -> None:
        self.errors = errors
        first = errors[0]
        self.location = first.location
        self.path = first.path
        self.detail = first.detail
        lines = "\n".join(f"  {err}" for err in errors)
        ContractError.__init__(self, f"{len(errors)} invalid manifest documents:\n{lines}")


class PrecisionError(ContractError):
    """Latency figures, or the input to the precision choice, are invalid."""


class ProcessingError(ContractError):
    """A bundle's pre- or post-processing (``edgefleet.contract.processing``) cannot compute its result."""


class FrameError(ProcessingError):
    """A frame handed to pre-processing is not a BGR uint8 image of shape HxWx3."""


class ModelOutputError(ProcessingError):
    """A model output does not have the shape the bundle's ``postprocess.kind`` decodes."""
