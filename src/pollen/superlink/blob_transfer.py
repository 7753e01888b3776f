"""Blob upload and download handlers shared by the Fleet and Driver services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import grpc

from pollen.errors import BlobError
from pollen.proto import common_pb2 as pb
from pollen.records.messages import BlobRef
from pollen.superlink.blobstore import BlobStore
from pollen.superlink.dispatch import Clock
from pollen.superlink.state import State
from pollen.superlink.storage_faults import as_storage_faults
from pollen.superlink.stream_limits import Transfer
from pollen.superlink.upload_bounds import format_size
from pollen.transport.blob_stream import CHUNK_SIZE, encode_chunks
from pollen.transport.chunk_codec import Chunk


async def refuse_oversized(
    size: int, store: BlobStore, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    """Abort an upload declaring more than the store's maximum, before a byte is written."""
    if size > store.max_blob_size:
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"an upload of {size} bytes ({format_size(size)}) is above this SuperLink's "
            f"--max-blob-size of {format_size(store.max_blob_size)}; its operator can raise it",
        )


async def receive_upload(
    chunks: AsyncIterable[Chunk],
    store: BlobStore,
    state: State,
    clock: Clock,
    context: grpc.aio.ServicerContext[Chunk, pb.BlobRef],
    transfer: Transfer | None = None,
) -> pb.BlobRef:
    """Write an uploaded blob to disk, verify its digest, record it once.

    A declared size above the store's maximum is refused before the file opens; a
    stream that sends more bytes than it declared is cut at the chunk that overflows.
    Each chunk is progress of ``transfer``; one cut (idle, revoked) stores nothing.
    """
    writer = None
    run_id = 0
    # Hashing and writing a chunk run in a worker thread (both release the GIL)
    # while the event loop receives the next one.
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    try:
        async for chunk in chunks:
            if transfer is not None:
                transfer.progressed()
            if writer is None:
                await refuse_oversized(chunk.total_size, store, context)
                writer = store.writer(BlobRef(chunk.digest, chunk.total_size))
                run_id = chunk.run_id
            if pending is not None:
                await pending
            pending = loop.run_in_executor(None, writer.write, chunk.offset, chunk.data)
        if pending is not None:
            await pending
        if transfer is not None:
            await transfer.end_if_cut()  # cut after its last chunk: not stored
        if writer is None:
            raise BlobError("upload carried no chunk")
        ref = writer.commit()
    except BlobError as exc:
        if writer is not None:
            writer.abort()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except BaseException:
        if pending is not None:
            await asyncio.wait([pending])
        if writer is not None:
            writer.abort()
        raise
    state.add_blob(ref.digest, ref.size, clock())
    run = state.get_run(run_id) if run_id else None
    if run is not None and run.status == "running":
        # held from upload on, so that no other run's release deletes it before use
        state.hold_blobs(run_id, [ref.digest])
    return pb.BlobRef(digest=ref.digest, size=ref.size)


async def send_download(
    request: pb.DownloadBlobRequest,
    store: BlobStore,
    context: grpc.aio.ServicerContext[pb.DownloadBlobRequest, bytes],
    transfer: Transfer | None = None,
) -> AsyncIterator[bytes]:
    """Stream a stored blob from ``request.offset`` in encoded chunks read from disk.

    One chunk is read when gRPC has taken the previous one, so a receiver that reads
    nothing holds about one chunk here (read, encoded, in gRPC) besides what its
    flow-control window lets through. A cut ``transfer`` closes the file at once.
    """
    try:
        size = store.size(request.digest)
    except BlobError as exc:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    if request.offset > size:
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} > size {size}")
    chunks = store.read_chunks(request.digest, request.offset, CHUNK_SIZE)
    if transfer is not None:
        transfer.on_cut(chunks.close)
    try:
        with as_storage_faults(store.root):  # no descriptor left: a named fault
            for message in encode_chunks(chunks, BlobRef(request.digest, size), request.offset):
                yield message
                if transfer is not None:
                    transfer.progressed()
                    await transfer.end_if_cut()
        if transfer is not None:
            await transfer.end_if_cut()  # its file was closed under it: not a whole blob
    finally:
        chunks.close()
