"""The test fault proxy itself: forwards, resets after a byte budget, blackholes."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from edgefleet_testing.faultproxy import FaultProxy
from edgefleet_testing.waiting import wait_until


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _QuietServer(socketserver.ThreadingTCPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # resets are the point of these tests


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = _QuietServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _roundtrip(port: int, payload: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_forwards_and_counts(echo_port: int) -> None:
    with FaultProxy(echo_port) as proxy:
        assert _roundtrip(proxy.port, b"x" * 100_000) == b"x" * 100_000
        assert proxy.stats.bytes_up == 100_000 and proxy.stats.bytes_down == 100_000


def test_reset_after_budget(echo_port: int) -> None:
    with FaultProxy(echo_port) as proxy:
        proxy.reset_every_bytes = 10_000
        with pytest.raises((ConnectionError, OSError)):
            got = _roundtrip(proxy.port, b"y" * 50_000)
            if len(got) < 50_000:
                raise ConnectionResetError(f"short read {len(got)}")
        assert proxy.stats.resets == 1


def test_blackhole_times_out(echo_port: int) -> None:
    with FaultProxy(echo_port) as proxy:
        proxy.blackhole = True
        with pytest.raises(TimeoutError):
            _roundtrip(proxy.port, b"z" * 10, timeout=0.5)


def test_scheduled_blackholes_open_and_close_on_time_and_count(echo_port: int) -> None:
    with FaultProxy(echo_port) as proxy:
        started = time.monotonic()
        proxy.blackhole_every(2.0, 0.6, first_in_s=0.6)  # windows [0.6, 1.2), [2.6, 3.2), ...
        assert _roundtrip(proxy.port, b"a" * 1000) == b"a" * 1000  # before the first window
        wait_until(lambda: proxy.blackholed, 2, "the first window to open", interval=0.01)
        with pytest.raises(TimeoutError):
            _roundtrip(proxy.port, b"b" * 10, timeout=0.15)
        wait_until(lambda: not proxy.blackholed, 2, "the first window to close", interval=0.01)
        assert _roundtrip(proxy.port, b"c" * 1000) == b"c" * 1000
        assert proxy.stats.blackholes == 1
        assert proxy.stats.bytes_blackholed == 10
        assert proxy.stats.bytes_up == proxy.stats.bytes_down == 2000, "swallowed bytes are not forwarded bytes"
        proxy.blackhole_every(0, 0)
        time.sleep(max(0.0, started + 3.0 - time.monotonic()))  # inside where the second window would be
        assert not proxy.blackholed and proxy.stats.blackholes == 1
    with FaultProxy(echo_port) as proxy, pytest.raises(ValueError, match="for_s must be in"):
        proxy.blackhole_every(5, 5)
