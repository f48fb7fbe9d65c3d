"""The ``edge-runtime`` command line (plain argparse): usage errors exit 2 with the reason, ``status`` prints the
journal's record, and importing the CLI loads no typer (nor click)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from edge_runtime.cli import main


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    # ``run`` configures structlog to print to the captured stderr, which is gone once the test ends.
    structlog.reset_defaults()


def test_no_command_prints_the_commands_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in ("run", "status", "profile"))


def test_status_of_a_missing_data_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--data-dir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_status_prints_the_update_record_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--data-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    # A fresh data dir's journal logs that it was created (structlog's default: stdout) before the document.
    out = json.loads(printed[printed.index("{\n") :])
    assert out["update"]["committed"] is None and "runtime" not in out


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--sync-wait-s", "0"], "--sync-wait-s: 0 is not in the range 1<=x<=300"),
        (["--chunk-bytes", "many"], "--chunk-bytes: 'many' is not a valid integer"),
        (["--site-tags", "zone"], "--site-tags must be key=value, got 'zone'"),
        (["--client-cert", "c.pem"], "--client-cert and --client-key go together"),
    ],
)
def test_run_usage_errors_exit_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], reason: str
) -> None:
    args = ["run", "--controller", "127.0.0.1:1", "--data-dir", str(tmp_path), "--source", "synthetic", *extra]
    assert main(args) == 2
    assert reason in capsys.readouterr().err


def test_profile_refuses_an_unknown_output_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--bundle", str(tmp_path), "-o", "xml"]) == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_the_cli_loads_no_typer() -> None:
    # Not rich: structlog's console renderer imports it by itself where it is installed (this dev venv).
    code = "import sys, edge_runtime.cli; print(sorted({'typer', 'click'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
