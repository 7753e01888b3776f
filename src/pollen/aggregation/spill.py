"""Spilled updates: a round's results in one unnamed file, read back block by block.

Rules that need every update at once (median, trimmed mean, Krum, Bulyan) write
each result here as it arrives and then compute over slices of the flattened
model across all the spilled updates, a few MiB at a time, so the ServerApp's
memory does not grow with the number of nodes; the disk holds model x results.

The file is created unlinked (``O_TMPFILE`` through `tempfile.TemporaryFile`):
it has no name in the folder, and the kernel frees it when its descriptor
closes, after the round or when the process dies, even by SIGKILL.

Where: the round loop sets the run's folder for the duration of a fit round
(`spill_folder`); outside a round (tests, direct calls) the system's temporary
folder is used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pollen.aggregation.model_shape import check_fits
from pollen.errors import RecordError, RunError
from pollen.records.typing import NDArray, NDArrays

_FOLDER: ContextVar[Path | None] = ContextVar("pollen_spill_folder", default=None)

MAX_BLOCK_BYTES = 4 << 20
"""The largest block read at once (all rows of one slice together)."""
MIN_BLOCK_BYTES = 64 << 10
"""The smallest, so that tiny models are not read a few bytes at a time."""


@contextlib.contextmanager
def spill_folder(folder: Path | None) -> Iterator[None]:
    """Spill files created in this context go to ``folder`` (None: the temporary folder)."""
    token = _FOLDER.set(folder)
    try:
        yield
    finally:
        _FOLDER.reset(token)


def current_folder() -> Path:
    """Where a spill created now goes: the run's folder during a round, else the temp folder."""
    folder = _FOLDER.get()
    return folder if folder is not None else Path(tempfile.gettempdir())


def _existing(folder: Path) -> Path:
    """The folder, or its nearest existing parent (a run's folder may not exist yet)."""
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            return candidate
    return Path(".")


def size_text(size: float) -> str:
    """``1.5 GB``, ``12.0 MB``, ``800 B`` (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def check_room(needed: int, server_round: int, folder: Path | None = None) -> None:
    """RunError (one line) when ``folder`` has less than ``needed`` bytes free."""
    if needed <= 0:
        return
    explicit = folder if folder is not None else _FOLDER.get()
    where = explicit if explicit is not None else Path(tempfile.gettempdir())
    free = shutil.disk_usage(_existing(where)).free
    if free >= needed:
        return
    fix = (
        "free space there or give the ServerApp an --output-dir on a larger disk"
        if explicit is not None
        else "free space there or point TMPDIR to a larger disk"
    )
    raise RunError(
        f"round {server_round}: the strategy keeps this round's updates on disk, "
        f"{size_text(needed)} in {where}, which has {size_text(free)} free; {fix}"
    )


def stored_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """How an array of the model is stored: floats and complex as they are; integers and
    bools as float64, so that a rule's arithmetic on them is exact and rounds back."""
    return dtype if dtype.kind in "fc" else np.dtype(np.float64)


@dataclass(frozen=True)
class _Slot:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    stored: np.dtype[Any]
    offset: int
    size: int


class SpilledUpdates:
    """A round's updates, one row per update: every array of the model back to back.

    ``append`` writes an update and returns its row; ``blocks`` reads the same
    slice of one array across several rows into a reused buffer of at most
    ``block_bytes``. Close it (or use it as a context manager) to free the disk.
    """

    def __init__(
        self,
        reference: NDArrays,
        folder: Path | None = None,
        block_bytes: int | None = None,
    ) -> None:
        slots: list[_Slot] = []
        offset = 0
        for array in reference:
            dtype = np.asarray(array).dtype
            stored = stored_dtype(dtype)
            size = int(np.asarray(array).size)
            slots.append(_Slot(tuple(np.shape(array)), dtype, stored, offset, size))
            offset += size * stored.itemsize
        self._slots = slots
        self.row_bytes = offset
        """Bytes one update takes on disk."""
        if block_bytes is None:
            block_bytes = min(MAX_BLOCK_BYTES, max(MIN_BLOCK_BYTES, offset // 16))
        self.block_bytes = block_bytes
        self.folder = folder if folder is not None else current_folder()
        self.folder.mkdir(parents=True, exist_ok=True)
        # buffering=0: writes go straight to the kernel, nothing is held here
        self._file = tempfile.TemporaryFile(  # noqa: SIM115 (closed by close(), after the round)
            dir=self.folder, prefix="pollen-spill-", buffering=0
        )
        self._fd = self._file.fileno()
        # a round that ends without finish() (accept_failures=False, too few results)
        # drops its aggregator: the disk goes with it, without a ResourceWarning
        weakref.finalize(self, self._file.close)
        self._scratch: dict[np.dtype[Any], NDArray] = {}
        self.count = 0
        """Updates spilled so far."""

    def __enter__(self) -> SpilledUpdates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the file's disk space (its name never existed)."""
        self._file.close()
        self._scratch.clear()

    @property
    def closed(self) -> bool:
        return self._file.closed

    @property
    def num_arrays(self) -> int:
        return len(self._slots)

    def shape(self, index: int) -> tuple[int, ...]:
        return self._slots[index].shape

    def check(self, arrays: NDArrays) -> None:
        """Refuse arrays that do not match the model's count, shapes and kinds."""
        shapes = [slot.shape for slot in self._slots]
        check_fits(arrays, shapes, [(slot.stored, slot.dtype) for slot in self._slots])

    def append(self, arrays: NDArrays) -> int:
        """Write one update as the next row; its row number. A write that fails (a full
        disk) rejects this update only: the next one takes its row."""
        self.check(arrays)
        row = self.count
        try:
            for array, slot in zip(arrays, self._slots, strict=True):
                self._write(row, slot, np.asarray(array).reshape(-1))
        except OSError as exc:
            raise RecordError(
                f"could not be kept on disk in {self.folder}: {exc.strerror or exc}"
            ) from None
        self.count += 1
        return row

    def _write(self, row: int, slot: _Slot, flat: NDArray) -> None:
        position = row * self.row_bytes + slot.offset
        if flat.dtype == slot.stored and flat.flags.c_contiguous:
            _pwrite_all(self._fd, flat.view(np.uint8), position)
            return
        step = max(1, self.block_bytes // slot.stored.itemsize)
        scratch = self._buffer(slot.stored, step)
        for start in range(0, slot.size, step):
            end = min(start + step, slot.size)
            part = scratch[: end - start]
            part[...] = flat[start:end]
            _pwrite_all(self._fd, part.view(np.uint8), position + start * slot.stored.itemsize)

    def _buffer(self, dtype: np.dtype[Any], elements: int) -> NDArray:
        scratch = self._scratch.get(dtype)
        if scratch is None or scratch.size < elements:
            scratch = self._scratch[dtype] = np.empty(elements, dtype)
        return scratch[:elements]

    def block_length(self, index: int, rows: int, itemsize: int | None = None) -> int:
        """Elements per slice so that ``rows`` rows of it take at most ``block_bytes``."""
        size = itemsize or self._slots[index].stored.itemsize
        return max(1, self.block_bytes // (max(1, rows) * size))

    def blocks(
        self, index: int, rows: Sequence[int], length: int | None = None
    ) -> Iterator[tuple[int, int, NDArray]]:
        """``(start, end, block)`` over array ``index``: ``block[i]`` is elements
        ``start:end`` of row ``rows[i]``. The buffer is reused: use it before the next."""
        slot = self._slots[index]
        length = length or self.block_length(index, len(rows))
        buffer = self._buffer(slot.stored, len(rows) * min(length, max(1, slot.size)))
        for start in range(0, slot.size, length):
            end = min(start + length, slot.size)
            block = buffer[: len(rows) * (end - start)].reshape(len(rows), end - start)
            for i, row in enumerate(rows):
                self.read(row, index, start, block[i])
            yield start, end, block

    def read(self, row: int, index: int, start: int, out: NDArray) -> None:
        """Elements ``start:start + out.size`` of array ``index`` of ``row`` into ``out``."""
        if not 0 <= row < self.count:
            raise IndexError(f"row {row} of {self.count} spilled updates")
        slot = self._slots[index]
        position = row * self.row_bytes + slot.offset + start * slot.stored.itemsize
        _pread_all(self._fd, out.view(np.uint8), position)

    def empty_model(self) -> NDArrays:
        """Arrays of the model's shapes in their stored dtypes, to fill block by block."""
        return [np.empty(slot.shape, slot.stored) for slot in self._slots]

    def as_model(self, arrays: NDArrays) -> NDArrays:
        """Arrays in stored dtypes back to the model's (integers and bools rounded)."""
        out: NDArrays = []
        for array, slot in zip(arrays, self._slots, strict=True):
            if slot.dtype.kind in "biu":
                out.append(np.asarray(np.rint(array)).astype(slot.dtype))
            else:
                out.append(np.asarray(array).astype(slot.dtype, copy=False))
        return out


def _pwrite_all(fd: int, data: NDArray, position: int) -> None:
    view = memoryview(data)  # type: ignore[arg-type]
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def _pread_all(fd: int, out: NDArray, position: int) -> None:
    view = memoryview(out)  # type: ignore[arg-type]
    while view:
        got = os.preadv(fd, [view], position)
        if got == 0:
            raise RunError("a spill file ended early: it was truncated while in use")
        view, position = view[got:], position + got
