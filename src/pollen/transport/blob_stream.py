"""Blobs over gRPC: split into chunks on send, assembled with one copy on receive."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, Iterator

from pollen.errors import BlobError
from pollen.proto import common_pb2 as pb
from pollen.records.arrays import Buffer
from pollen.records.messages import BlobRef

CHUNK_SIZE = 1024 * 1024
"""Bytes per chunk; DESIGN.md measured 1 MiB chunks near wire speed over TLS."""


def iter_chunks(
    buffer: Buffer, ref: BlobRef, node_id: int = 0, offset: int = 0, run_id: int = 0
) -> Iterator[pb.BlobChunk]:
    """Chunks of ``buffer`` from ``offset``; the first names the digest, total size and run."""
    view = memoryview(buffer)
    first = True
    position = offset
    while first or position < len(view):
        data = bytes(view[position : position + CHUNK_SIZE])
        yield pb.BlobChunk(
            digest=ref.digest if first else "",
            total_size=ref.size if first else 0,
            offset=position,
            data=data,
            node_id=node_id if first else 0,
            run_id=run_id if first else 0,
        )
        first = False
        position += len(data)


async def receive_blob(
    chunks: AsyncIterable[pb.BlobChunk], ref: BlobRef, out: bytearray | None = None
) -> bytearray:
    """Assemble a downloaded blob into one preallocated buffer and check its digest.

    ``out``, when its size is the blob's, is reused instead of allocating (fresh
    memory costs page faults that show at hundreds of megabytes).
    """
    if out is None or len(out) != ref.size:
        out = bytearray(ref.size)
    hasher = hashlib.sha256()
    position = 0
    # The digest is computed in a worker thread (hashlib releases the GIL)
    # while the event loop receives the next chunk.
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    async for chunk in chunks:
        end = position + len(chunk.data)
        if chunk.offset != position or end > ref.size:
            if pending is not None:
                await pending
            raise BlobError(
                f"blob {ref.digest[:12]}: chunk at offset {chunk.offset} does not fit "
                f"(expected offset {position}, size {ref.size})"
            )
        out[position:end] = chunk.data
        if pending is not None:
            await pending
        pending = loop.run_in_executor(None, hasher.update, chunk.data)
        position = end
    if pending is not None:
        await pending
    if position != ref.size or hasher.hexdigest() != ref.digest:
        raise BlobError(
            f"blob {ref.digest[:12]}: received {position} of {ref.size} bytes "
            "or content does not match its digest; the transfer was cut or corrupted"
        )
    return out
