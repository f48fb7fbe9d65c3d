"""Calibration image sets: counting, refusing, warning, hashing, and the calibration reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from edgefleet.contract.bundle_sections import Preprocess
from edgefleet_pipeline.calibration import ImageSetReader, load_image_set, read_image
from edgefleet_pipeline.errors import CalibrationSetError
from edgefleet_pipeline.synthetic_documents import write_document_set


def test_too_few_images_is_refused(tmp_path: Path) -> None:
    write_document_set(tmp_path, 9)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(CalibrationSetError, match=r"holds 9 image\(s\).*fewer than the minimum 10"):
        load_image_set(tmp_path)
    with pytest.raises(CalibrationSetError, match="is not a directory"):
        load_image_set(tmp_path / "absent")


def test_below_recommended_warns_in_logs_and_result(tmp_path: Path) -> None:
    write_document_set(tmp_path, 12)
    with capture_logs() as logs:
        images = load_image_set(tmp_path)
    assert images.count == 12
    assert images.warning is not None and "fewer than the recommended 200" in images.warning
    assert any(e["event"] == "calibration.too_few_images" and e["count"] == 12 for e in logs)
    section = images.calibration_section("entropy")
    assert section == {"count": 12, "sha256": images.sha256, "method": "entropy", "warning": images.warning}
    with capture_logs() as logs:
        assert load_image_set(tmp_path, recommended=10).warning is None
    assert logs == []


def test_digest_depends_on_names_and_bytes(tmp_path: Path) -> None:
    write_document_set(tmp_path, 10, seed=3)
    first = load_image_set(tmp_path).sha256
    assert load_image_set(tmp_path).sha256 == first
    (tmp_path / "doc_0000.png").rename(tmp_path / "doc_zzzz.png")
    renamed = load_image_set(tmp_path).sha256
    assert renamed != first
    data = bytearray((tmp_path / "doc_0001.png").read_bytes())
    data[-1] ^= 1
    (tmp_path / "doc_0001.png").write_bytes(bytes(data))
    assert load_image_set(tmp_path).sha256 not in (first, renamed)


def _pre(spec: dict[str, object]) -> Preprocess:
    # The contract's own parser, so the defaults are those bundle.json readers get.
    return Preprocess.from_dict(spec, source="test")


def test_reader_yields_every_image_then_none(tmp_path: Path) -> None:
    write_document_set(tmp_path, 10, size=(50, 40))
    images = load_image_set(tmp_path)
    reader = ImageSetReader(images, _pre({"size": [32, 32]}), "x")
    fed = []
    while (item := reader.get_next()) is not None:
        fed.append(item["x"])
    assert len(fed) == 10 and fed[0].shape == (1, 3, 32, 32)
    reader.rewind()
    first = reader.get_next()
    assert first is not None
    np.testing.assert_array_equal(first["x"], fed[0])


def test_undecodable_image_is_named(tmp_path: Path) -> None:
    write_document_set(tmp_path, 10)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    images = load_image_set(tmp_path)
    with pytest.raises(CalibrationSetError, match=r"broken\.jpg: cannot be decoded"):
        list(images.images())


def test_synthetic_documents_are_rotated_copies(tmp_path: Path) -> None:
    written = write_document_set(tmp_path, 4, size=(60, 40))
    assert [r for _, r in written] == [0, 90, 180, 270]
    shapes = [read_image(p).shape[:2] for p, _ in written]
    assert shapes == [(60, 40), (40, 60), (60, 40), (40, 60)]
