"""The layout of a bundle directory: file names, artifact roles and paths, media types and size limits.

A bundle directory holds ``bundle.json`` (the manifest), ``bundle.sig`` and artifact files under
``artifacts/`` named by role (``artifacts/model.onnx``, ``artifacts/model.int8.onnx``,
``artifacts/calibration.cache``, ``artifacts/golden.npz``; an extra artifact with role R from a file ``x.S``
lands at ``artifacts/R.S``).
"""

from __future__ import annotations

import re

SCHEMA_VERSION = 1
MANIFEST_NAME = "bundle.json"
SIGNATURE_NAME = "bundle.sig"
ARTIFACTS_DIR = "artifacts"
MODEL_ROLE = "model"
GOLDEN_ROLE = "golden"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_ARTIFACTS = 256

MEDIA_TYPES = {
    ".onnx": "application/vnd.onnx",
    ".npz": "application/x-npz",
    ".cache": "application/vnd.tensorrt.calibration",
    ".plan": "application/vnd.tensorrt.engine",
    ".engine": "application/vnd.tensorrt.engine",
    ".json": "application/json",
}
DEFAULT_MEDIA_TYPE = "application/octet-stream"

ROLE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
ARTIFACT_PATH_RE = re.compile(r"^artifacts/[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
