"""Bundle format: spec parsing, building, bundle.json validation and directory verification."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.contract.bundle import BundleManifest, read_manifest
from edgefleet.contract.bundle_archive import verify_bundle
from edgefleet.contract.bundle_files import iter_bundle_files
from edgefleet.contract.bundle_spec import load_spec
from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.errors import (
    BundleError,
    BundleFormatError,
    ContractError,
    DigestMismatchError,
    MissingArtifactError,
    SignatureError,
    UnlistedFileError,
    UnsupportedSchemaError,
)
from edgefleet.contract.golden import load_golden
from edgefleet.contract.signing import TrustedKeys, generate_keypair, sign_bundle
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_testing.modelgen import make_classifier, make_yolo_detector

CREATED = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


def _spec(tmp_path: Path, **overrides: object) -> Path:
    model = make_classifier(tmp_path / "models" / "c.onnx", num_classes=3, size=32)
    spec: dict[str, object] = {
        "name": "classifier",
        "version": "1.2.3-rc.1+build.5",
        "model": str(model.relative_to(tmp_path)),
        "preprocess": {"size": [32, 32]},
        "postprocess": {"kind": "classification", "top_k": 2},
        "labels": ["a", "b", "c"],
        "latency": {"sla_ms": 20},
    }
    spec.update(overrides)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, TrustedKeys]:
    out = tmp_path / "bundle"
    build_bundle(_spec(tmp_path), out, created_at=CREATED)
    key = generate_keypair()
    sign_bundle(out, key)
    return out, TrustedKeys({key.key_id: key.public_key})


def test_build_writes_canonical_manifest_with_inferred_tensors(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    manifest = build_bundle(_spec(tmp_path), out, created_at=CREATED)
    raw = (out / "bundle.json").read_bytes()
    assert raw == canonical_json(json.loads(raw), trailing_newline=True)
    assert raw.endswith(b"\n") and b" " not in raw.replace(b'": ', b"").split(b'"labels"')[0][:10]
    assert manifest == read_manifest(out)
    assert manifest.digest.startswith("sha256:") and len(manifest.digest) == 71
    assert manifest.inputs[0].name == "images" and manifest.inputs[0].shape == ("batch", 3, 32, 32)
    assert manifest.outputs[0].shape == ("batch", 3)
    assert set(manifest.artifacts) == {"model", "golden"}
    assert manifest.artifacts["model"].path == "artifacts/model.onnx"
    assert manifest.canary.headroom == 0.2 and manifest.canary.max_p95_ratio == 1.10
    assert manifest.providers == ("tensorrt", "cuda", "cpu")


def test_build_is_reproducible(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    first = build_bundle(spec, tmp_path / "one", created_at=CREATED)
    second = build_bundle(spec, tmp_path / "two", created_at=CREATED)
    assert first.digest == second.digest


def test_golden_outputs_reproduce_on_cpu(tmp_path: Path) -> None:
    import onnxruntime as ort

    out = tmp_path / "bundle"
    manifest = build_bundle(_spec(tmp_path), out, golden_count=3, created_at=CREATED)
    cases = load_golden(out / manifest.artifacts["golden"].path)
    assert len(cases) == 3
    session = ort.InferenceSession(str(out / "artifacts/model.onnx"), providers=["CPUExecutionProvider"])
    tol = manifest.canary.golden_tolerance
    for case in cases:
        assert case.inputs["images"].shape == (1, 3, 32, 32)
        (logits,) = session.run(None, dict(case.inputs))
        expected = np.asarray(case.outputs["logits"], dtype=np.float32)
        np.testing.assert_allclose(logits, expected, atol=tol.atol, rtol=tol.rtol)


def test_extra_artifacts_are_named_by_role(tmp_path: Path) -> None:
    table = tmp_path / "calib.cache"
    table.write_bytes(b"TRT-8601-EntropyCalibration2\n")
    int8 = make_classifier(tmp_path / "q.onnx", num_classes=3, size=32, seed=9)
    manifest = build_bundle(
        _spec(tmp_path, precision_variants={"int8": {"artifact": "model.int8", "precision": "int8"}}),
        tmp_path / "bundle",
        extra_artifacts={"calibration": table, "model.int8": int8},
        created_at=CREATED,
    )
    assert manifest.artifacts["calibration"].path == "artifacts/calibration.cache"
    assert manifest.artifacts["model.int8"].path == "artifacts/model.int8.onnx"
    assert manifest.precision_variants is not None
    assert manifest.precision_variants["int8"].precision == "int8"


def test_yolo_bundle_checks_labels_against_output(tmp_path: Path) -> None:
    model = make_yolo_detector(tmp_path / "y.onnx", size=64, num_classes=2)
    spec = {
        "name": "det",
        "version": "0.1.0",
        "model": "y.onnx",
        "preprocess": {"size": [64, 64]},
        "postprocess": {"kind": "yolov8"},
        "labels": ["a", "b", "c"],
        "latency": {"sla_ms": 20},
    }
    assert model.exists()
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(
        BundleFormatError, match=r"output 'output0' is \[1, 6, 4\]; that is 2 classes, but 'labels' has 3"
    ):
        build_bundle(tmp_path / "s.yaml", tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"latency": {"sla_ms": -5}}, "spec.yaml: field 'latency.sla_ms' must be > 0, got -5"),
        ({"version": "1.2"}, "field 'version' must be a SemVer 2.0 version like 1.2.3, got '1.2'"),
        ({"name": "Not_A_Label"}, "field 'name' must be a DNS label"),
        (
            {"preprocess": {"size": [32, 32], "resize": "crop"}},
            "'preprocess.resize' must be one of letterbox",
        ),
        ({"postprocess": {"kind": "classification", "top_k": 0}}, "'postprocess.top_k' must be >= 1, got 0"),
        ({"providers": ["tensorrt", "gpu"]}, r"'providers\[1\]' must be one of .* got 'gpu'"),
        ({"canary": {"headroom": True}}, "'canary.headroom' must be a number, got True"),
        ({"latncy": {}}, "unknown field 'latncy'"),
    ],
)
def test_spec_errors_name_field_and_value(tmp_path: Path, override: dict[str, object], message: str) -> None:
    with pytest.raises(BundleFormatError, match=message if "\\[" in message else re.escape(message)):
        load_spec(_spec(tmp_path, **override))


def test_build_refuses_non_empty_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "x").write_text("x")
    with pytest.raises(BundleError, match="not an empty directory"):
        build_bundle(_spec(tmp_path), out)


def test_missing_model_is_named(tmp_path: Path) -> None:
    spec = _spec(tmp_path, model="nope.onnx")
    with pytest.raises(BundleFormatError, match=re.escape("nope.onnx, which does not exist")):
        build_bundle(spec, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_verify_round_trip_and_iter_files(signed: tuple[Path, TrustedKeys]) -> None:
    bundle, trusted = signed
    verified = verify_bundle(bundle, trusted)
    assert verified.key_id in trusted
    assert verified.digest == read_manifest(bundle).digest
    files = list(iter_bundle_files(bundle))
    assert [f.path for f in files] == [
        "bundle.json",
        "bundle.sig",
        "artifacts/golden.npz",
        "artifacts/model.onnx",
    ]
    assert files[0].digest == verified.digest


def test_flipped_artifact_byte_is_refused(signed: tuple[Path, TrustedKeys]) -> None:
    bundle, trusted = signed
    model = bundle / "artifacts/model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError, match=r"artifact 'model' \(artifacts/model.onnx\) has sha256:"):
        verify_bundle(bundle, trusted)


def test_edited_manifest_is_refused(signed: tuple[Path, TrustedKeys]) -> None:
    bundle, trusted = signed
    doc = json.loads((bundle / "bundle.json").read_bytes())
    doc["latency"]["sla_ms"] = 500.0
    (bundle / "bundle.json").write_bytes(canonical_json(doc, trailing_newline=True))
    with pytest.raises(SignatureError, match=re.escape("does not match bundle.json")):
        verify_bundle(bundle, trusted)


def test_unlisted_and_missing_files_are_refused(signed: tuple[Path, TrustedKeys]) -> None:
    bundle, trusted = signed
    (bundle / "artifacts/evil.so").write_bytes(b"x")
    with pytest.raises(UnlistedFileError, match=re.escape("artifacts/evil.so")):
        verify_bundle(bundle, trusted)
    (bundle / "artifacts/evil.so").unlink()
    (bundle / "artifacts/golden.npz").unlink()
    with pytest.raises(MissingArtifactError, match="artifact 'golden'"):
        verify_bundle(bundle, trusted)


def test_unsigned_bundle_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    build_bundle(_spec(tmp_path), out)
    with pytest.raises(SignatureError, match="unsigned"):
        verify_bundle(out, TrustedKeys())


def test_unsupported_schema_version(signed: tuple[Path, TrustedKeys]) -> None:
    bundle, trusted = signed
    doc = json.loads((bundle / "bundle.json").read_bytes())
    doc["schema_version"] = 2
    data = canonical_json(doc, trailing_newline=True)
    with pytest.raises(UnsupportedSchemaError, match="schema_version 2 is not supported"):
        BundleManifest.from_json_bytes(data)
    (bundle / "bundle.json").write_bytes(data)
    with pytest.raises(UnsupportedSchemaError):
        verify_bundle(bundle, trusted)


def test_manifest_must_be_canonical(signed: tuple[Path, TrustedKeys]) -> None:
    bundle, _ = signed
    doc = json.loads((bundle / "bundle.json").read_bytes())
    with pytest.raises(BundleFormatError, match="not canonical JSON"):
        BundleManifest.from_json_bytes(json.dumps(doc, indent=2).encode())
    dup = (bundle / "bundle.json").read_bytes().replace(b'{"artifacts"', b'{"name":"x","artifacts"', 1)
    with pytest.raises(BundleFormatError, match="duplicate key 'name'"):
        BundleManifest.from_json_bytes(dup)


def test_manifest_field_errors(signed: tuple[Path, TrustedKeys]) -> None:
    bundle, _ = signed
    doc = json.loads((bundle / "bundle.json").read_bytes())
    doc["latency"]["sla_ms"] = -5
    with pytest.raises(BundleFormatError, match=re.escape("bundle.json: field 'latency.sla_ms' must be > 0, got -5")):
        BundleManifest.from_json_bytes(canonical_json(doc, trailing_newline=True))
    doc["latency"]["sla_ms"] = 20.0
    doc["artifacts"]["model"]["path"] = "artifacts/../../etc/passwd"
    with pytest.raises(BundleFormatError, match=re.escape("artifacts.model.path")):
        BundleManifest.from_json_bytes(canonical_json(doc, trailing_newline=True))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _paths(obj: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@pytest.fixture(scope="module")
def valid_manifest_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("fuzz")
    build_bundle(_spec(tmp), tmp / "bundle", created_at=CREATED)
    doc: dict[str, object] = json.loads((tmp / "bundle/bundle.json").read_bytes())
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_manifest_only_contract_errors(valid_manifest_doc: dict[str, object], data: st.DataObject) -> None:
    doc = json.loads(json.dumps(valid_manifest_doc))
    mode = data.draw(st.sampled_from(["mutate", "random", "bytes", "huge"]))
    if mode == "random":
        raw = json.dumps(data.draw(_JSON)).encode()
    elif mode == "bytes":
        raw = data.draw(st.binary(max_size=200))
    elif mode == "huge":
        raw = canonical_json(doc, trailing_newline=True).replace(b'"sla_ms":20.0', b'"sla_ms":1e999')
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            path = data.draw(st.sampled_from(_paths(doc)[1:]))
            parent: object = doc
            for part in path[:-1]:
                parent = parent[part]  # type: ignore[index]
            if data.draw(st.booleans()):
                parent[path[-1]] = data.draw(_JSON)  # type: ignore[index]
            elif isinstance(parent, dict):
                del parent[path[-1]]
        raw = canonical_json(doc, trailing_newline=True)
    try:
        manifest = BundleManifest.from_json_bytes(raw)
    except ContractError:
        return
    assert manifest.to_json_bytes() == raw


def test_copy_of_verified_bundle_still_verifies(signed: tuple[Path, TrustedKeys], tmp_path: Path) -> None:
    bundle, trusted = signed
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    assert verify_bundle(copy, trusted).digest == verify_bundle(bundle, trusted).digest
