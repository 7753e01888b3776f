"""Blobs in chunks: split and reassembled exactly, verified, resumed after a cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from pollen.errors import BlobError
from pollen.proto import common_pb2 as pb
from pollen.records.arrays import ArrayBytes, decode_arrays, encode_arrays
from pollen.records.content_address import content_digest
from pollen.records.messages import BlobRef
from pollen.transport import blob_stream
from pollen.transport.blob_stream import download_blob, iter_chunks, stored_ref
from pollen.transport.chunk_codec import Chunk, decode_chunk


def model() -> tuple[bytearray, BlobRef]:
    arrays = [
        np.arange(blob_stream.CHUNK_SIZE // 2, dtype=np.float64),  # several chunks, partial last
        np.array([True, False]),
        np.array(3, dtype=np.int8),
        np.zeros((0, 4), np.float16),
    ]
    buffer = encode_arrays(arrays)
    return buffer, BlobRef(content_digest(buffer), len(buffer))


class Cut(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "cut"
        )


def server(buffer: bytearray, ref: BlobRef, cut_after: list[int]) -> blob_stream.OpenStream:
    """Serves ``buffer`` from any offset; the n-th stream breaks after ``cut_after[n]`` chunks."""
    opened: list[int] = []

    async def stream(offset: int) -> AsyncIterator[Chunk]:
        opened.append(offset)
        limit = cut_after[len(opened) - 1] if len(opened) <= len(cut_after) else None
        for index, chunk in enumerate(iter_chunks(buffer, ref, offset=offset)):
            if limit is not None and index == limit:
                raise Cut()
            yield decode_chunk(chunk)

    stream.opened = opened  # type: ignore[attr-defined]
    return stream


def test_a_multi_chunk_model_with_a_partial_last_chunk_arrives_intact() -> None:
    buffer, ref = model()
    assert len(buffer) % blob_stream.CHUNK_SIZE != 0
    assert len(list(iter_chunks(buffer, ref))) > 2
    received = asyncio.run(download_blob(server(buffer, ref, []), ref))
    assert received == buffer
    arrays = decode_arrays(received)
    np.testing.assert_array_equal(arrays[0], np.arange(blob_stream.CHUNK_SIZE // 2))
    assert arrays[2].shape == () and arrays[3].shape == (0, 4)


def test_a_download_cut_mid_stream_resumes_where_it_stopped() -> None:
    buffer, ref = model()
    open_stream = server(buffer, ref, cut_after=[2, 1])
    received = asyncio.run(download_blob(open_stream, ref))
    assert received == buffer
    chunk = blob_stream.CHUNK_SIZE
    assert open_stream.opened == [0, 2 * chunk, 3 * chunk]  # type: ignore[attr-defined]


def test_a_download_cut_too_often_gives_up_with_the_transport_error() -> None:
    buffer, ref = model()
    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(download_blob(server(buffer, ref, cut_after=[1, 1, 1]), ref))


def test_bytes_that_do_not_match_the_digest_are_refused() -> None:
    buffer, ref = model()
    tampered = bytearray(buffer)
    tampered[-1] ^= 0xFF
    with pytest.raises(BlobError, match="does not match its digest"):
        asyncio.run(download_blob(server(tampered, ref, []), ref))


def test_a_stream_that_ends_early_is_refused() -> None:
    buffer, ref = model()
    short = BlobRef(ref.digest, ref.size)

    async def stream(offset: int) -> AsyncIterator[Chunk]:
        for index, chunk in enumerate(iter_chunks(buffer, ref, offset=offset)):
            if index == 1:
                return
            yield decode_chunk(chunk)

    with pytest.raises(BlobError, match="received"):
        asyncio.run(download_blob(stream, short))


def test_a_declared_size_is_never_allocated_before_the_sender_confirms_it() -> None:
    # a node's result declaring 2**50 bytes for a small stored blob: allocating the
    # declared size first ended the ServerApp with MemoryError
    buffer, ref = model()
    poisoned = BlobRef(ref.digest, 2**50)

    with pytest.raises(BlobError, match=rf"declared as {2**50} bytes.*stores {len(buffer)}"):
        asyncio.run(download_blob(server(buffer, ref, []), poisoned))


def test_an_upload_reply_that_names_other_bytes_is_refused() -> None:
    digest = "a" * 64
    assert stored_ref(pb.BlobRef(digest=digest, size=3), BlobRef("", 3)) == BlobRef(digest, 3)
    with pytest.raises(BlobError, match="stored blob"):
        stored_ref(pb.BlobRef(digest=digest, size=3), BlobRef("b" * 64, 3))
    with pytest.raises(BlobError, match="answered an upload of 3 bytes"):
        stored_ref(pb.BlobRef(digest=digest, size=4), BlobRef("", 3))


def mixed_arrays() -> list[np.ndarray]:
    big = np.arange(blob_stream.CHUNK_SIZE // 3, dtype=np.float32)  # chunk edges inside it
    return [
        np.arange(7, dtype=np.float16),
        np.array(2.5),  # scalar
        np.zeros((0, 3), np.int64),  # zero-size
        np.ones((3, 5), dtype=bool),
        np.arange(40, dtype=">i4").reshape(5, 8)[:, ::3],  # big-endian, not contiguous
        big,
        np.array([1 + 2j, 3 - 4j]),  # three small arrays share the last chunk
        np.arange(blob_stream.CHUNK_SIZE + 5, dtype=np.uint8),
        np.array([-1], dtype=np.int8),
    ]


@pytest.mark.parametrize("offset", [0, 1, blob_stream.CHUNK_SIZE - 1, blob_stream.CHUNK_SIZE * 2])
def test_arrays_sent_from_their_own_memory_arrive_as_their_flat_buffer(offset: int) -> None:
    arrays = mixed_arrays()
    expected = bytes(encode_arrays(arrays))
    blob = ArrayBytes(arrays)
    assert len(blob) == len(expected) and bytes(blob) == expected
    chunks = [decode_chunk(c) for c in iter_chunks(blob, BlobRef("", len(blob)), offset=offset)]
    assert [c.offset for c in chunks] == list(range(offset, len(expected), blob_stream.CHUNK_SIZE))
    assert b"".join(bytes(c.data) for c in chunks) == expected[offset:]
    decoded = decode_arrays(bytearray(expected))
    for sent, received in zip(arrays, decoded, strict=True):
        assert received.dtype == sent.dtype and np.array_equal(received, sent)


def test_sending_arrays_copies_their_bytes_only_into_the_messages() -> None:
    weights = np.zeros(1000, dtype=np.float32)
    blob = ArrayBytes([weights])
    weights[:] = 1.5  # the blob is a view of the arrays, not a copy laid out beforehand
    assert decode_arrays(bytearray(bytes(blob)))[0].tolist() == [1.5] * 1000
    # arrays decoded from a buffer (as a node's model is) go out as that very buffer
    buffer = encode_arrays(mixed_arrays())
    assert bytes(ArrayBytes(decode_arrays(buffer))) == bytes(buffer)
