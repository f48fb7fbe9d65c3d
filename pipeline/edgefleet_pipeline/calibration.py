"""Calibration and evaluation image sets: loading, content hash, the ORT calibration reader.

An ``ImageSet`` is a directory of ``.jpg``/``.jpeg``/``.png`` images (not recursive). Its content hash is
the sha256 over the images in sorted name order, each fed as ``name``, a NUL byte, the 8-byte big-endian
size and the file bytes, so renaming, reordering-proof and content changes all change the digest and no two
different sets can collide by shifting bytes between neighbouring files. ``count`` and ``sha256`` go into
bundle.json's ``calibration`` section.

Decisions:
- Fewer than ``MIN_IMAGES`` (10) images is refused: ranges from a handful of frames are noise. Fewer than
  ``RECOMMENDED_IMAGES`` (200) is allowed with a warning, logged (``calibration.too_few_images``) and
  returned, so it can be recorded in bundle.json next to the count.
- Pre-processing is the contract's (``edgefleet.contract.processing.preprocess``), the very code a device
  runs on its frames: calibrating on tensors a device would not produce would calibrate the wrong ranges.
- The calibration reader reads images lazily: 500 images at 640×640 float32 would be ~2.4 GB held at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from onnxruntime.quantization import CalibrationDataReader

from edgefleet.contract.bundle_sections import Preprocess
from edgefleet.contract.processing.preprocess import Normaliser
from edgefleet.logging import current_logger
from edgefleet_pipeline.errors import CalibrationSetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_IMAGES = 10
RECOMMENDED_IMAGES = 200


@dataclass(frozen=True)
class ImageSet:
    """A calibration or evaluation image directory: its images in name order and their content hash."""

    root: Path
    paths: tuple[Path, ...]
    sha256: str
    warning: str | None = None

    @property
    def count(self) -> int:
        return len(self.paths)

    def calibration_section(self, method: str) -> dict[str, object]:
        """The ``calibration`` mapping for bundle.json: count, sha256, method and the warning if any."""
        section: dict[str, object] = {"count": self.count, "sha256": self.sha256, "method": method}
        if self.warning is not None:
            section["warning"] = self.warning
        return section

    def images(self) -> Iterator[NDArray[np.uint8]]:
        """Decode each image as a BGR uint8 HxWx3 frame, in name order."""
        for path in self.paths:
            yield read_image(path)


def image_set_digest(paths: Sequence[Path]) -> str:
    """Hex sha256 over ``name NUL size(8 bytes) bytes`` of each file, in sorted name order."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        data = path.read_bytes()
        digest.update(path.name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def load_image_set(
    directory: Path | str,
    *,
    purpose: str = "calibration",
    min_images: int = MIN_IMAGES,
    recommended: int = RECOMMENDED_IMAGES,
) -> ImageSet:
    """List and hash the images of ``directory``; refuse fewer than ``min_images``, warn below ``recommended``."""
    root = Path(directory)
    if not root.is_dir():
        raise CalibrationSetError(f"{purpose} set: {root} is not a directory; pass a directory of .jpg/.png images")
    paths = tuple(
        sorted(
            (p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: p.name,
        )
    )
    if len(paths) < min_images:
        raise CalibrationSetError(
            f"{purpose} set: {root} holds {len(paths)} image(s) ({', '.join(IMAGE_SUFFIXES)}), fewer than "
            f"the minimum {min_images}; add {recommended}-500 images from the target environment"
        )
    warning = None
    if len(paths) < recommended:
        warning = (
            f"{len(paths)} {purpose} images, fewer than the recommended {recommended}; ranges may not "
            "cover the target environment"
        )
        current_logger(__name__).warning(
            f"{purpose}.too_few_images", directory=str(root), count=len(paths), recommended=recommended
        )
    return ImageSet(root=root, paths=paths, sha256=image_set_digest(paths), warning=warning)


def read_image(path: Path) -> NDArray[np.uint8]:
    """Decode an image file as BGR uint8 HxWx3 (grey and alpha images are converted)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CalibrationSetError(f"{path}: cannot be decoded as an image; remove it or replace it")
    return np.ascontiguousarray(image, dtype=np.uint8)


class ImageSetReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
    """onnxruntime ``CalibrationDataReader`` over an ``ImageSet``: one pre-processed image per ``get_next``."""

    def __init__(self, images: ImageSet, pre: Preprocess, input_name: str) -> None:
        self._images = images
        self._normalise = Normaliser(pre)  # the per-channel constants once, not per image
        self._input_name = input_name
        self._iter: Iterator[NDArray[np.uint8]] = images.images()

    def get_next(self) -> dict[str, NDArray[Any]] | None:
        image = next(self._iter, None)
        if image is None:
            return None
        return {self._input_name: self._normalise(image)[0]}

    def rewind(self) -> None:
        self._iter = self._images.images()

    def __len__(self) -> int:
        return self._images.count
