"""The ``edge-runtime`` command line (plain argparse): usage errors exit 2 with the reason, ``status`` prints the
journal's record, and importing the CLI loads no typer (nor click)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from edge_runtime.cli import main
from edge_runtime.status_report import NOT_RUNNING_EXIT


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


def test_status_of_a_fresh_data_dir_is_json_only_and_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--data-dir", str(tmp_path)]) == NOT_RUNNING_EXIT
    out = json.loads(capsys.readouterr().out)  # stdout is the document and nothing else (logs: stderr)
    assert out["update"]["committed"] is None and "runtime" not in out
    assert out["running"] is False and "has not run on this data dir" in out["not_running_reason"]


def test_status_says_running_only_while_the_writer_lives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A real process stands in for the runtime: alive, its command line naming edge_runtime.
    runtime = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "edge_runtime"])
    try:
        written = {"pid": runtime.pid, "at": datetime.now(UTC).isoformat(), "status_interval_s": 0.5}
        (tmp_path / "status.json").write_text(json.dumps({**written, "health": "HEALTH_SERVING", "online": True}))
        assert main(["status", "--data-dir", str(tmp_path)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["running"] is True and out["runtime"]["health"] == "HEALTH_SERVING"
    finally:
        runtime.kill()
        runtime.wait()
    assert main(["status", "--data-dir", str(tmp_path)]) == NOT_RUNNING_EXIT
    out = json.loads(capsys.readouterr().out)
    assert out["running"] is False and out["not_running_reason"] == f"process {runtime.pid} is not alive"
    assert out["runtime"]["health"] == f"UNKNOWN (not running; last status at {written['at']})"
    assert out["runtime"]["online"] is False


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--sync-wait-s", "0"], "--sync-wait-s: 0 is not in the range 1<=x<=300"),
        (["--chunk-bytes", "many"], "--chunk-bytes: 'many' is not a valid integer"),
        (["--chunk-bytes", str(8 << 20)], "--chunk-bytes: 8388608 is not in the range 4096<=x<=4194304"),
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
