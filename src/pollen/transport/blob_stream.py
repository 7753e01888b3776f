"""Blobs over gRPC: split into chunks on send, assembled with one copy on receive."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sequence

import grpc

from pollen.errors import BlobError
from pollen.proto import common_pb2 as pb
from pollen.records.arrays import ArrayBytes, Buffer
from pollen.records.content_address import is_content_digest, new_hasher
from pollen.records.messages import BlobRef
from pollen.transport.chunk_codec import Chunk, as_is, decode_chunk, encode_chunk
from pollen.transport.retry_policy import DOWNLOAD_RESUMES, classify
from pollen.transport.transfer_progress import Tracked, TransferProgress

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
"""Bytes per chunk; DESIGN.md measured 1 MiB chunks near wire speed over TLS."""


def encode_chunks(
    pieces: Iterable[Buffer | Sequence[memoryview]],
    ref: BlobRef,
    offset: int = 0,
    node_id: int = 0,
    run_id: int = 0,
) -> Iterator[bytes]:
    """`BlobChunk` messages of successive ``pieces`` of a blob from ``offset``; the
    first names the digest, total size and run, and a blob with nothing left to
    send from ``offset`` still gets that one (empty) chunk."""
    first = True
    position = offset
    for data in pieces:
        yield encode_chunk(
            data,
            offset=position,
            digest=ref.digest if first else "",
            total_size=ref.size if first else 0,
            node_id=node_id if first else 0,
            run_id=run_id if first else 0,
        )
        first = False
        position += len(data) if isinstance(data, Buffer) else sum(len(p) for p in data)
    if first:
        yield encode_chunk(
            b"",
            offset=position,
            digest=ref.digest,
            total_size=ref.size,
            node_id=node_id,
            run_id=run_id,
        )


def iter_chunks(
    buffer: Buffer | ArrayBytes,
    ref: BlobRef,
    node_id: int = 0,
    offset: int = 0,
    run_id: int = 0,
    tracked: Tracked | None = None,
) -> Iterator[bytes]:
    """Encoded `BlobChunk` messages of ``buffer`` from ``offset`` (see `encode_chunks`).
    Each byte is copied once, into its message; ``tracked`` learns how far it got.

    An upload may leave ``ref.digest`` empty: the SuperLink then names the blob by
    its content and says so in its reply.
    """
    pieces: Callable[[int, int], list[memoryview]]
    if isinstance(buffer, ArrayBytes):
        size, pieces = len(buffer), buffer.slice
    else:
        view = memoryview(buffer).cast("B")
        size = len(view)

        def pieces(start: int, end: int) -> list[memoryview]:
            return [view[start:end]]

    def slices() -> Iterator[list[memoryview]]:
        for at in range(offset, size, CHUNK_SIZE):
            if tracked is not None:
                tracked.advanced(at)
            yield pieces(at, min(at + CHUNK_SIZE, size))

    return encode_chunks(slices(), ref, offset, node_id, run_id)


def upload_call(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.StreamUnaryMultiCallable[bytes, pb.BlobRef]:
    """An UploadBlob call that sends `iter_chunks` as they are (no protobuf copy)."""
    return channel.stream_unary(
        method, request_serializer=as_is, response_deserializer=pb.BlobRef.FromString
    )


def download_call(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryStreamMultiCallable[pb.DownloadBlobRequest, Chunk]:
    """A DownloadBlob call whose chunks' data are views of what arrived (no protobuf copy)."""
    return channel.unary_stream(
        method,
        request_serializer=pb.DownloadBlobRequest.SerializeToString,
        response_deserializer=decode_chunk,
    )


def stored_ref(reply: pb.BlobRef, sent: BlobRef) -> BlobRef:
    """What the SuperLink stored an upload as; a digest other than the one sent is refused."""
    if reply.size != sent.size or not is_content_digest(reply.digest):
        raise BlobError(
            f"the SuperLink answered an upload of {sent.size} bytes with "
            f"{reply.digest[:12]!r} of {reply.size} bytes; upload it again"
        )
    if sent.digest and reply.digest != sent.digest:
        raise BlobError(f"the SuperLink stored blob {sent.digest[:12]} as {reply.digest[:12]}")
    return BlobRef(reply.digest, reply.size)


OpenStream = Callable[[int], AsyncIterable[Chunk]]
"""Opens a download of a blob from a byte offset."""

HASH_BATCH = 8 * CHUNK_SIZE
"""Bytes hashed per hand-off to a worker thread: one hand-off per chunk cost more
in thread switches than the overlap won on two cores."""


class _Assembly:
    """A blob being received into one preallocated buffer, hashed as it arrives.

    The digest is computed in a worker thread (the hasher releases the GIL) over
    batches of received bytes, while the event loop receives the next chunks.
    """

    def __init__(self, ref: BlobRef, out: bytearray | None) -> None:
        self.ref = ref
        self._reuse = out if out is not None and len(out) == ref.size else None
        self._out: bytearray | None = None
        self.position = 0
        self._hashed = 0
        self._hasher = new_hasher()
        self._pending: asyncio.Future[None] | None = None

    async def settle(self) -> None:
        if self._pending is not None:
            await self._pending
            self._pending = None

    @property
    def out(self) -> bytearray:
        if self._out is None:  # nothing arrived: only an empty blob can be complete
            self._out = self._reuse if self._reuse is not None else bytearray(0)
        return self._out

    def _allocate(self, chunk: Chunk) -> None:
        """The buffer, once the sender has confirmed the size: a size declared by
        someone else (a node's result) is never allocated on trust."""
        if chunk.total_size != self.ref.size or (chunk.digest and chunk.digest != self.ref.digest):
            raise BlobError(
                f"blob {self.ref.digest[:12]} was declared as {self.ref.size} bytes, but the "
                f"SuperLink stores {chunk.total_size} bytes under {chunk.digest[:12] or '?'}"
            )
        self._out = self._reuse if self._reuse is not None else bytearray(self.ref.size)

    async def feed(self, chunk: Chunk) -> None:
        if self._out is None:
            self._allocate(chunk)
        end = self.position + len(chunk.data)
        if chunk.offset != self.position or end > self.ref.size:
            raise BlobError(
                f"blob {self.ref.digest[:12]}: chunk at offset {chunk.offset} does not fit "
                f"(expected offset {self.position}, size {self.ref.size})"
            )
        self.out[self.position : end] = chunk.data
        self.position = end
        if self.position - self._hashed >= HASH_BATCH:
            await self._hash_received()

    async def _hash_received(self) -> None:
        await self.settle()
        batch = memoryview(self.out)[self._hashed : self.position]
        self._hashed = self.position
        loop = asyncio.get_running_loop()
        self._pending = loop.run_in_executor(None, self._hash, batch)

    def _hash(self, batch: memoryview) -> None:
        self._hasher.update(batch)

    async def finish(self) -> bytearray:
        await self._hash_received()
        await self.settle()
        if self.position != self.ref.size or self._hasher.hexdigest() != self.ref.digest:
            raise BlobError(
                f"blob {self.ref.digest[:12]}: received {self.position} of {self.ref.size} "
                "bytes or content does not match its digest; the transfer was cut or corrupted"
            )
        return self.out


async def download_blob(
    open_stream: OpenStream,
    ref: BlobRef,
    out: bytearray | None = None,
    attempts: int = DOWNLOAD_RESUMES,
    progress: TransferProgress | None = None,
) -> bytearray:
    """Download ``ref`` into one buffer (``out`` is reused when its size fits); a large
    one is reported to ``progress`` (`transfer_progress`).

    A stream cut mid-way or by a SuperLink that went away is resumed from the last
    byte received, up to ``attempts`` times (`retry_policy`); the digest is checked
    over the whole blob at the end, so a resumed download is verified like any other.
    Gives up with the stream's `grpc.aio.AioRpcError`: its client decides what next.
    """
    assembly = _Assembly(ref, out)
    tracked = Tracked(progress, f"download of blob {ref.digest[:12]}", ref.size)
    try:
        return await _receive(open_stream, ref, assembly, attempts, tracked)
    finally:
        tracked.ended()


async def _receive(
    open_stream: OpenStream, ref: BlobRef, assembly: _Assembly, attempts: int, tracked: Tracked
) -> bytearray:
    for attempt in range(1, attempts + 1):
        try:
            async for chunk in open_stream(assembly.position):
                await assembly.feed(chunk)
                tracked.advanced(assembly.position)
            break
        except grpc.aio.AioRpcError as exc:
            await assembly.settle()
            if classify(exc) not in ("away", "cut") or attempt == attempts:
                raise
            logger.warning(
                "download of blob %s cut at byte %d of %d (%s); resuming",
                ref.digest[:12],
                assembly.position,
                ref.size,
                exc.code().name.lower(),
            )
    return await assembly.finish()
