"""Calibration and evaluation image sets: loading, content hash, pre-processing, ORT calibration reader.

An ``ImageSet`` is a directory of ``.jpg``/``.jpeg``/``.png`` images (not recursive). Its content hash is
the sha256 over the images in sorted name order, each fed as ``name``, a NUL byte, the 8-byte big-endian
size and the file bytes, so renaming, reordering-proof and content changes all change the digest and no two
different sets can collide by shifting bytes between neighbouring files. ``count`` and ``sha256`` go into
bundle.json's ``calibration`` section.

Decisions:
- Fewer than ``MIN_IMAGES`` (10) images is refused: ranges from a handful of frames are noise. Fewer than
  ``RECOMMENDED_IMAGES`` (200) is allowed with a warning, logged (``calibration.too_few_images``) and
  returned, so it can be recorded in bundle.json next to the count.
- Pre-processing re-implements the bundle's ``Preprocess`` here with numpy + cv2 rather than importing the
  edge runtime's (the contract package must not import ``edge_runtime``). It follows the same steps with
  the same arithmetic: frames are BGR uint8; letterbox (aspect kept, even padding with ``pad_value``, odd
  pixel bottom/right, ``INTER_LINEAR``) or stretch; colour order; ``(x·scale − mean)/std``; layout; dtype.
  Calibrating on tensors a device would not produce would calibrate the wrong ranges.
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
import structlog
from numpy.typing import NDArray
from onnxruntime.quantization import CalibrationDataReader

from edgefleet.contract.bundle import Preprocess
from edgefleet_pipeline.errors import CalibrationSetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_IMAGES = 10
RECOMMENDED_IMAGES = 200


def _log() -> structlog.stdlib.BoundLogger:
    # Looked up per call, not cached at import: entry points (and CLI tests) may configure structlog after
    # this module is imported, and a logger cached on first use would keep writing to a stale stream.
    return structlog.get_logger(__name__)  # type: ignore[no-any-return]


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
        _log().warning(f"{purpose}.too_few_images", directory=str(root), count=len(paths), recommended=recommended)
    return ImageSet(root=root, paths=paths, sha256=image_set_digest(paths), warning=warning)


def read_image(path: Path) -> NDArray[np.uint8]:
    """Decode an image file as BGR uint8 HxWx3 (grey and alpha images are converted)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CalibrationSetError(f"{path}: cannot be decoded as an image; remove it or replace it")
    return np.ascontiguousarray(image, dtype=np.uint8)


def _letterbox_geometry(frame_hw: tuple[int, int], size_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    fh, fw = frame_hw
    th, tw = size_hw
    ratio = min(th / fh, tw / fw)
    new_h = min(th, max(1, round(fh * ratio)))
    new_w = min(tw, max(1, round(fw * ratio)))
    return new_h, new_w, (th - new_h) // 2, (tw - new_w) // 2


def resize_image(image_bgr: NDArray[np.uint8], pre: Preprocess) -> NDArray[np.uint8]:
    """Letterbox or stretch ``image_bgr`` to ``pre.size`` (height, width)."""
    fh, fw = image_bgr.shape[:2]
    th, tw = pre.size
    if pre.resize == "stretch":
        if (fh, fw) == (th, tw):
            return image_bgr
        return np.asarray(cv2.resize(image_bgr, (tw, th), interpolation=cv2.INTER_LINEAR), np.uint8)
    new_h, new_w, top, left = _letterbox_geometry((fh, fw), (th, tw))
    inner = image_bgr
    if (fh, fw) != (new_h, new_w):
        inner = np.asarray(cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR), np.uint8)
    if (new_h, new_w) == (th, tw):
        return np.asarray(inner, np.uint8)
    pad = (pre.pad_value, pre.pad_value, pre.pad_value)
    boxed = cv2.copyMakeBorder(inner, top, th - new_h - top, left, tw - new_w - left, cv2.BORDER_CONSTANT, value=pad)
    return np.asarray(boxed, np.uint8)


def preprocess_image(image_bgr: NDArray[np.uint8], pre: Preprocess) -> NDArray[Any]:
    """The batch-of-one model input for a BGR uint8 frame, as ``pre`` declares."""
    if image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise CalibrationSetError(
            f"image must be BGR uint8 HxWx3, got dtype {image_bgr.dtype} shape {tuple(image_bgr.shape)}"
        )
    resized = resize_image(image_bgr, pre)
    pixels = resized[:, :, ::-1] if pre.color == "rgb" else resized
    if pre.dtype == "uint8":
        tensor: NDArray[Any] = np.ascontiguousarray(pixels)
    else:
        std = np.asarray(pre.std, np.float32)
        gain = (np.float32(pre.scale) / std).astype(np.float32)
        offset = (-np.asarray(pre.mean, np.float32) / std).astype(np.float32)
        tensor = pixels.astype(np.float32) * gain + offset
        tensor = tensor.astype(np.float16) if pre.dtype == "float16" else tensor.astype(np.float32)
    if pre.layout == "nchw":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[None])


class ImageSetReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
    """onnxruntime ``CalibrationDataReader`` over an ``ImageSet``: one pre-processed image per ``get_next``."""

    def __init__(self, images: ImageSet, pre: Preprocess, input_name: str) -> None:
        self._images = images
        self._pre = pre
        self._input_name = input_name
        self._iter: Iterator[NDArray[np.uint8]] = images.images()

    def get_next(self) -> dict[str, NDArray[Any]] | None:
        image = next(self._iter, None)
        if image is None:
            return None
        return {self._input_name: preprocess_image(image, self._pre)}

    def rewind(self) -> None:
        self._iter = self._images.images()

    def __len__(self) -> int:
        return self._images.count
