"""An in-process ``DeviceService`` that serves blobs by digest (``BlobServer``), for the fetcher's tests and the
download benchmark: FetchBlob honours the requested offset and chunk size as the controller does (without its
4 KiB..4 MiB bounds), answers NOT_FOUND for an unknown digest, and can be told to claim a wrong total size. Real
gRPC on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from edgefleet.contract.digests import sha256_digest
from edgefleet.v1 import device_pb2, device_pb2_grpc

DEFAULT_CHUNK = 1 << 20


class BlobServer(device_pb2_grpc.DeviceServiceServicer):
    """``with BlobServer() as server: digest = server.add(data)``; devices fetch from ``server.port``."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.claimed_size: dict[str, int] = {}
        self.requests: list[tuple[int, int]] = []  # (offset, chunk_bytes) of every FetchBlob
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        device_pb2_grpc.add_DeviceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def add(self, data: bytes) -> str:
        digest = sha256_digest(data)
        self.blobs[digest] = data
        return digest

    def add_directory(self, blob_dir: Path) -> None:
        """Serve every ``<hex>`` file of a blob directory (``update.testing.publish_bundle``'s layout)."""
        for path in blob_dir.iterdir():
            if len(path.name) == 64:
                self.blobs["sha256:" + path.name] = path.read_bytes()

    def close(self) -> None:
        self._server.stop(None)

    def __enter__(self) -> BlobServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Only FetchBlob is served; the rest answer UNIMPLEMENTED (the generated base's behaviour).
    Enroll = device_pb2_grpc.DeviceServiceServicer.Enroll
    Sync = device_pb2_grpc.DeviceServiceServicer.Sync
    ReportEvent = device_pb2_grpc.DeviceServiceServicer.ReportEvent
    UploadTelemetry = device_pb2_grpc.DeviceServiceServicer.UploadTelemetry

    def FetchBlob(
        self, request: device_pb2.FetchBlobRequest, context: grpc.ServicerContext
    ) -> Iterator[device_pb2.BlobChunk]:
        self.requests.append((request.offset, request.chunk_bytes))
        data = self.blobs.get(request.digest)
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"artifact {request.digest} is not desired")
        assert data is not None
        total = self.claimed_size.get(request.digest, len(data))
        chunk = request.chunk_bytes or DEFAULT_CHUNK
        for offset in range(request.offset, len(data), chunk):
            yield device_pb2.BlobChunk(offset=offset, data=data[offset : offset + chunk], total_size=total)
