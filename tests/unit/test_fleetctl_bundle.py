"""fleetctl keys/bundle commands, driven through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import structlog
import yaml
from typer.testing import CliRunner

from edgefleet_pipeline.synthetic_documents import write_document_set
from edgefleet_testing.modelgen import make_classifier
from fleetctl.main import app

runner = CliRunner()


def _spec(tmp_path: Path) -> Path:
    make_classifier(tmp_path / "c.onnx", num_classes=2, size=16)
    spec = {
        "name": "cli",
        "version": "2.0.0",
        "model": "c.onnx",
        "preprocess": {"size": [16, 16]},
        "postprocess": {"kind": "classification"},
        "labels": ["yes", "no"],
        "latency": {"sla_ms": 15},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "spec.yaml"


def test_keys_build_sign_verify_inspect(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "keys"), "--key-id", "pub-a"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "keys/pub-a.key.pem").stat().st_mode & 0o777 == 0o600
    efb = tmp_path / "cli.efb"

    result = runner.invoke(app, ["bundle", "build", str(_spec(tmp_path)), "--out", str(efb)])
    assert result.exit_code == 0, result.output
    assert "unsigned" in result.output

    result = runner.invoke(app, ["bundle", "verify", str(efb), "--trusted", str(tmp_path / "keys")])
    assert result.exit_code == 2
    assert "unsigned" in result.output
    assert "Traceback" not in result.output

    result = runner.invoke(app, ["bundle", "sign", str(efb), "--key", str(tmp_path / "keys/pub-a.key.pem")])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["bundle", "verify", str(efb), "--trusted", str(tmp_path / "keys/pub-a.pub.pem")])
    assert result.exit_code == 0, result.output
    assert "verified: sha256:" in result.output and "signed by pub-a" in result.output

    result = runner.invoke(app, ["bundle", "inspect", str(efb), "-o", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["signed_by"] == "pub-a"
    assert doc["manifest"]["name"] == "cli" and doc["digest"].startswith("sha256:")

    result = runner.invoke(app, ["bundle", "inspect", str(efb)])
    assert result.exit_code == 0, result.output
    assert "cli@2.0.0" in result.output and "pub-a" in result.output


def test_build_signed_and_wrong_trust(tmp_path: Path) -> None:
    for key_id in ("a", "b"):
        runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / key_id), "--key-id", key_id])
    efb = tmp_path / "x.efb"
    result = runner.invoke(
        app,
        ["bundle", "build", str(_spec(tmp_path)), "--out", str(efb), "--key", str(tmp_path / "a/a.key.pem")],
    )
    assert result.exit_code == 0, result.output
    assert "signed by a" in result.output
    result = runner.invoke(app, ["bundle", "verify", str(efb), "--trusted", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "signed by key 'a', which is not trusted" in result.output


def test_spec_error_is_one_line_exit_2(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    doc = yaml.safe_load(spec.read_text())
    doc["latency"]["sla_ms"] = -5
    spec.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["bundle", "build", str(spec), "--out", str(tmp_path / "x.efb")])
    assert result.exit_code == 2
    assert "spec.yaml: field 'latency.sla_ms' must be > 0, got -5" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.efb").exists()


def test_keys_generate_refuses_overwrite(tmp_path: Path) -> None:
    args = ["keys", "generate", "--out", str(tmp_path), "--key-id", "k"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "already exists" in result.output


def test_build_with_calibration_prints_the_candidates_table_on_stdout(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    write_document_set(tmp_path / "cal", 16, seed=3, size=(32, 32))
    efb = tmp_path / "c.efb"
    args = ["bundle", "build", str(spec), "--out", str(efb), "--calibration", str(tmp_path / "cal")]
    result = runner.invoke(app, [*args, "--precision", "auto", "--max-accuracy-loss", "1", "--latency-runs", "3"])
    structlog.reset_defaults()
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith(("│", "┃"))}
    # The spec's default providers name tensorrt and cuda: auto makes an FP16 candidate too.
    assert {"variant", "fp32", "int8", "int8-u8s8", "fp16"} <= set(rows)
    assert "reference" in rows["fp32"] and "s8/s8" in rows["int8"] and "u8/s8" in rows["int8-u8s8"]
    assert "top1_agreement" in rows["int8"] and "16" in rows["int8"]  # scored on the 16 calibration images
    # Warnings (no --eval, few images) are stderr's; stdout has the table and the result lines only.
    assert "no --eval set" in result.stderr and "warning" not in result.stdout
    assert "carries fp32+int8+int8-u8s8+fp16" in result.stdout and efb.exists()
