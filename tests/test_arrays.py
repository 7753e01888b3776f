"""The flat arrays blob: what goes in comes out, and a bad blob is a RecordError."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pollen.errors import RecordError
from pollen.records.arrays import FORMAT, decode_arrays, encode_arrays, read_specs
from pollen.records.content_address import content_digest

_LEN = struct.Struct("<Q")


def assert_same_arrays(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    """Same count, dtype, shape and bytes (bitwise, so NaN and -0.0 count too)."""
    assert len(got) == len(expected)
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.dtype == b.dtype, f"array {index}"
        assert a.shape == b.shape, f"array {index}"
        assert a.tobytes() == b.tobytes(), f"array {index}"


def make_blob(header: object, data: bytes = b"") -> bytes:
    """A blob with an arbitrary JSON header (no padding needed by the reader)."""
    text = json.dumps(header).encode()
    return _LEN.pack(len(text)) + text + data


def split_blob(blob: bytes | bytearray) -> tuple[dict[str, Any], bytes]:
    """The parsed header and the raw data section of an encoded blob."""
    start, _ = read_specs(blob)
    (header_len,) = _LEN.unpack(blob[: _LEN.size])
    header = json.loads(bytes(blob[_LEN.size : _LEN.size + header_len]))
    return header, bytes(blob[start:])


def with_header(mutate: Callable[[dict[str, Any]], None]) -> bytes:
    """A valid blob of one float32[2, 3] array whose header was changed by ``mutate``."""
    header, data = split_blob(encode_arrays([np.arange(6, dtype=np.float32).reshape(2, 3)]))
    mutate(header)
    return make_blob(header, data)


# --- round trips -------------------------------------------------------------------------


MIXED_DTYPES = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.bool_,
    np.complex64,
]


def test_round_trip_of_mixed_dtypes_keeps_values_dtypes_and_shapes() -> None:
    arrays = [(np.arange(12).reshape(3, 4) % 7).astype(dtype) for dtype in MIXED_DTYPES]
    arrays[-1] = arrays[-1] + 1j * np.arange(12, dtype=np.float32).reshape(3, 4)

    assert_same_arrays(decode_arrays(encode_arrays(arrays)), arrays)


def test_float_special_values_survive_bit_for_bit() -> None:
    arrays = [np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], dtype=np.float32)]

    assert_same_arrays(decode_arrays(encode_arrays(arrays)), arrays)


def test_big_endian_array_keeps_its_byte_order_and_values() -> None:
    array = (np.arange(5) / 3).astype(">f4")

    (decoded,) = decode_arrays(encode_arrays([array]))

    assert decoded.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(decoded, array)


def test_zero_size_arrays_round_trip_with_their_shapes() -> None:
    arrays = [
        np.zeros((0,), np.float32),
        np.ones(3, np.int16),
        np.zeros((4, 0, 2), np.int64),
        np.zeros((0, 0)),
    ]

    assert_same_arrays(decode_arrays(encode_arrays(arrays)), arrays)


def test_zero_d_scalar_arrays_round_trip() -> None:
    arrays = [np.array(3.5), np.array(-7, dtype=np.int8), np.array(True)]

    decoded = decode_arrays(encode_arrays(arrays))

    assert_same_arrays(decoded, arrays)
    assert all(a.shape == () for a in decoded)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda a: a[::2, 1::3], id="strided-slice"),
        pytest.param(lambda a: a.T, id="transpose"),
        pytest.param(lambda a: np.asfortranarray(a), id="fortran-order"),
        pytest.param(lambda a: a[:, ::-1], id="reversed"),
    ],
)
def test_non_contiguous_inputs_round_trip_in_logical_order(make) -> None:
    view = make(np.arange(42, dtype=np.float64).reshape(6, 7))

    (decoded,) = decode_arrays(encode_arrays([view]))

    np.testing.assert_array_equal(decoded, view)
    assert decoded.shape == view.shape


def test_array_larger_than_4_mib_round_trips() -> None:
    big = np.random.default_rng(0).standard_normal(1_200_000).astype(np.float32)
    assert big.nbytes > 4 * 1024 * 1024

    decoded = decode_arrays(encode_arrays([big, np.ones(3)]))

    np.testing.assert_array_equal(decoded[0], big)
    np.testing.assert_array_equal(decoded[1], np.ones(3))


def test_empty_list_round_trips_to_empty_list() -> None:
    blob = encode_arrays([])

    assert decode_arrays(blob) == []
    assert read_specs(blob)[1] == []


def test_decode_accepts_bytes_bytearray_and_memoryview() -> None:
    arrays = [np.arange(4, dtype=np.int32)]
    blob = encode_arrays(arrays)

    for buffer in (bytes(blob), bytearray(blob), memoryview(bytes(blob))):
        assert_same_arrays(decode_arrays(buffer), arrays)


def test_a_layout_read_once_decodes_every_copy_of_the_blob() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(7, dtype=np.int64)]
    blob = bytes(encode_arrays(arrays))
    layout = read_specs(blob)

    first, second = decode_arrays(bytearray(blob), layout), decode_arrays(bytearray(blob), layout)
    first[0][0, 0] = 9.0

    assert_same_arrays(second, arrays)  # each copy its own memory
    assert float(first[0][0, 0]) == 9.0


def test_arrays_decoded_from_a_bytearray_are_writable_views() -> None:
    blob = encode_arrays([np.zeros(4, np.float32)])

    (decoded,) = decode_arrays(blob)
    decoded[1] = 5.0

    assert decoded.flags.writeable
    assert decode_arrays(blob)[0][1] == 5.0  # the write went into the blob itself


def test_arrays_decoded_from_bytes_are_read_only() -> None:
    (decoded,) = decode_arrays(bytes(encode_arrays([np.zeros(4, np.float32)])))

    assert not decoded.flags.writeable


def test_encoding_does_not_change_the_input_arrays() -> None:
    array = np.arange(6, dtype=np.float32)
    blob = encode_arrays([array])

    decode_arrays(blob)[0][:] = -1

    np.testing.assert_array_equal(array, np.arange(6, dtype=np.float32))


def test_data_offsets_are_64_byte_aligned() -> None:
    arrays = [np.ones(3, np.float32), np.ones(5, np.int8), np.ones((2, 3)), np.array(1.0)]

    start, specs = read_specs(encode_arrays(arrays))

    assert start % 64 == 0
    assert [s.offset % 64 for s in specs] == [0, 0, 0, 0]
    assert [s.nbytes for s in specs] == [12, 5, 48, 8]


def test_specs_describe_each_array() -> None:
    _, specs = read_specs(encode_arrays([np.zeros((2, 3), ">i2"), np.zeros(4, np.uint8)]))

    assert [(s.dtype, s.shape, s.nbytes) for s in specs] == [(">i2", (2, 3), 12), ("|u1", (4,), 4)]


def test_content_digest_is_the_lowercase_blake3_of_the_blob() -> None:
    blob = encode_arrays([np.arange(3)])

    digest = content_digest(blob)

    assert digest == content_digest(bytes(blob)) == content_digest(memoryview(blob))
    assert len(digest) == 64 and digest == digest.lower()
    assert content_digest(b"") == (
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    )


def test_equal_arrays_encode_to_identical_bytes() -> None:
    first = encode_arrays([np.arange(10, dtype=np.int32).reshape(2, 5)])
    second = encode_arrays([np.arange(10, dtype=np.int32).reshape(2, 5).T.copy().T])

    assert content_digest(first) == content_digest(second)


# --- refused inputs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(np.array(["a", None], dtype=object), id="object"),
        pytest.param(np.array(["ab", "c"]), id="unicode-str"),
        pytest.param(np.array([b"ab"]), id="bytes-str"),
        pytest.param(np.array(["2024-01-01"], dtype="datetime64[D]"), id="datetime"),
        pytest.param(np.zeros(2, dtype=[("x", "<f4")]), id="structured"),
    ],
)
def test_non_numeric_arrays_are_refused_naming_the_array_index(bad: np.ndarray) -> None:
    with pytest.raises(RecordError, match=r"array 2\b"):
        encode_arrays([np.zeros(2), np.ones(3), bad])


def test_a_list_instead_of_an_array_is_refused_naming_the_item() -> None:
    with pytest.raises(RecordError, match=r"item 1 is a list"):
        encode_arrays([np.zeros(2), [1.0, 2.0]])  # type: ignore[list-item]


# --- corrupted or truncated blobs ---------------------------------------------------------


def test_blob_shorter_than_the_length_prefix_is_refused() -> None:
    with pytest.raises(RecordError, match="shorter"):
        decode_arrays(b"\x01\x02\x03")


@pytest.mark.parametrize("header_len", [100, 2**40, 2**64 - 1])
def test_header_length_beyond_the_blob_is_refused(header_len: int) -> None:
    with pytest.raises(RecordError, match="header length"):
        decode_arrays(_LEN.pack(header_len) + b'{"format": "pollen-arrays/1", "arrays": []}')


def test_truncated_blob_is_refused() -> None:
    blob = encode_arrays([np.arange(100, dtype=np.float64)])

    for cut in (1, 8, 799):
        with pytest.raises(RecordError, match="outside the blob"):
            decode_arrays(blob[:-cut])


def test_truncated_header_is_refused() -> None:
    blob = encode_arrays([np.arange(3)])

    with pytest.raises(RecordError):
        decode_arrays(blob[:20])


@pytest.mark.parametrize(
    "raw_header",
    [
        pytest.param(b"{not json", id="bad-json"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
        pytest.param(b"[1, 2, 3]", id="json-list"),
        pytest.param(b'"pollen-arrays/1"', id="json-string"),
        pytest.param(b"", id="empty"),
    ],
)
def test_unparsable_header_is_refused(raw_header: bytes) -> None:
    with pytest.raises(RecordError, match="header"):
        decode_arrays(_LEN.pack(len(raw_header)) + raw_header)


@pytest.mark.parametrize("tag", ["pollen-arrays/2", "safetensors", None])
def test_wrong_format_tag_is_refused(tag: object) -> None:
    blob = with_header(lambda h: h.update(format=tag))

    with pytest.raises(RecordError, match="format"):
        decode_arrays(blob)


def test_missing_format_tag_is_refused() -> None:
    blob = with_header(lambda h: h.pop("format"))

    with pytest.raises(RecordError, match=FORMAT):
        decode_arrays(blob)


def _set(field: str, value: object) -> Callable[[dict[str, Any]], None]:
    def mutate(header: dict[str, Any]) -> None:
        header["arrays"][0][field] = value

    return mutate


def _drop(field: str) -> Callable[[dict[str, Any]], None]:
    def mutate(header: dict[str, Any]) -> None:
        del header["arrays"][0][field]

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda h: h.pop("arrays"), id="no-arrays-list"),
        pytest.param(lambda h: h.update(arrays=None), id="arrays-null"),
        pytest.param(lambda h: h.update(arrays=[7]), id="entry-not-object"),
        pytest.param(_drop("nbytes"), id="no-nbytes"),
        pytest.param(_drop("shape"), id="no-shape"),
        pytest.param(_set("shape", 6), id="shape-not-list"),
        pytest.param(_set("shape", ["two", 3]), id="shape-not-ints"),
        pytest.param(_set("offset", "zero"), id="offset-not-int"),
        pytest.param(_set("offset", float("nan")), id="offset-nan"),
        pytest.param(_set("dtype", "<f3"), id="unknown-dtype"),
        pytest.param(_set("dtype", "|O"), id="object-dtype"),
        pytest.param(_set("dtype", "<U1"), id="str-dtype"),
    ],
)
def test_malformed_array_entry_is_refused(mutate: Callable[[dict[str, Any]], None]) -> None:
    with pytest.raises(RecordError):
        decode_arrays(with_header(mutate))


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_set("nbytes", 28), id="nbytes-too-big"),
        pytest.param(_set("nbytes", 20), id="nbytes-too-small"),
        pytest.param(_set("shape", [3, 3]), id="shape-too-big"),
        pytest.param(_set("shape", [-2, -3]), id="negative-dims"),
        pytest.param(_set("dtype", "<f8"), id="wider-dtype"),
    ],
)
def test_shape_that_does_not_match_nbytes_is_refused(
    mutate: Callable[[dict[str, Any]], None],
) -> None:
    with pytest.raises(RecordError, match="does not match"):
        decode_arrays(with_header(mutate))


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_set("offset", 64), id="offset-past-end"),
        pytest.param(_set("offset", -8), id="negative-offset"),
        pytest.param(_set("offset", 1), id="runs-past-end"),
    ],
)
def test_array_outside_the_blob_is_refused(mutate: Callable[[dict[str, Any]], None]) -> None:
    with pytest.raises(RecordError, match="outside the blob"):
        decode_arrays(with_header(mutate))


# The four cases below are corrupted headers that currently escape as SyntaxError,
# OverflowError or ValueError instead of RecordError (see the report).


def test_dtype_string_numpy_cannot_parse_is_refused() -> None:
    with pytest.raises(RecordError):
        decode_arrays(with_header(_set("dtype", "(2,f4")))


def test_infinite_offset_is_refused() -> None:
    # Python's json reads 1e400 as float('inf').
    with pytest.raises(RecordError):
        decode_arrays(with_header(_set("offset", 1e400)))


def test_dimension_too_large_for_int64_is_refused() -> None:
    with pytest.raises(RecordError):
        decode_arrays(with_header(_set("shape", [2**70])))


def test_shape_whose_element_count_overflows_int64_is_refused() -> None:
    # 2**32 * 2**32 elements wrap to 0 in int64 and so "match" nbytes=0.
    def mutate(header: dict[str, Any]) -> None:
        header["arrays"][0].update(shape=[2**32, 2**32], nbytes=0, dtype="<f8")

    with pytest.raises(RecordError):
        decode_arrays(with_header(mutate))


# --- property ------------------------------------------------------------------------------

_DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness="?", sizes=(64, 128)),
)
_ARRAYS = _DTYPES.flatmap(
    lambda dtype: hnp.arrays(
        dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
    )
)


@settings(max_examples=50, deadline=None, database=None)
@given(st.lists(_ARRAYS, max_size=5))
def test_any_list_of_numeric_arrays_round_trips(arrays: list[np.ndarray]) -> None:
    blob = encode_arrays(arrays)

    assert_same_arrays(decode_arrays(blob), arrays)
    assert all(spec.offset % 64 == 0 for spec in read_specs(blob)[1])


def test_encoding_into_a_reused_buffer_gives_the_same_bytes_padding_included() -> None:
    first = [np.arange(3, dtype=np.int8), np.full(5, 7.5, np.float32)]
    second = [np.arange(3, dtype=np.int8) + 1, np.full(5, -1.0, np.float32)]
    dirty = encode_arrays(first)
    dirty[:] = b"\xff" * len(dirty)  # leftovers everywhere, padding included
    reused = encode_arrays(second, dirty)
    assert reused is dirty
    assert reused == encode_arrays(second)
    assert encode_arrays(second, bytearray(3)) == encode_arrays(second)  # wrong size: fresh
