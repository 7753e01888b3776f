"""Blob chunks written and read without protobuf's copies are protobuf's BlobChunk exactly."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from pollen.proto import common_pb2 as pb
from pollen.transport.chunk_codec import decode_chunk, encode_chunk

uint64 = st.integers(min_value=0, max_value=2**64 - 1)
fields = st.fixed_dictionaries(
    {
        "data": st.binary(max_size=300),
        "offset": uint64,
        "digest": st.text(max_size=70),
        "total_size": uint64,
        "node_id": uint64,
        "run_id": uint64,
    }
)


@given(fields)
def test_what_is_encoded_protobuf_reads_field_for_field(values: dict) -> None:
    assert pb.BlobChunk.FromString(encode_chunk(**values)) == pb.BlobChunk(**values)


@given(fields)
def test_what_protobuf_writes_is_decoded_field_for_field(values: dict) -> None:
    chunk = decode_chunk(pb.BlobChunk(**values).SerializeToString())

    assert bytes(chunk.data) == values["data"]
    assert (chunk.offset, chunk.digest, chunk.total_size, chunk.node_id, chunk.run_id) == (
        values["offset"],
        values["digest"],
        values["total_size"],
        values["node_id"],
        values["run_id"],
    )


def test_the_data_of_a_decoded_chunk_is_a_view_of_the_message_not_a_copy() -> None:
    message = encode_chunk(b"x" * 1000, offset=5)

    assert decode_chunk(message).data.obj is message


def test_unknown_fields_are_skipped_as_protobuf_does() -> None:
    unknown = bytes([7 << 3 | 0, 42, 8 << 3 | 2, 2, 1, 2, 9 << 3 | 5, 0, 0, 0, 0])

    chunk = decode_chunk(unknown + encode_chunk(b"abc", offset=3))

    assert (bytes(chunk.data), chunk.offset) == (b"abc", 3)


@pytest.mark.parametrize(
    "message",
    [
        bytes([4 << 3 | 2, 10]) + b"short",  # data runs past the end
        bytes([3 << 3 | 0]) + b"\xff" * 11,  # varint too long
        bytes([3 << 3 | 0, 0x80]),  # varint cut
        bytes([4 << 3 | 0, 5]),  # data sent as a number
        bytes([3 << 3 | 2, 1, 0]),  # offset sent as bytes
        bytes([1 << 3 | 2, 2, 0xFF, 0xFE]),  # digest not UTF-8
        bytes([4 << 3 | 3]),  # group wire type
        bytes([0 << 3 | 0, 1]),  # field number 0
    ],
)
def test_malformed_chunks_are_refused(message: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_chunk(message)


def test_a_chunk_of_many_tiny_unknown_fields_is_refused_before_it_costs_memory() -> None:
    flood = b"".join(bytes([0xF8, 0xFF, 0xFF, 0x07, index % 128]) for index in range(100_000))

    with pytest.raises(DecodeError, match="more than 64 fields"):
        decode_chunk(flood + encode_chunk(b"data", offset=0))


def test_a_field_number_beyond_protobufs_range_is_refused() -> None:
    key = (1 << 29) << 3  # field 2**29, wire type 0
    encoded = bytearray()
    while key > 0x7F:
        encoded.append((key & 0x7F) | 0x80)
        key >>= 7
    encoded.append(key)

    with pytest.raises(DecodeError, match="field number"):
        decode_chunk(bytes(encoded) + b"\x01")
