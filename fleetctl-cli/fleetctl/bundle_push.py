"""``fleetctl bundle push``: check the archive as ``bundle verify`` does, then stream it to the controller.

Everything that can be checked locally (member kinds and paths, sizes, sha256 of every artifact, a
truncated archive) is checked before the call opens, and refused with the very message ``bundle verify``
prints. The signature is the controller's to check against its trusted keys. A failure reading the archive
while streaming (it changed after the check) cancels the call — the controller stores nothing of a
cancelled push — and is reported as itself, never as grpc's ``Exception iterating requests!``.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from edgefleet.contract.bundle_archive import unpack_unverified_bundle
from edgefleet.contract.bundle_upload import BundleUpload, read_archive_for_upload
from edgefleet.contract.errors import ContractError
from edgefleet.contract.request_bounds import MAX_PUSH_CHUNK_BYTES
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc
from fleetctl.errors import fail, grpc_errors
from fleetctl.output import console, err_console
from fleetctl.settings import OPTIONS

CHUNK_BYTES = MAX_PUSH_CHUNK_BYTES  # the largest ArtifactChunk the controller accepts


def check_archive(archive: Path) -> BundleUpload:
    """Every check ``bundle verify`` makes but the signature (same code, same messages: a
    ``ContractError``), then the archive read for upload (refused when unsigned)."""
    with tempfile.TemporaryDirectory(prefix="fleetctl-push-") as tmp:
        unpack_unverified_bundle(archive, Path(tmp) / "bundle")
    return read_archive_for_upload(archive)


def send_upload(
    stub: fleet_pb2_grpc.FleetServiceStub,
    upload: BundleUpload,
    metadata: tuple[tuple[str, str], ...],
    *,
    advance: Callable[[int], None] = lambda n: None,
    timeout: float = 3600,
) -> fleet_pb2.PushBundleResponse:
    """Stream ``upload`` as one PushBundle call. An error reading the archive cancels the call (no
    half-close, so the controller stores nothing) and is raised as itself after the call ended."""
    failure: list[Exception] = []
    call_ready = threading.Event()
    calls: list[grpc.Future[fleet_pb2.PushBundleResponse]] = []

    def requests() -> Iterator[fleet_pb2.PushBundleRequest]:
        yield fleet_pb2.PushBundleRequest(
            header=fleet_pb2.BundleHeader(manifest=upload.manifest, signature=upload.signature)
        )
        try:
            for digest, chunk in upload.chunks(CHUNK_BYTES):
                advance(len(chunk))
                yield fleet_pb2.PushBundleRequest(chunk=fleet_pb2.ArtifactChunk(digest=digest, data=chunk))
        except Exception as exc:  # raised here, grpc would log it and answer UNKNOWN
            failure.append(exc)
            call_ready.wait()
            calls[0].cancel()  # ending the iterator now does not half-close a cancelled call

    call = stub.PushBundle.future(requests(), metadata=metadata, timeout=timeout)
    calls.append(call)
    call_ready.set()
    try:
        reply: fleet_pb2.PushBundleResponse = call.result()
    except (grpc.RpcError, grpc.FutureCancelledError):
        if failure:
            raise failure[0] from None
        raise
    return reply


@grpc_errors
def push(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="signed bundle archive (.efb)"),
) -> None:
    """Upload a signed bundle to the controller, with a progress bar; checked as 'bundle verify' checks
    it first. The controller stores it only when the whole stream arrived and every check passed."""
    try:
        upload = check_archive(file)
    except ContractError as exc:
        raise fail(exc) from None
    conn = OPTIONS.connection()
    with (
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err_console,
            transient=not sys.stderr.isatty(),
        ) as progress,
        conn.fleet() as stub,
    ):
        task = progress.add_task(f"push {upload.name}@{upload.version}", total=upload.total_bytes)
        try:
            reply = send_upload(stub, upload, conn.metadata, advance=lambda n: progress.advance(task, n))
        except ContractError as exc:
            progress.stop()
            raise fail(exc) from None
        except OSError as exc:
            progress.stop()
            err_console.print(f"[red]error:[/red] reading {file}: {exc}; nothing was stored", highlight=False)
            raise typer.Exit(1) from None
    b = reply.bundle
    verb = "pushed" if reply.created else "already present"
    console.print(f"{verb}: {b.name}@{b.version} {b.digest} (signed by {b.key_id})", highlight=False)
    if reply.restored_artifacts:
        restored = ", ".join(reply.restored_artifacts)
        console.print(f"restored quarantined artifacts: {restored} (stored again from this push)", highlight=False)
