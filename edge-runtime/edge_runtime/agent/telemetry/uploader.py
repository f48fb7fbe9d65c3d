"""The telemetry uploader: streams the durable buffer to ``DeviceService.UploadTelemetry`` and forgets only
what the controller acknowledged.

How one stream runs:

- gzip call compression; batches bounded in records (``batch_max_records``) and bytes
  (``batch_max_bytes``; both clamped to what the controller accepts in one request, ``MAX_BATCH_RECORDS``
  and ``MAX_TELEMETRY_BATCH_BYTES``); at most ``max_in_flight`` batches un-acknowledged on the wire (acks
  come back in order, one per batch); an ack deletes the records up to its contiguous mark, nothing else.
- The first batch of every stream is ``peek_batch(events_first=True)``: after an outage, verdicts and
  rollbacks travel before hours of metrics. Later batches take the held records not yet sent on this
  stream, in seq order. Each batch declares the seqs the buffer dropped (absent above the acked mark)
  up to its last record, so the controller's mark can pass them.
- Live records wait up to ``batch_max_delay_s`` to share a batch. A FULL batch means a backlog: those are
  paced at ``backlog_rate_per_s`` batches per second so a device coming back after hours neither floods
  its uplink nor steals the CPU from inference.
- Records sent but not acknowledged when a stream dies are sent again on the next stream; the
  controller drops the duplicates (at-least-once on the wire, exactly-once in its store).
- Reconnects back off with tenacity's full-jitter exponential wait (capped by ``reconnect_max_s``); a
  stream that made progress (an ack) resets the backoff. A stream whose in-flight window stays full with
  no ack for ``ack_timeout_s`` is abandoned and reopened (a blackholed link).
- An ack may say the controller acknowledged some windows without storing them (``refused_windows``: their
  bundle is not one it knows the device has). They are gone all the same (the ack covers them); the
  uploader logs it once per batch (``telemetry.windows_refused_by_controller``) and counts them in
  ``windows_refused``, which the device reports in ``details.telemetry_windows_refused``.
- A stream the controller refuses (UNAUTHENTICATED: credential rotated or device deleted; PERMISSION_DENIED:
  disabled) is not a link failure: one ``agent.credential_rejected`` / ``agent.device_disabled`` line per kind
  (``refusals``), the next stream only after ``unauth_backoff_s`` / ``refused_backoff_s``, and the buffer kept
  whole (nothing was acknowledged, nothing is dropped for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from edge_runtime.agent.refusals import DETAILS_CHARS, Refusal, RefusalLog, refusal
from edge_runtime.agent.retry import Backoff, transient_retry
from edge_runtime.telemetry.buffer import TelemetryBuffer
from edge_runtime.telemetry.records import BufferedRecord
from edgefleet.contract.request_bounds import MAX_BATCH_RECORDS, MAX_TELEMETRY_BATCH_BYTES
from edgefleet.contract.shown import shown
from edgefleet.v1.telemetry_pb2 import SeqRange, TelemetryAck, TelemetryBatch, TelemetryRecord

log = structlog.get_logger(__name__)

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class UploadSettings:
    batch_max_records: int = 500
    batch_max_bytes: int = 1 << 20
    batch_max_delay_s: float = 1.0
    max_in_flight: int = 4
    backlog_rate_per_s: float = 5.0
    reconnect_max_s: float = 30.0
    ack_timeout_s: float = 30.0

    @classmethod
    def from_config(cls, telemetry: Mapping[str, Any] | None) -> UploadSettings:
        """Settings from the effective config's ``telemetry`` section (absent keys keep the defaults). Batch
        bounds are clamped to what the controller accepts in one request (the schema's maxima), so no config
        can make the device send a batch the controller refuses forever."""
        t = dict(telemetry or {})
        d = cls()
        return cls(
            batch_max_records=min(int(t.get("batch_max_records") or d.batch_max_records), MAX_BATCH_RECORDS),
            batch_max_bytes=min(int(t.get("batch_max_bytes") or d.batch_max_bytes), MAX_TELEMETRY_BATCH_BYTES),
            batch_max_delay_s=float(t.get("batch_max_delay_s") or d.batch_max_delay_s),
            max_in_flight=int(t.get("max_in_flight") or d.max_in_flight),
            backlog_rate_per_s=float(t.get("backlog_rate_per_s") or d.backlog_rate_per_s),
        )


RECONNECT_MULTIPLIER = 0.2  # reconnect waits start at 0.2 s and double (capped by reconnect_max_s)


class _StreamEnded(Exception):
    """The stream failed; ``progressed`` when at least one ack came back on it."""

    def __init__(self, cause: BaseException, progressed: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.progressed = progressed


class _Refused(Exception):
    """The controller refused this device's stream (``refusals``): not retried like a broken link."""

    def __init__(self, refused: Refusal) -> None:
        super().__init__(refused.code.name)
        self.refused = refused


def described(exc: BaseException) -> str:
    """A failure for a log line: a gRPC error as its code and message (``shown``), never its repr."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {shown(exc.details() or '', DETAILS_CHARS)}"
    return shown(str(exc) or type(exc).__name__, DETAILS_CHARS)


def _stream_ended(exc: BaseException) -> bool:
    return isinstance(exc, _StreamEnded)


def declared_gaps(held: list[int], acked: int, upto: int) -> list[tuple[int, int]]:
    """Seqs in ``(acked, upto]`` the buffer no longer holds: the policy dropped them (only acks and drops
    delete, and acks are contiguous). ``held`` ascending."""
    gaps: list[tuple[int, int]] = []
    expect = acked + 1
    for seq in held:
        if seq <= acked:
            continue
        if seq > upto:
            break
        if seq > expect:
            gaps.append((expect, seq - 1))
        expect = seq + 1
    if expect <= upto:
        gaps.append((expect, upto))
    return gaps


def _check_reader(reader: asyncio.Task[None]) -> None:
    """Raise ``ConnectionError`` once the ack reader has stopped, however it stopped.

    gRPC may end a reset call's ``read()`` with ``CancelledError``; left alone, that BaseException would
    escape the retry loop and silently end the uploader."""
    if not reader.done():
        return
    if reader.cancelled():
        raise ConnectionError("telemetry ack reader was cancelled (stream reset)")
    exc = reader.exception()
    raise ConnectionError(f"telemetry ack stream ended: {described(exc) if exc else 'unknown'}") from exc


async def _ended(call: Any, exc: BaseException, progressed: bool) -> Exception:
    """Why a stream ended: ``_Refused`` when the call's own status refuses this device (whichever side saw the
    end first: the ack reader, or a write answered only "Internal error from Core"), else ``_StreamEnded``."""
    if call.done():
        refused = refusal(await call.code(), await call.details())
        if refused is not None:
            return _Refused(refused)
    return _StreamEnded(exc, progressed)


@dataclass(eq=False, repr=False)
class TelemetryUploader:
    """Drains ``buffer`` to the controller until cancelled. ``notify()`` (any thread) says records were
    appended. ``stub()`` returns an asyncio ``DeviceServiceStub`` (typed ``Any``: the generated stubs are
    typed for the synchronous API)."""

    buffer: TelemetryBuffer
    stub: Callable[[], Any]
    metadata: Callable[[], Metadata]
    settings: Callable[[], UploadSettings] = UploadSettings
    #: Waits before the next stream after the controller refused this device (as the Sync loop's).
    unauth_backoff_s: float = 300.0
    refused_backoff_s: float = 60.0
    streams: int = field(default=0, init=False)
    batches_sent: int = field(default=0, init=False)
    acks: int = field(default=0, init=False)
    bytes_sent: int = field(default=0, init=False)
    #: Windows the controller acknowledged but did not store (``TelemetryAck.refused_windows``), since start.
    windows_refused: int = field(default=0, init=False)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _next_backlog_slot: float = field(default=0.0, init=False)
    _refusals: RefusalLog = field(init=False)

    def __post_init__(self) -> None:
        self._refusals = RefusalLog("UploadTelemetry", self.unauth_backoff_s, self.refused_backoff_s)

    def notify(self) -> None:
        loop = self._loop
        if loop is None:
            return
        # The loop may have closed while a frame thread appended; then there is nothing left to wake.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wakeup.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            settings = self.settings()
            backoff = Backoff(multiplier=RECONNECT_MULTIPLIER, max_s=settings.reconnect_max_s)
            try:
                async for attempt in transient_retry(retry_on=_stream_ended, backoff=backoff):
                    with attempt:
                        try:
                            await self._stream_once()
                        except _StreamEnded as ended:
                            log.info(
                                "telemetry.upload_stream_ended",
                                error=described(ended.cause),
                                progressed=ended.progressed,
                            )
                            if not ended.progressed:
                                raise
                            self._refusals.clear()
            except _Refused as refused:
                await asyncio.sleep(self._refusals.note(refused.refused))
                continue
            # A stream that made progress reconnects at once (plus jitter), with a fresh backoff.
            await asyncio.sleep(random.uniform(0.0, 0.2))

    # ------------------------------------------------------------------ one stream

    async def _stream_once(self) -> None:
        settings = self.settings()
        self.streams += 1
        call = self.stub().UploadTelemetry(metadata=self.metadata(), compression=grpc.Compression.Gzip)
        in_flight: deque[int] = deque()
        slots = asyncio.Semaphore(settings.max_in_flight)
        progressed = [False]
        last_ack = [time.monotonic()]

        async def read_acks() -> None:
            while True:
                ack = await call.read()
                if ack is grpc.aio.EOF:
                    raise ConnectionError("controller closed the telemetry stream")
                if in_flight:
                    in_flight.popleft()
                    slots.release()
                await asyncio.to_thread(self.buffer.ack, ack.epoch, ack.acked_through)
                if ack.refused_windows:
                    self._refused(ack)
                self.acks += 1
                progressed[0] = True
                last_ack[0] = time.monotonic()

        reader = asyncio.create_task(read_acks(), name="telemetry-acks")
        try:
            sent: set[int] = set()
            declared_through = [0]
            first = True
            while True:
                await self._acquire(slots, reader, last_ack, settings)
                batch = await asyncio.to_thread(self._next_batch, sent, declared_through, first, settings)
                if batch is None:
                    slots.release()
                    await self._wait_for_records(reader)
                    await self._coalesce(reader, settings)
                    continue
                first = False
                if len(batch.records) >= settings.batch_max_records:
                    await self._pace_backlog(settings)
                in_flight.append(batch.last_seq)
                await call.write(batch)
                self.batches_sent += 1
                self.bytes_sent += batch.ByteSize()
                _check_reader(reader)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the uploader itself is being stopped
            # gRPC cancelled the call under us (a reset): a stream failure like any other
            raise await _ended(call, exc, progressed[0]) from exc
        except Exception as exc:  # whatever broke the stream, the buffer still holds every unacked record
            raise await _ended(call, exc, progressed[0]) from exc
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            call.cancel()

    def _refused(self, ack: TelemetryAck) -> None:
        self.windows_refused += ack.refused_windows
        log.warning(
            "telemetry.windows_refused_by_controller",
            refused=ack.refused_windows,
            total=self.windows_refused,
            epoch=shown(ack.epoch),
            acked_through=ack.acked_through,
            reason=shown(ack.refused_reason),
        )

    async def _acquire(
        self, slots: asyncio.Semaphore, reader: asyncio.Task[None], last_ack: list[float], settings: UploadSettings
    ) -> None:
        while True:
            _check_reader(reader)
            try:
                await asyncio.wait_for(slots.acquire(), timeout=1.0)
                return
            except TimeoutError as exc:
                if time.monotonic() - last_ack[0] > settings.ack_timeout_s:
                    raise ConnectionError(
                        f"no telemetry ack for {settings.ack_timeout_s:g} s with batches in flight"
                    ) from exc

    async def _wait_for_records(self, reader: asyncio.Task[None]) -> None:
        self._wakeup.clear()
        waiter = asyncio.create_task(self._wakeup.wait())
        try:
            done, _ = await asyncio.wait({waiter, reader}, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if reader in done:
            _check_reader(reader)

    async def _coalesce(self, reader: asyncio.Task[None], settings: UploadSettings) -> None:
        # Live records wait a little so a window, its events and samples share one batch.
        await asyncio.wait({reader}, timeout=min(settings.batch_max_delay_s, 5.0))
        _check_reader(reader)

    async def _pace_backlog(self, settings: UploadSettings) -> None:
        interval = 1.0 / settings.backlog_rate_per_s
        now = time.monotonic()
        slot = max(now, self._next_backlog_slot)
        self._next_backlog_slot = slot + interval
        if slot > now:
            await asyncio.sleep(slot - now)

    def _next_batch(
        self, sent: set[int], declared_through: list[int], first: bool, settings: UploadSettings
    ) -> TelemetryBatch | None:
        buffer = self.buffer
        if first:
            peeked = buffer.peek_batch(settings.batch_max_records, settings.batch_max_bytes, events_first=True)
            if peeked.empty:
                return None
            sent.update(r.seq for r in peeked.records)
            declared_through[0] = max(declared_through[0], peeked.last_seq)
            return peeked.to_proto()
        # next_seq first: a record appended after it is simply not covered, whereas reading it after
        # ``seqs()`` would declare a record appended in between as dropped.
        tail = buffer.next_seq - 1
        held = [s for s in buffer.seqs() if s <= tail]
        acked = buffer.acked_through
        todo = [s for s in held if s > acked and s not in sent][: settings.batch_max_records]
        chosen: list[BufferedRecord] = []
        budget = settings.batch_max_bytes
        for record in buffer.records(todo):
            if chosen and len(record.payload) > budget:
                break
            chosen.append(record)
            budget -= len(record.payload)
        more_after = bool(chosen) and any(s > chosen[-1].seq for s in held)
        upto = chosen[-1].seq if chosen and more_after else tail
        gaps = [g for g in declared_gaps(held, acked, upto) if g[1] > declared_through[0]] if upto > acked else []
        if not chosen and not gaps:
            return None
        records = [TelemetryRecord.FromString(r.payload) for r in chosen]
        seqs = [r.seq for r in chosen]
        first_seq = min([*seqs, *(g[0] for g in gaps)])
        last_seq = max([*seqs, *(g[1] for g in gaps)])
        sent.update(seqs)
        declared_through[0] = max(declared_through[0], max((g[1] for g in gaps), default=0))
        return TelemetryBatch(
            epoch=buffer.epoch,
            first_seq=first_seq,
            last_seq=last_seq,
            records=records,
            dropped=[SeqRange(first=a, last=b) for a, b in gaps],
        )
