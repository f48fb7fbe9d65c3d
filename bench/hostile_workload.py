"""The clients of ``bench_hostile``: 50 well-behaved ones (devices that Sync, report events and upload valid
telemetry windows; viewers that list devices and query telemetry) or 50 hostile ones sending worst-case
payloads, as asyncio tasks in one process, closed loop until the phase ends; requests are serialised once.
``Clients(spec).run()`` returns the outcomes by call kind and status code, and the process's CPU seconds."""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import struct_pb2

from edgefleet.contract.request_bounds import MAX_REQUEST_BYTES
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2, telemetry_pb2

CLIENTS = 50
OPERATORS = 5
CALL_DEADLINE_S = 10.0
MB6 = 6 << 20  # over the server's limit: refused by gRPC itself before it is parsed
#: The largest payload the server still parses and checks field by field (request_bounds.MAX_REQUEST_BYTES less
#: room for the rest of the message): the worst case for the bounds check, run off the event loop.
NEAR = MAX_REQUEST_BYTES - (16 << 10)
DEVICE = "/edgefleet.v1.DeviceService/"
FLEET = "/edgefleet.v1.FleetService/"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.use_local_subchannel_pool", 1),
]
Call = Callable[[], Awaitable[None]]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def channels(address: str, count: int) -> list[grpc.aio.Channel]:
    # Distinct channel args → distinct TCP connections, as distinct clients would have.
    return [grpc.aio.insecure_channel(address, options=[*CHANNEL_OPTIONS, ("bench.channel", i)]) for i in range(count)]


# ---------------------------------------------------------------------------------------------- payloads


def _window(spec: dict[str, Any], start: datetime, **sketch: Any) -> telemetry_pb2.MetricWindow:
    w = telemetry_pb2.MetricWindow()
    w.ParseFromString(bytes.fromhex(spec["window_hex"]))
    w.window_start.FromDatetime(start)
    for key, value in sketch.items():
        if isinstance(value, list):
            getattr(w.latency_e2e, key)[:] = value
        else:
            setattr(w.latency_e2e, key, value)
    return w


def _batch(epoch: str, first_seq: int, windows: list[telemetry_pb2.MetricWindow]) -> bytes:
    records = [telemetry_pb2.TelemetryRecord(seq=first_seq + i, metrics=w) for i, w in enumerate(windows)]
    return telemetry_pb2.TelemetryBatch(
        epoch=epoch, first_seq=first_seq, last_seq=first_seq + len(windows) - 1, records=records
    ).SerializeToString()


def reported(bundle: str, details: struct_pb2.Struct | None = None) -> common_pb2.ReportedState:
    return common_pb2.ReportedState(
        health=common_pb2.HEALTH_SERVING, running_bundle_digest=bundle, slot_digests=[bundle], details=details
    )


def _events(prefix: str, count: int, bundle: str, reason: str) -> bytes:
    events = [
        telemetry_pb2.DeviceEvent(
            event_id=f"{prefix}-{i:05d}",
            kind=telemetry_pb2.DeviceEvent.KIND_ALERT,
            bundle_digest=bundle,
            reason=reason,
        )
        for i in range(count)
    ]
    for ev in events:
        ev.at.GetCurrentTime()
    return device_pb2.ReportEventRequest(events=events).SerializeToString()


class Clients:
    """One phase's clients in this (child) process: ``calls`` counts outcomes by kind and status code."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.channels: list[grpc.aio.Channel] = []  # made in run(), on its event loop
        self.calls: dict[str, Counter[str]] = {}
        self.bundle: str = spec["bundle"]

    def unary(self, i: int, service: str, method: str) -> Any:
        return self.channels[i % len(self.channels)].unary_unary(service + method)

    async def count(self, kind: str, call: Awaitable[Any]) -> None:
        try:
            await call
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        self.calls.setdefault(kind, Counter())[code] += 1

    async def upload(self, i: int, cred: str, batches: list[bytes]) -> Any:
        call: Any = self.channels[i % len(self.channels)].stream_stream(DEVICE + "UploadTelemetry")
        stream = call(iter(batches), metadata=bearer(cred), timeout=CALL_DEADLINE_S)
        async for _ in stream:
            pass

    # ------------------------------------------------------------------ well-behaved

    def well_behaved(self, i: int) -> Call:
        spec = self.spec
        if i < OPERATORS:
            meta = bearer(spec["viewer"])
            list_devices = self.unary(i, FLEET, "ListDevices")
            query = self.unary(i, FLEET, "QueryTelemetry")
            page = fleet_pb2.ListDevicesRequest(page_size=100).SerializeToString()

            async def operator() -> None:
                await self.count("ListDevices", list_devices(page, metadata=meta, timeout=CALL_DEADLINE_S))
                since = datetime.now(UTC) - timedelta(seconds=10)
                req = fleet_pb2.QueryTelemetryRequest(group_by="site")
                req.since.FromDatetime(since)
                await self.count("QueryTelemetry", query(req.SerializeToString(), metadata=meta, timeout=30))

            return operator
        cred = spec["creds"][i]
        meta = bearer(cred)
        sync = self.unary(i, DEVICE, "Sync")
        report = self.unary(i, DEVICE, "ReportEvent")
        sync_req = device_pb2.SyncRequest(known_revision=0, wait_s=1, reported=reported(self.bundle))
        sync_bytes = sync_req.SerializeToString()
        epoch = uuid.uuid4().hex
        state = {"seq": 1, "n": 0}

        async def device() -> None:
            await self.count("Sync", sync(sync_bytes, metadata=meta, timeout=CALL_DEADLINE_S))
            state["n"] += 1
            events = _events(f"{epoch}-{state['n']}", 2, self.bundle, "thermal throttling")
            await self.count("ReportEvent", report(events, metadata=meta, timeout=CALL_DEADLINE_S))
            now = datetime.now(UTC).replace(microsecond=0)
            windows = [_window(spec, now - timedelta(seconds=10 * (5 - k))) for k in range(5)]
            batch = _batch(epoch, state["seq"], windows)
            state["seq"] += len(windows)
            await self.count("UploadTelemetry", self.upload(i, cred, [batch]))

        return device

    # ------------------------------------------------------------------ hostile

    def hostile(self, i: int) -> Call:
        cred = self.spec["creds"][i]
        kinds: list[Callable[[int, str], Call]] = [
            self._enroll_big_name,
            self._enroll_big_hardware,
            self._sync_big_details,
            self._telemetry_bad,
            self._events_flood,
            self._big_refs,
            self._bad_tokens,
            self._bad_names,
        ]
        return kinds[i % len(kinds)](i, cred)

    def _enroll_big_name(self, i: int, cred: str) -> Call:
        enroll = self.unary(i, DEVICE, "Enroll")
        req = device_pb2.EnrollRequest(enrollment_token="eft_nosuch.secret", name="a" * MB6).SerializeToString()

        async def go() -> None:
            await self.count("Enroll 6 MB name, bad token", enroll(req, timeout=CALL_DEADLINE_S))

        return go

    def _enroll_big_hardware(self, i: int, cred: str) -> Call:
        enroll = self.unary(i, DEVICE, "Enroll")
        token = self.spec["enroll_token"]

        async def go() -> None:
            hw = common_pb2.HardwareProfile(hardware_class="x86-avx2", cpu_model="x" * NEAR, cpu_cores=4)
            name = f"h{uuid.uuid4().hex[:12]}"
            req = device_pb2.EnrollRequest(enrollment_token=token, name=name, hardware=hw).SerializeToString()
            await self.count("Enroll 2 MB cpu_model, valid token", enroll(req, timeout=CALL_DEADLINE_S))

        return go

    def _sync_big_details(self, i: int, cred: str) -> Call:
        sync = self.unary(i, DEVICE, "Sync")
        details = struct_pb2.Struct()
        details.update({"notes": "d" * NEAR})
        req = device_pb2.SyncRequest(known_revision=0, wait_s=1, reported=reported(self.bundle, details))
        raw = req.SerializeToString()

        async def go() -> None:
            await self.count("Sync 2 MB details", sync(raw, metadata=bearer(cred), timeout=CALL_DEADLINE_S))

        return go

    def _telemetry_bad(self, i: int, cred: str) -> Call:
        now = datetime.now(UTC).replace(microsecond=0)
        spec = self.spec
        bad: list[tuple[str, list[bytes]]] = [
            ("bin offset -2^31", [_batch("e1", 1, [_window(spec, now, contiguous_bin_index_offset=-(2**31))])]),
            ("gamma 0", [_batch("e2", 1, [_window(spec, now, gamma=0.0)])]),
            ("gamma 1.5", [_batch("e3", 1, [_window(spec, now, gamma=1.5)])]),
            ("500,000 bins", [_batch("e4", 1, [_window(spec, now, contiguous_bin_counts=[1.0] * 500_000)])]),
            ("seq 2^63", [_batch("e5", 2**63, [_window(spec, now)])]),
        ]
        nan = _window(spec, now)
        nan.window_s = math.nan
        bad.append(("NaN window_s", [_batch("e6", 1, [nan])]))
        turn = [i]  # the tasks of one kind start at different payloads

        async def go() -> None:
            label, batches = bad[turn[0] % len(bad)]
            turn[0] += 1
            await self.count(f"UploadTelemetry {label}", self.upload(i, cred, batches))

        return go

    def _events_flood(self, i: int, cred: str) -> Call:
        report = self.unary(i, DEVICE, "ReportEvent")
        template = _events("X" * 12, 6_500, self.bundle, "r" * 200)  # ~2.0 MB: parsed, 13x the events cap

        async def go() -> None:
            fresh = template.replace(b"X" * 12, uuid.uuid4().hex[:12].encode())  # same length: still valid
            await self.count("ReportEvent 6,500 events", report(fresh, metadata=bearer(cred), timeout=CALL_DEADLINE_S))

        return go

    def _big_refs(self, i: int, cred: str) -> Call:
        viewer = bearer(self.spec["viewer"])
        get_bundle = self.unary(i, FLEET, "GetBundle")
        get_device = self.unary(i, FLEET, "GetDevice")
        ref = fleet_pb2.GetBundleRequest(ref="sha256:" + "f" * 20_000).SerializeToString()
        dev = fleet_pb2.GetDeviceRequest(device="d" * 20_000).SerializeToString()

        async def go() -> None:
            await self.count("GetBundle 20 KB ref", get_bundle(ref, metadata=viewer, timeout=CALL_DEADLINE_S))
            await self.count("GetDevice 20 KB id", get_device(dev, metadata=viewer, timeout=CALL_DEADLINE_S))

        return go

    def _bad_tokens(self, i: int, cred: str) -> Call:
        sync = self.unary(i, DEVICE, "Sync")
        list_devices = self.unary(i, FLEET, "ListDevices")
        raw = device_pb2.SyncRequest(known_revision=0, wait_s=1).SerializeToString()
        forged = cred.split(".", 1)[0] + "." + "0" * 40
        garbage = "edc_" + os.urandom(3000).hex()  # metadata must be printable ASCII

        async def go() -> None:
            await self.count("Sync forged credential", sync(raw, metadata=bearer(forged), timeout=CALL_DEADLINE_S))
            await self.count(
                "ListDevices garbage token", list_devices(b"", metadata=bearer(garbage), timeout=CALL_DEADLINE_S)
            )

        return go

    def _bad_names(self, i: int, cred: str) -> Call:
        enroll = self.unary(i, DEVICE, "Enroll")
        token = self.spec["names_token"]
        names = ["cam\x00era", "cam\u202eera", "../../etc", "UPPER", "x" * 64]
        reqs = [device_pb2.EnrollRequest(enrollment_token=token, name=n).SerializeToString() for n in names]
        turn = [i]  # the tasks of one kind start at different payloads

        async def go() -> None:
            turn[0] += 1
            await self.count("Enroll bad names", enroll(reqs[turn[0] % len(reqs)], timeout=CALL_DEADLINE_S))

        return go

    async def run(self) -> dict[str, Any]:
        self.channels = channels(self.spec["address"], 10)
        make = self.hostile if self.spec["mode"] == "hostile" else self.well_behaved
        loops = [make(i) for i in range(CLIENTS)]
        deadline = time.monotonic() + self.spec["seconds"]

        async def loop(call: Call) -> None:
            while time.monotonic() < deadline:
                await call()

        cpu0 = time.process_time()
        started = time.monotonic()
        await asyncio.gather(*(loop(c) for c in loops))
        result = {
            "calls": {k: dict(v) for k, v in sorted(self.calls.items())},
            "cpu_s": time.process_time() - cpu0,
            "seconds": time.monotonic() - started,
        }
        for ch in self.channels:
            await ch.close()
        return result
