"""Block-wise processing of flattened arrays: a few MiB of scratch whatever the model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pollen.records.typing import NDArray

BLOCK = 1 << 18
"""Elements processed per step (1 MiB of float32)."""


def blocks(size: int) -> Iterator[slice]:
    """Consecutive slices of at most `BLOCK` elements covering ``range(size)``."""
    for start in range(0, size, BLOCK):
        yield slice(start, min(start + BLOCK, size))


class Scratch:
    """Reusable block-sized buffers, one per (dtype, slot)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[np.dtype[Any], int], NDArray] = {}

    def get(self, dtype: np.dtype[Any], slot: int, size: int) -> NDArray:
        """The first ``size`` elements of buffer ``slot`` of ``dtype`` (contents undefined)."""
        buffer = self._buffers.get((dtype, slot))
        if buffer is None:
            buffer = self._buffers[(dtype, slot)] = np.empty(BLOCK, dtype)
        return buffer[:size]
