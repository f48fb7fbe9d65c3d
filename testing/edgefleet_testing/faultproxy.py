"""A fault-injecting TCP proxy for tests: latency, bandwidth cap, resets and blackholes, on loopback.

The kernel here has no ``tc netem``, so bad links are emulated in user space. The proxy runs its own
asyncio loop in a daemon thread, so synchronous and asynchronous tests drive it alike::

    with FaultProxy(target_port) as proxy:
        proxy.latency_s = 0.05            # added to every forwarded chunk, both directions
        proxy.bandwidth_bytes_per_s = 250_000  # bytes (not bits) per second, per direction and connection
        proxy.reset_every_bytes = 3 << 20 # reset each connection after this many downstream bytes
        proxy.reset_all()                 # reset every open connection now
        proxy.blackhole = True            # accept, then silently drop everything (a dead link)
        proxy.blackhole_every(20, 5)      # a dead link for 5 s out of every 20 s, from now on
        proxy.refuse = True               # close new connections at once (host down)

Every loop is bounded by the connections' lifetime; ``close()`` (or leaving the ``with``) stops it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass


@dataclass
class ProxyStats:
    """Exact counts: bytes are counted when forwarded (a reset's last partial write included); bytes
    swallowed by a blackhole are ``bytes_blackholed``, never ``bytes_up``/``bytes_down``."""

    connections: int = 0
    resets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_blackholed: int = 0
    blackholes: int = 0  # scheduled blackhole windows opened


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.latency_s = 0.0
        self.bandwidth_bytes_per_s = 0.0  # 0 = unlimited
        self.reset_every_bytes = 0  # 0 = never
        self.blackhole = False
        self.refuse = False
        self.stats = ProxyStats()
        self._scheduled_blackhole = False
        self._schedule: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._listen_host = listen_host
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start within 10 s")

    # ----------------------------------------------------------------- control

    @property
    def address(self) -> str:
        return f"{self._listen_host}:{self.port}"

    def reset_all(self) -> None:
        """Reset (RST) every open connection now."""
        self._loop.call_soon_threadsafe(self._reset_all)

    @property
    def blackholed(self) -> bool:
        """Whether the link drops everything now (``blackhole`` or a scheduled window)."""
        return self.blackhole or self._scheduled_blackhole

    def blackhole_every(self, every_s: float, for_s: float, *, first_in_s: float | None = None) -> None:
        """From now on, blackhole the link for ``for_s`` out of every ``every_s`` seconds; the first window
        opens after ``first_in_s`` (default ``every_s - for_s``). ``every_s`` 0 stops the schedule."""
        if every_s and not 0 < for_s < every_s:
            raise ValueError(f"blackhole_every: for_s must be in (0, every_s={every_s}), got {for_s}")
        first = every_s - for_s if first_in_s is None else first_in_s

        async def schedule() -> None:
            await asyncio.sleep(first)
            while True:
                self._scheduled_blackhole = True
                self.stats.blackholes += 1
                await asyncio.sleep(for_s)
                self._scheduled_blackhole = False
                await asyncio.sleep(every_s - for_s)

        def restart() -> None:
            if self._schedule is not None:
                self._schedule.cancel()
                self._schedule = None
            self._scheduled_blackhole = False
            if every_s:
                self._schedule = self._loop.create_task(schedule())

        self._loop.call_soon_threadsafe(restart)

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            if self._schedule is not None:
                self._schedule.cancel()
            if self._server is not None:
                self._server.close()
            self._reset_all()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- internals

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, self._listen_host, 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()
        self._loop.close()

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            self._reset(writer)

    def _reset(self, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                # SO_LINGER 0 makes close() send RST, as a flaky NAT or modem does.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        self._writers.discard(writer)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.refuse:
            self._reset(client_w)
            return
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.target)
        except OSError:
            self._reset(client_w)
            return
        self._writers.update((client_w, upstream_w))
        pair = (client_w, upstream_w)
        down_budget = [self.reset_every_bytes]
        up = asyncio.create_task(self._pump(client_r, upstream_w, pair, upstream=True, budget=None))
        down = asyncio.create_task(self._pump(upstream_r, client_w, pair, upstream=False, budget=down_budget))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for w in pair:
            if w in self._writers:
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        upstream: bool,
        budget: list[int] | None,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            while True:
                data = await reader.read(16 * 1024)
                if not data:
                    return
                if self.blackholed:
                    self.stats.bytes_blackholed += len(data)
                    continue  # swallowed: the peer sees a live socket that never answers
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                if self.bandwidth_bytes_per_s:
                    await asyncio.sleep(len(data) / self.bandwidth_bytes_per_s)
                if budget is not None and budget[0]:
                    if len(data) >= budget[0]:
                        self.stats.bytes_down += budget[0]
                        writer.write(data[: budget[0]])
                        with contextlib.suppress(Exception):
                            await writer.drain()
                        self.stats.resets += 1
                        for w in pair:
                            self._reset(w)
                        return
                    budget[0] -= len(data)
                # counted before the write: a peer that has the bytes must also see them counted
                if upstream:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
