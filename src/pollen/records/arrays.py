"""Arrays laid out as one flat buffer: a small JSON header, then raw array data.

Layout (safetensors-style): 8 bytes little-endian header length ``H``, ``H`` bytes
of UTF-8 JSON, then the data section. Each array's data starts on a 64-byte
boundary of the data section so that receivers can build arrays with
``numpy.frombuffer`` without copying. The header lists arrays in order:
``{"format": "pollen-arrays/1", "arrays": [{"dtype": "<f4", "shape": [3, 4],
"offset": 0, "nbytes": 48}, ...]}``.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pollen.errors import RecordError

FORMAT = "pollen-arrays/1"
_ALIGN = 64
_LEN = struct.Struct("<Q")
_ALLOWED_KINDS = "biufc"  # bool, signed, unsigned, float, complex
_MAX_HEADER = 64 * 1024 * 1024

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class ArraySpec:
    """Where one array lives in a flat buffer, and what it is."""

    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _check_dtype(index: int, dtype: np.dtype[np.generic]) -> None:
    if dtype.kind not in _ALLOWED_KINDS:
        raise RecordError(
            f"array {index} has dtype {dtype}; only bool, integer, float and complex "
            "arrays can be sent (convert it with .astype(...))"
        )


def plan_layout(arrays: Sequence[npt.NDArray[np.generic]]) -> tuple[bytes, list[ArraySpec]]:
    """Return the encoded header (length prefix included) and each array's spec."""
    specs: list[ArraySpec] = []
    offset = 0
    for index, array in enumerate(arrays):
        if not isinstance(array, np.ndarray):
            raise RecordError(
                f"item {index} is a {type(array).__name__}, not a numpy array; "
                "return a list of numpy.ndarray"
            )
        _check_dtype(index, array.dtype)
        specs.append(ArraySpec(array.dtype.str, tuple(array.shape), offset, array.nbytes))
        offset = _aligned(offset + array.nbytes)
    entries = [
        {"dtype": s.dtype, "shape": list(s.shape), "offset": s.offset, "nbytes": s.nbytes}
        for s in specs
    ]
    header = json.dumps({"format": FORMAT, "arrays": entries}, separators=(",", ":")).encode()
    padded = _aligned(_LEN.size + len(header)) - _LEN.size
    header = header.ljust(padded, b" ")
    return _LEN.pack(len(header)) + header, specs


def encode_arrays(
    arrays: Sequence[npt.NDArray[np.generic]], reuse: bytearray | None = None
) -> bytearray:
    """Lay ``arrays`` out as one flat buffer, copying each array's data once.

    ``reuse``, when it has exactly the needed size, is written over instead of
    allocating (fresh memory costs about as much as the copy itself); the bytes
    are the same either way, padding included.
    """
    header, specs = plan_layout(arrays)
    data_size = specs[-1].offset + specs[-1].nbytes if specs else 0
    size = len(header) + data_size
    fresh = reuse is None or len(reuse) != size
    out = bytearray(size) if fresh or reuse is None else reuse
    out[: len(header)] = header
    base = len(header)
    position = base
    for array, spec in zip(arrays, specs, strict=True):
        if not fresh:  # zero the alignment padding left from the previous content
            out[position : base + spec.offset] = bytes(base + spec.offset - position)
        position = base + spec.offset + spec.nbytes
        if spec.nbytes == 0:
            continue
        dest = np.frombuffer(out, dtype=array.dtype, count=array.size, offset=base + spec.offset)
        dest.reshape(array.shape)[...] = array
    return out


_PADDING = memoryview(bytes(_ALIGN))


class ArrayBytes:
    """The flat buffer `encode_arrays` would write, made of the arrays' own memory.

    Header, each array's bytes and the zero padding between them are kept as
    pieces, not copied: a sender that copies each chunk into its message anyway
    (as `iter_chunks` does) then copies each byte once instead of twice. The
    arrays must not change until the pieces are sent.
    """

    def __init__(self, arrays: Sequence[npt.NDArray[np.generic]]) -> None:
        header, specs = plan_layout(arrays)
        pieces = [memoryview(header)]
        position = 0
        for array, spec in zip(arrays, specs, strict=True):
            pieces.append(_PADDING[: spec.offset - position])
            if spec.nbytes:
                # a copy only for an array that is not contiguous in memory
                flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
                pieces.append(flat.data)
            position = spec.offset + spec.nbytes
        self._pieces = [piece for piece in pieces if len(piece)]
        self._starts = [0, *itertools.accumulate(len(piece) for piece in self._pieces)]
        self.size = self._starts[-1]

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self._pieces)

    def slice(self, start: int, end: int) -> list[memoryview]:
        """Bytes ``start`` to ``end`` as views of the pieces they span."""
        out: list[memoryview] = []
        index = bisect.bisect_right(self._starts, start) - 1
        while start < end and index < len(self._pieces):
            base = self._starts[index]
            piece = self._pieces[index]
            out.append(piece[start - base : min(end - base, len(piece))])
            start = base + len(piece)
            index += 1
        return out


Layout = tuple[int, list[ArraySpec]]
"""Where a flat buffer's data starts and each array's spec: what `read_specs` returns."""


def read_specs(buffer: Buffer) -> Layout:
    """Parse and check the header of a flat buffer; return (data start, specs)."""
    view = memoryview(buffer)
    if len(view) < _LEN.size:
        raise RecordError("arrays blob is shorter than its 8-byte header length")
    (header_len,) = _LEN.unpack(view[: _LEN.size])
    if header_len > _MAX_HEADER or _LEN.size + header_len > len(view):
        raise RecordError(f"arrays blob header length {header_len} exceeds the blob")
    try:
        header = json.loads(bytes(view[_LEN.size : _LEN.size + header_len]))
        if header.get("format") != FORMAT:
            raise RecordError(f"arrays blob format is {header.get('format')!r}; expected {FORMAT}")
        specs = [
            ArraySpec(
                str(e["dtype"]),
                tuple(int(d) for d in e["shape"]),
                int(e["offset"]),
                int(e["nbytes"]),
            )
            for e in header["arrays"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise RecordError(f"arrays blob header is not valid: {exc}") from exc
    start = _LEN.size + header_len
    for index, spec in enumerate(specs):
        _check_spec(index, spec, len(view) - start)
    return start, specs


def _check_spec(index: int, spec: ArraySpec, data_size: int) -> None:
    try:
        dtype = np.dtype(spec.dtype)
    except (TypeError, ValueError, SyntaxError) as exc:
        raise RecordError(f"array {index} has an unknown dtype {spec.dtype!r}") from exc
    _check_dtype(index, dtype)
    # Python integers: a hostile shape must not wrap around as int64 would.
    count = math.prod(spec.shape)
    if min(spec.shape, default=0) < 0 or count * dtype.itemsize != spec.nbytes:
        raise RecordError(f"array {index}: shape {spec.shape} does not match {spec.nbytes} bytes")
    if spec.offset < 0 or spec.offset + spec.nbytes > data_size:
        raise RecordError(f"array {index} lies outside the blob")


def decode_arrays(buffer: Buffer, layout: Layout | None = None) -> list[npt.NDArray[np.generic]]:
    """Arrays of a flat buffer, as views over it (no copy).

    Arrays are writable when ``buffer`` is a writable ``bytearray``. ``layout``: what
    `read_specs` returned for these same bytes, so that a blob decoded many times (a model
    sent to many virtual nodes) has its header parsed and checked once.
    """
    start, specs = layout or read_specs(buffer)
    arrays: list[npt.NDArray[np.generic]] = []
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if spec.nbytes == 0:
            arrays.append(np.zeros(spec.shape, dtype=dtype))
            continue
        flat = np.frombuffer(
            buffer, dtype=dtype, count=spec.nbytes // dtype.itemsize, offset=start + spec.offset
        )
        arrays.append(flat.reshape(spec.shape))
    return arrays


def buffer_in_use(buffer: bytearray) -> bool:
    """True while an array decoded from ``buffer`` is alive: each holds an export of its
    buffer, and a bytearray with exports cannot change size. A buffer not in use can be
    written over for the next blob without changing arrays someone still holds."""
    if not buffer:
        return False
    try:
        last = buffer.pop()
    except BufferError:
        return True
    buffer.append(last)  # within the allocation: no copy, no move
    return False
