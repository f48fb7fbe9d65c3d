"""fleetctl telemetry top / query and review list / label against a real in-process controller fed by the
real device uploader draining real telemetry buffers: rendered values, missing sensors as '-', the
throttling flag, FP rates, saved JPEGs, and exit codes for bad input and unknown samples."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
import sqlalchemy as sa
import structlog
import yaml
from typer.testing import CliRunner, Result

from edge_runtime.agent.telemetry.uploader import TelemetryUploader, UploadSettings
from edge_runtime.telemetry.buffer import TelemetryBuffer
from edge_runtime.telemetry.records import Body
from edgefleet.contract.sketch import new_sketch, sketch_to_proto
from edgefleet.v1 import device_pb2_grpc
from edgefleet.v1.telemetry_pb2 import ConfidenceHistogram, MetricWindow, ReviewSample, SensorReading
from edgefleet_controller.store import schema as t
from edgefleet_testing.controller import InProcessController, bearer, connected, running_controller
from fleetctl.main import app

pytestmark = pytest.mark.integration

BUNDLE = "sha256:" + "b" * 64
runner = CliRunner()


def window(
    rng: np.random.Generator,
    start: datetime,
    *,
    p50_ms: float,
    sensors: Sequence[SensorReading],
    errors: int = 0,
    precision: str = "",
) -> MetricWindow:
    sketch = new_sketch()
    for v in rng.lognormal(np.log(p50_ms), 0.05, size=100):
        sketch.add(float(v))
    w = MetricWindow(
        window_s=10.0,
        bundle_digest=BUNDLE,
        frames=100,
        errors=errors,
        latency_e2e=sketch_to_proto(sketch),
        latency_model=sketch_to_proto(sketch),
        confidence=ConfidenceHistogram(counts=[0] * 16 + [100] + [0] * 3),
        sensors=list(sensors),
        precision=precision,
    )
    w.window_start.FromDatetime(start)
    return w


def readings(temp: float, clock: float) -> list[SensorReading]:
    return [
        SensorReading(name="cpu_temp", kind="temp_c", value=temp),
        SensorReading(name="gpu_temp", kind="temp_c", missing=True),
        SensorReading(name="cpu_clock", kind="clock_mhz", value=clock, max_value=1500.0),
        SensorReading(name="gpu_clock", kind="clock_mhz", missing=True),
    ]


def sample(sample_id: str, at: datetime) -> ReviewSample:
    s = ReviewSample(
        sample_id=sample_id, bundle_digest=BUNDLE, reason="sampled", top_confidence=0.42, jpeg=b"\xff\xd8" + b"j" * 10
    )
    s.captured_at.FromDatetime(at)
    return s


async def drain(ctrl: InProcessController, tmp: Path, devices: dict[str, tuple[str, list[Body]]]) -> None:
    """Enroll each device (name → site, records), fill its own buffer and let a real uploader drain it."""
    async with connected(ctrl) as fleet:
        jobs = []
        for name, (site, bodies) in devices.items():
            _, cred = await fleet.enroll(site, name)
            await fleet.report_running(cred, BUNDLE)
            buf = TelemetryBuffer(tmp / name / "buffer.db", max_bytes=8 << 20, review_quota_bytes=1 << 20)
            buf.append_many(bodies)
            channel = grpc.aio.insecure_channel(ctrl.address)
            up = TelemetryUploader(
                buf,
                functools.partial(device_pb2_grpc.DeviceServiceStub, channel),
                functools.partial(bearer, cred),
                functools.partial(UploadSettings, batch_max_records=8, batch_max_delay_s=0.02, backlog_rate_per_s=500),
            )
            jobs.append((buf, channel, asyncio.create_task(up.run())))
        deadline = asyncio.get_running_loop().time() + 20
        while any(buf.count() for buf, _, _ in jobs):
            assert asyncio.get_running_loop().time() < deadline, [buf.count() for buf, _, _ in jobs]
            await asyncio.sleep(0.05)
        for buf, channel, task in jobs:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await channel.close()
            buf.close()


@dataclass
class Cli:
    ctrl: InProcessController
    token: str

    async def __call__(self, *args: str, token: str | None = None) -> Result:
        argv = ["--controller", self.ctrl.address, "--token", self.token if token is None else token, *args]
        result = await asyncio.to_thread(runner.invoke, app, argv, env={"COLUMNS": "250"})
        # The root callback configures structlog onto the runner's stderr, closed once invoke returns.
        structlog.reset_defaults()
        return result

    async def ok(self, *args: str) -> str:
        result = await self(*args)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output


@pytest.fixture
async def fed(tmp_path: Path) -> AsyncIterator[Cli]:
    rng = np.random.default_rng(3)
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(minutes=5)
    # cam-hot: five cool windows, then one hot, clock-dropped and slow: throttling; served by the U8S8 variant.
    u8 = "int8-u8s8"
    hot: list[Body] = [
        window(rng, t0 + timedelta(seconds=10 * i), p50_ms=20.0, sensors=readings(50.0, 1500.0), precision=u8)
        for i in range(5)
    ]
    hot.append(
        window(rng, t0 + timedelta(seconds=50), p50_ms=40.0, sensors=readings(72.5, 1000.0), errors=2, precision=u8)
    )
    hot += [sample("s-hot-1", t0), sample("s-hot-2", t0 + timedelta(seconds=1))]
    # cam-bare: no sensors at all (a box with none readable), and no precision (a device that predates it).
    bare: list[Body] = [window(rng, t0 + timedelta(seconds=10 * i), p50_ms=10.0, sensors=[]) for i in range(6)]
    bare.append(sample("../../etc/s-bare", t0))
    # cam-old: only telemetry from two hours ago, outside the default windows.
    old: list[Body] = [window(rng, now - timedelta(hours=2), p50_ms=99.0, sensors=readings(40.0, 1500.0))]
    async with running_controller(tmp_path / "ctl") as ctrl:
        await drain(ctrl, tmp_path, {"cam-hot": ("north", hot), "cam-bare": ("south", bare), "cam-old": ("north", old)})
        yield Cli(ctrl, ctrl.admin_token)


def table_line(output: str, first_cell: str) -> list[str]:
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r} in:\n{output}")


async def test_top_shows_percentiles_sensors_and_throttling(fed: Cli) -> None:
    out = await fed.ok("telemetry", "top")
    hot = table_line(out, "cam-hot")
    # DEVICE PRECISION P50 P95 P99 MODEL-P95 FPS ERRORS CPU°C GPU°C CPU-MHZ GPU-MHZ PSI THROTTLING
    assert hot[1] == "int8-u8s8"
    assert 19.0 < float(hot[2]) < 22.0 and 38.0 < float(hot[4]) < 45.0
    assert hot[6:] == ["10.0", "2", "72.5", "-", "1000/1500", "-", hot[12], "THROTTLING"]
    bare = table_line(out, "cam-bare")
    assert bare[1] == "-"  # its windows name no precision
    assert 9.0 < float(bare[2]) < 11.0
    assert bare[7:12] == ["0", "-", "-", "-", "-"] and bare[13] == ""
    assert "cam-old" not in out  # two hours old: outside --since 10m
    north = await fed.ok("telemetry", "top", "--site", "north", "--since", "3h")
    assert "cam-old" in north and "cam-bare" not in north


async def test_top_watch_refreshes_until_bounded(fed: Cli) -> None:
    out = await fed.ok("telemetry", "top", "--watch", "--interval", "0.1", "--refreshes", "3")
    assert "cam-hot" in out and "THROTTLING" in out


async def test_query_groups_and_formats(fed: Cli) -> None:
    rows = json.loads(await fed.ok("telemetry", "query", "--group-by", "site", "--since", "3h", "-o", "json"))
    by_site = {r["key"]: r for r in rows}
    assert set(by_site) == {"north", "south"}
    assert int(by_site["north"]["frames"]) == 700 and int(by_site["south"]["frames"]) == 600
    assert by_site["north"]["throttling"] is True
    assert by_site["north"]["precisions"] == ["int8-u8s8"] and "precisions" not in by_site["south"]
    one_hour = json.loads(await fed.ok("telemetry", "query", "-g", "device", "-o", "json"))
    assert len(one_hour) == 2  # cam-old's window is two hours old
    until = json.loads(await fed.ok("telemetry", "query", "--since", "3h", "--until", "1h", "-o", "json"))
    assert len(until) == 1 and 90.0 < until[0]["latency_e2e"]["p50_ms"] < 110.0
    by_bundle = await fed.ok("telemetry", "query", "--group-by", "bundle", "--device", "cam-bare", "-o", "wide")
    cells = table_line(by_bundle, "b" * 12)
    assert cells[1] == "-" and cells[6] == "600" and cells[-1] == BUNDLE and cells[-5:-1] == ["-", "-", "-", "-"]


async def test_query_by_precision_gives_each_served_variant_its_own_latency(tmp_path: Path) -> None:
    """A device that served FP32 (30 ms), then its U8S8 variant (10 ms), after windows from before it named a
    variant: unsplit, its row names both variants (the latency mixes them); --by-precision gives one row per
    variant with that variant's own percentiles and frames, the unnamed windows under '-'; asked again after
    more windows of the same variant, that row grows and no other moves."""
    rng = np.random.default_rng(7)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def at(i: int, p50_ms: float, precision: str) -> Body:
        return window(rng, t0 + timedelta(seconds=10 * i), p50_ms=p50_ms, sensors=[], precision=precision)

    old = [at(i, 50.0, "") for i in range(2)]
    fp32 = [at(2 + i, 30.0, "fp32") for i in range(3)]
    u8s8 = [at(5 + i, 10.0, "int8-u8s8") for i in range(3)]
    async with running_controller(tmp_path / "ctl") as ctrl:
        await drain(ctrl, tmp_path, {"cam-mix": ("east", [*old, *fp32, *u8s8])})
        cli = Cli(ctrl, ctrl.admin_token)
        mixed = table_line(await cli.ok("telemetry", "top"), "cam-mix")
        assert mixed[1] == "fp32,int8-u8s8"
        split = await cli.ok("telemetry", "query", "--by-precision")
        assert "telemetry by device and precision (3)" in split
        rows = {}
        for line in split.splitlines():
            cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
            if cells[0] == "cam-mix":
                rows[cells[1]] = cells
        assert set(rows) == {"-", "fp32", "int8-u8s8"}
        assert 28.0 < float(rows["fp32"][2]) < 32.0 and 9.0 < float(rows["int8-u8s8"][2]) < 11.0
        assert 48.0 < float(rows["-"][2]) < 52.0
        assert (rows["-"][6], rows["fp32"][6], rows["int8-u8s8"][6]) == ("200", "300", "300")

        by_bundle = json.loads(await cli.ok("telemetry", "query", "-g", "bundle", "-p", "-o", "json"))
        assert [(r["key"], r.get("precision", "")) for r in by_bundle] == [
            (BUNDLE, ""),
            (BUNDLE, "fp32"),
            (BUNDLE, "int8-u8s8"),
        ]
        assert [r.get("precisions", []) for r in by_bundle] == [[], ["fp32"], ["int8-u8s8"]]

        # a second device of the site serving U8S8: its windows land in that variant's row only
        await drain(ctrl, tmp_path, {"cam-mix-2": ("east", [at(8 + i, 10.0, "int8-u8s8") for i in range(2)])})
        again = json.loads(await cli.ok("telemetry", "query", "-g", "site", "-p", "-o", "json"))
        frames = {r.get("precision", ""): int(r["frames"]) for r in again}
        assert frames == {"": 200, "fp32": 300, "int8-u8s8": 500}
        with ctrl.app.store.db.engine.connect() as conn:
            stored = conn.execute(
                sa.select(t.telemetry_windows.c.precision, sa.func.count()).group_by(t.telemetry_windows.c.precision)
            ).all()
        assert dict(stored) == {"": 2, "fp32": 3, "int8-u8s8": 5}


async def test_query_refuses_bad_input_with_exit_2(fed: Cli) -> None:
    for args in (["--group-by", "rack"], ["--since", "yesterday"], ["--since", "1h", "--until", "2h"], ["-o", "xml"]):
        result = await fed("telemetry", "query", *args)
        assert result.exit_code == 2, (args, result.output)
    unknown = await fed("telemetry", "query", "--device", "no-such-cam")
    assert unknown.exit_code == 1 and "NOT_FOUND" in unknown.output
    denied = await fed("telemetry", "top", token="eot_not-a-token")
    assert denied.exit_code == 1 and "UNAUTHENTICATED" in denied.output


async def test_review_list_label_fp_rate_and_jpegs(fed: Cli, tmp_path: Path) -> None:
    listed = json.loads(await fed.ok("review", "list", "--label", "unlabeled", "-o", "json"))
    ids = sorted(s["sample_id"] for s in listed["samples"])
    assert ids == ["../../etc/s-bare", "s-hot-1", "s-hot-2"]
    assert all("jpeg" not in s["sample"] for s in listed["samples"])

    assert "labelled s-hot-1 fp" in await fed.ok("review", "label", "s-hot-1", "fp")
    await fed.ok("review", "label", "s-hot-2", "tp")
    out = await fed.ok("review", "list", "--site", "north")
    assert table_line(out, "s-hot-1")[7] == "fp"
    assert table_line(out, "north")[1:] == ["b" * 12, "50.0%"]

    jpegs = tmp_path / "frames"
    saved = await fed.ok("review", "list", "--save-jpegs", str(jpegs))
    assert "saved 3 JPEGs" in saved
    # the device-chosen id cannot escape the directory
    assert sorted(p.name for p in jpegs.iterdir()) == ["_.._etc_s-bare.jpg", "s-hot-1.jpg", "s-hot-2.jpg"]
    assert (jpegs / "s-hot-1.jpg").read_bytes().startswith(b"\xff\xd8")

    only_fp = yaml.safe_load(await fed.ok("review", "list", "--label", "fp", "--limit", "5", "-o", "yaml"))
    assert [s["sample_id"] for s in only_fp["samples"]] == ["s-hot-1"]
    assert only_fp["fp_rate"] == {f"north/{BUNDLE}": 0.5}


async def test_review_label_errors(fed: Cli) -> None:
    bad = await fed("review", "label", "s-hot-1", "maybe")
    assert bad.exit_code == 2
    missing = await fed("review", "label", "no-such-sample", "tp")
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output and "no-such-sample" in missing.output
    bad_filter = await fed("review", "list", "--label", "weird")
    assert bad_filter.exit_code == 2


async def test_top_skips_a_malformed_stored_window_and_warns(fed: Cli) -> None:
    """A window an older controller stored with no sketch (gamma 0) used to fail every fleet-wide query."""
    before = table_line(await fed.ok("telemetry", "top"), "cam-hot")
    w = t.telemetry_windows
    with fed.ctrl.app.store.db.engine.begin() as conn:
        row = dict(conn.execute(sa.select(w).order_by(w.c.window_start.desc()).limit(1)).mappings().one())
        del row["id"]
        conn.execute(w.insert(), [row | {"epoch": "old-version", "latency_e2e": b""}])
    out = await fed.ok("telemetry", "top")
    assert table_line(out, "cam-hot")[:5] == before[:5]
    assert "warning: 1 stored telemetry window(s) in scope are malformed" in out


async def test_review_label_by_device_and_telemetry_delete(fed: Cli) -> None:
    """Sample ids are per device (--device names it); ``telemetry delete`` asks first, deletes one device's
    records in the range and prints the counts; a bad range is a usage error and deletes nothing."""
    labelled = await fed.ok("review", "label", "--device", "cam-bare", "../../etc/s-bare", "tp")
    assert "labelled ../../etc/s-bare tp" in labelled
    mine = json.loads(await fed.ok("review", "list", "--device", "cam-hot", "-o", "json"))
    assert sorted(s["sample_id"] for s in mine["samples"]) == ["s-hot-1", "s-hot-2"]
    wrong_device = await fed("review", "label", "--device", "cam-hot", "../../etc/s-bare", "fp")
    assert wrong_device.exit_code == 1 and "NOT_FOUND" in wrong_device.output

    declined = await fed("telemetry", "delete", "--device", "cam-hot", "--since", "1h")  # no --yes, no "y"
    assert declined.exit_code == 1 and "nothing deleted" in declined.output
    backwards = await fed("telemetry", "delete", "--device", "cam-hot", "--since", "1h", "--until", "2h", "--yes")
    assert backwards.exit_code == 2
    assert "cam-hot" in await fed.ok("telemetry", "top")

    out = await fed.ok("telemetry", "delete", "--device", "cam-hot", "--since", "1h", "--yes")
    assert "deleted telemetry of device dev_" in out and ": 6 windows, 0 events, 2 review samples" in out
    top = await fed.ok("telemetry", "top")
    assert "cam-hot" not in top and "cam-bare" in top
    left = json.loads(await fed.ok("review", "list", "-o", "json"))
    assert [s["sample_id"] for s in left["samples"]] == ["../../etc/s-bare"]
    again = json.loads(await fed.ok("telemetry", "delete", "--device", "cam-hot", "--since", "1h", "-y", "-o", "json"))
    assert again["device_id"].startswith("dev_") and not any(again.get(k) for k in ("windows", "review_samples"))
